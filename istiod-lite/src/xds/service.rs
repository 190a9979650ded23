//! The gRPC service as mounted on the server: delta ADS with responses
//! written from the snapshot's shared bytes ([`super::codec`]), and a clear
//! refusal of state-of-the-world ADS, which shares the service name but not
//! the protocol (without this a client asking for it gets a bare
//! UNIMPLEMENTED).

use std::convert::Infallible;
use std::task::{Context, Poll};

use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::XdsServer;
use super::codec::AdsCodec;
use super::response::PushResponse;
use super::server::ResponseStream;

/// Largest message accepted or sent, as in the spec's client limits.
const MAX_MESSAGE_BYTES: usize = 200 * 1024 * 1024;

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The state-of-the-world method of the ADS service.
const STATE_OF_THE_WORLD_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// What `Router::add_service` takes for the ADS service.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: XdsServer,
}

impl AdsService {
    pub(super) fn new(server: XdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// The `DeltaAggregatedResources` method.
struct DeltaMethod(XdsServer);

impl StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = PushResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.open_stream(request).await })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            DELTA_PATH => {
                let method = DeltaMethod(self.server.clone());
                Box::pin(async move {
                    let mut grpc = Grpc::new(AdsCodec).apply_max_message_size_config(
                        Some(MAX_MESSAGE_BYTES),
                        Some(MAX_MESSAGE_BYTES),
                    );
                    Ok(grpc.streaming(method, request).await)
                })
            }
            STATE_OF_THE_WORLD_PATH => {
                let status = Status::unimplemented(
                    "state-of-the-world ADS (StreamAggregatedResources) is not served; \
                     use delta ADS (DeltaAggregatedResources)",
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
