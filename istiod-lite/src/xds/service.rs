//! The gRPC service as mounted on the server: delta ADS, and a clear refusal
//! of state-of-the-world ADS, which shares the service name but not the
//! protocol (without this a client asking for it gets a bare UNIMPLEMENTED).

use std::convert::Infallible;
use std::task::{Context, Poll};

use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::NamedService;

use super::XdsServer;

/// The state-of-the-world method of the ADS service.
const STATE_OF_THE_WORLD_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// What `Router::add_service` takes for the ADS service.
#[derive(Clone, Debug)]
pub struct AdsService {
    delta: AggregatedDiscoveryServiceServer<XdsServer>,
}

impl AdsService {
    pub(super) fn new(delta: AggregatedDiscoveryServiceServer<XdsServer>) -> Self {
        AdsService { delta }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = <AggregatedDiscoveryServiceServer<XdsServer> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.delta, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == STATE_OF_THE_WORLD_PATH {
            let status = tonic::Status::unimplemented(
                "state-of-the-world ADS (StreamAggregatedResources) is not served; \
                 use delta ADS (DeltaAggregatedResources)",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        self.delta.call(request)
    }
}
