//! gRPC through the waypoint: a tonic client and a tonic backend, unary and
//! streaming calls, and a denial as PERMISSION_DENIED.

mod common;

use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use common::*;
use hyper_util::rt::TokioIo;
use mesh_api::ambit::waypoint::v1 as wp;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_api::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Answers a "CSR" with it echoed, and the caller's XFCC as the second element.
struct Unary;

#[tonic::async_trait]
impl IstioCertificateService for Unary {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let xfcc = request
            .metadata()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![request.into_inner().csr, xfcc],
        }))
    }
}

/// Streams three responses for the first request, then ends.
struct Streamer;

type Responses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Streamer {
    type DeltaAggregatedResourcesStream = Responses;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no request"))?;
        let items: Vec<Result<DeltaDiscoveryResponse, Status>> = (1..=3)
            .map(|i| {
                Ok(DeltaDiscoveryResponse {
                    type_url: first.type_url.clone(),
                    nonce: format!("n{i}"),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_work_through_the_waypoint_and_denials_are_permission_denied()
-> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "grpc-a").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(Unary))
            .add_service(AggregatedDiscoveryServiceServer::new(Streamer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let vip = mesh
        .service("grpc", 100, 9090, &[("grpc-a", 1, port)])
        .await?;
    let mesh = Arc::new(mesh);
    let m = mesh.clone();
    let channel =
        tonic::transport::Endpoint::from_static("http://grpc.default.svc.cluster.local:9090")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let m = m.clone();
                async move { m.connect(vip).await.map(TokioIo::new) }
            }))
            .await?;

    let mut unary = IstioCertificateServiceClient::new(channel.clone());
    let resp = unary
        .create_certificate(IstioCertificateRequest {
            csr: "hello".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(resp.cert_chain[0], "hello");
    assert!(
        resp.cert_chain[1].ends_with("URI=spiffe://cluster.local/ns/default/sa/client"),
        "{:?}",
        resp.cert_chain
    );

    let mut streaming = AggregatedDiscoveryServiceClient::new(channel.clone());
    let requests = tokio_stream::iter(vec![DeltaDiscoveryRequest {
        type_url: "test".into(),
        ..Default::default()
    }]);
    let mut responses = streaming
        .delta_aggregated_resources(requests)
        .await?
        .into_inner();
    let mut nonces = Vec::new();
    while let Some(r) = responses.message().await? {
        nonces.push(r.nonce);
    }
    assert_eq!(nonces, ["n1", "n2", "n3"]);

    let metrics = mesh.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("request_protocol=\"grpc\"")
                && l.contains("grpc_response_status=\"0\"")),
        "{metrics}"
    );

    // Deny the unary method: the client sees PERMISSION_DENIED.
    mesh.push_waypoint(wp::Waypoint {
        namespace: NS.into(),
        name: GATEWAY.into(),
        services: vec![wp::Service {
            namespace: NS.into(),
            name: "grpc".into(),
            hostname: "grpc.default.svc.cluster.local".into(),
            addresses: vec![mesh.ip(100).to_string()],
            policies: vec![wp::Policy {
                namespace: NS.into(),
                name: "no-certs".into(),
                action: wp::policy::Action::Deny as i32,
                rules: vec![wp::PolicyRule {
                    to: vec![wp::Operation {
                        paths: vec!["/istio.v1.auth.IstioCertificateService/*".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                dry_run: false,
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await?;
    let err = unary
        .create_certificate(IstioCertificateRequest::default())
        .await
        .expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    Ok(())
}
