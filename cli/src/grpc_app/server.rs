//! `ambit app grpc-server`: the Echo service over h2c.

use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::echo_server::{Echo, EchoServer};
use super::proto::{EchoReply, EchoRequest, StreamRequest};
use crate::http_app::XFCC_HEADER;

/// The most replies one `Stream` call may ask for.
pub const MAX_STREAM: u32 = 100_000;

pub struct EchoService {
    name: String,
}

impl EchoService {
    pub fn new(name: impl Into<String>) -> EchoService {
        EchoService { name: name.into() }
    }

    fn reply<T>(&self, request: &Request<T>, message: String, index: u32) -> EchoReply {
        EchoReply {
            name: self.name.clone(),
            message,
            xfcc: request
                .metadata()
                .get(XFCC_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            index,
            peer: request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let message = request.get_ref().message.clone();
        Ok(Response::new(self.reply(&request, message, 0)))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let count = request.get_ref().count;
        if count > MAX_STREAM {
            return Err(Status::invalid_argument(format!(
                "count {count} is over the limit of {MAX_STREAM}"
            )));
        }
        let message = request.get_ref().message.clone();
        let first = self.reply(&request, message, 0);
        let replies = (0..count).map(move |index| {
            Ok(EchoReply {
                index,
                ..first.clone()
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn collect(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let template = self.reply(&request, String::new(), 0);
        let mut stream = request.into_inner();
        let mut count = 0u32;
        let mut last = String::new();
        while let Some(item) = stream.message().await? {
            count += 1;
            last = item.message;
        }
        Ok(Response::new(EchoReply {
            message: last,
            index: count,
            ..template
        }))
    }
}

/// Serves the Echo service on `listener` until it fails.
pub async fn serve(listener: TcpListener, name: String) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService::new(name)))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}
