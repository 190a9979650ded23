//! The gRPC apps against each other, in process, over real sockets.

use std::time::Duration;

use tokio::net::TcpListener;

use super::client::{self, GrpcClientConfig, GrpcSummary};
use super::proto::EchoRequest;
use super::proto::echo_client::EchoClient;
use super::server;

async fn start(name: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, name.into()));
    addr.to_string()
}

fn config(target: &str, count: u64, stream: Option<u32>) -> GrpcClientConfig {
    GrpcClientConfig {
        target: target.into(),
        count,
        stream,
        every: Duration::ZERO,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn unary_calls_are_answered_by_the_named_server() {
    let target = start("g1").await;
    let mut lines = Vec::new();
    let summary = client::run(&config(&target, 3, None), |c| lines.push(c.line())).await;
    assert_eq!(summary.code("OK"), 3, "{summary:?} {lines:?}");
    assert_eq!(summary.backends.get("g1"), Some(&3));
    assert_eq!(summary.replies, 3);
    assert!(lines[0].starts_with("OK g1 replies=1 "), "{lines:?}");
    assert_eq!(GrpcSummary::from_output(&summary.line()), Some(summary));
}

#[tokio::test]
async fn server_streaming_calls_get_every_reply_in_order() {
    let target = start("g2").await;
    let summary = client::run(&config(&target, 2, Some(50)), |_| {}).await;
    assert_eq!(summary.code("OK"), 2, "{summary:?}");
    assert_eq!(summary.replies, 100);
}

#[tokio::test]
async fn an_oversized_stream_is_refused_with_invalid_argument() {
    let target = start("g3").await;
    let summary = client::run(&config(&target, 1, Some(server::MAX_STREAM + 1)), |_| {}).await;
    assert_eq!(summary.code("InvalidArgument"), 1, "{summary:?}");
}

#[tokio::test]
async fn client_streaming_counts_the_requests_and_echoes_xfcc() {
    let target = start("g4").await;
    let mut client = EchoClient::connect(format!("http://{target}"))
        .await
        .unwrap();
    let requests = tokio_stream::iter((0..4).map(|i| EchoRequest {
        message: format!("m{i}"),
    }));
    let mut request = tonic::Request::new(requests);
    request
        .metadata_mut()
        .insert("x-forwarded-client-cert", "URI=spiffe://a".parse().unwrap());
    let reply = client.collect(request).await.unwrap().into_inner();
    assert_eq!(reply.index, 4);
    assert_eq!(reply.message, "m3");
    assert_eq!(reply.xfcc, "URI=spiffe://a");
    assert_eq!(reply.name, "g4");
}

#[tokio::test]
async fn an_unreachable_target_is_unavailable_per_call() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let summary = client::run(&config(&addr.to_string(), 2, None), |_| {}).await;
    assert_eq!(summary.code("Unavailable"), 2, "{summary:?}");
}
