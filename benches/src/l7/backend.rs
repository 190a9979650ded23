//! The backends behind every L7 path: an HTTP/1.1 server answering `GET` with a small
//! fixed body, and a gRPC server whose unary `Echo/Unary` returns the request's payload.
//! Both run on a one-thread runtime (the harness pins them to the server CPU).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::proto::echo_server::{Echo, EchoServer};
use super::proto::{EchoReply, EchoRequest};

/// The body of every HTTP response: 64 bytes, so responses are small like an API's.
pub const HTTP_BODY: &[u8; 64] =
    b"ambit-l7-bench backend: 64 bytes of response body, always same.\n";

/// Serves HTTP/1.1 on `listen` until the process is killed.
pub async fn serve_http(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        // Small requests and responses: no Nagle delay on either side.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
            if let Err(e) = served
                && !e.is_incomplete_message()
            {
                eprintln!("ambit-l7-app http-server: connection: {e}");
            }
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = if req.method() == hyper::Method::GET {
        StatusCode::OK
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    let mut response = Response::new(Full::new(Bytes::from_static(HTTP_BODY)));
    *response.status_mut() = status;
    Ok(response)
}

/// The gRPC echo service.
#[derive(Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        Ok(tonic::Response::new(EchoReply {
            payload: request.into_inner().payload,
        }))
    }
}

/// Serves gRPC (HTTP/2 cleartext) on `listen` until the process is killed.
pub async fn serve_grpc(listen: SocketAddr) -> Result<()> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(EchoServer::new(EchoService))
        .serve(listen)
        .await
        .with_context(|| format!("serving gRPC on {listen}"))
}
