use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::authentication::v1::UserInfo;
use serde_json::json;

use super::*;
use crate::model::{Kind, Object};
use crate::registry::Change;

fn status(user: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(vec![AUDIENCE.into()]),
        user: Some(UserInfo {
            username: Some(user.into()),
            extra: Some(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_on(node: &str) -> Object {
    Object::from_value(
        Kind::Pod,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "ztunnel-x1", "namespace": "istio-system", "uid": "u-1"},
               "spec": {"nodeName": node, "containers": [{"name": "z"}]}}),
    )
    .unwrap()
}

#[test]
fn a_service_account_becomes_an_identity_and_the_node_comes_from_claims() {
    let store = Store::default();
    let caller = caller_from_review(
        &status(
            "system:serviceaccount:istio-system:ztunnel",
            &[(NODE_NAME_EXTRA, "node-a")],
        ),
        "cluster.local",
        &store,
    )
    .unwrap();
    assert_eq!(
        caller.identity.unwrap().to_string(),
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    );
    assert_eq!(caller.node.as_deref(), Some("node-a"));

    // Without a node claim, the bound pod's node from the registry.
    let mut store = Store::default();
    store.upsert(pod_on("node-b"));
    let by_pod = status(
        "system:serviceaccount:istio-system:ztunnel",
        &[(POD_NAME_EXTRA, "ztunnel-x1"), (POD_UID_EXTRA, "u-1")],
    );
    let caller = caller_from_review(&by_pod, "cluster.local", &store).unwrap();
    assert_eq!(caller.node.as_deref(), Some("node-b"));
    // A pod of that name with another uid is not the bound one.
    let stale = status(
        "system:serviceaccount:istio-system:ztunnel",
        &[(POD_NAME_EXTRA, "ztunnel-x1"), (POD_UID_EXTRA, "u-2")],
    );
    assert_eq!(
        caller_from_review(&stale, "cluster.local", &store)
            .unwrap()
            .node,
        None
    );
}

#[test]
fn unauthenticated_users_and_wrong_audiences_are_refused() {
    let store = Store::default();
    let mut failed = status("system:serviceaccount:a:b", &[]);
    failed.authenticated = Some(false);
    failed.error = Some("token expired".into());
    let err = caller_from_review(&failed, "cluster.local", &store).unwrap_err();
    assert!(err.to_string().contains("token expired"), "{err}");

    let err = caller_from_review(&status("alice", &[]), "cluster.local", &store).unwrap_err();
    assert!(err.to_string().contains("alice"), "{err}");

    let mut elsewhere = status("system:serviceaccount:a:b", &[]);
    elsewhere.audiences = Some(vec!["other".into()]);
    assert!(caller_from_review(&elsewhere, "cluster.local", &store).is_err());
}

/// A TokenReview endpoint: answers for one known token, counts requests and
/// records the audiences asked for.
async fn fake_api_server(reviews: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let reviews = reviews.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let reviews = reviews.clone();
                        async move {
                            assert_eq!(req.method(), hyper::Method::POST);
                            assert_eq!(
                                req.uri().path(),
                                "/apis/authentication.k8s.io/v1/tokenreviews"
                            );
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            reviews.fetch_add(1, Ordering::SeqCst);
                            let good = review["spec"]["token"] == "good-token"
                                && review["spec"]["audiences"] == json!([AUDIENCE]);
                            let status = if good {
                                json!({"authenticated": true, "audiences": [AUDIENCE],
                                   "user": {"username": "system:serviceaccount:istio-system:ztunnel",
                                            "extra": {NODE_NAME_EXTRA: ["node-a"]}}})
                            } else {
                                json!({"authenticated": false, "error": "invalid bearer token"})
                            };
                            let answer = json!({"apiVersion": "authentication.k8s.io/v1",
                                            "kind": "TokenReview", "spec": review["spec"],
                                            "status": status});
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn metadata(token: &str) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    m.insert("authorization", format!("Bearer {token}").parse().unwrap());
    m
}

#[tokio::test]
async fn a_token_review_over_http_authenticates_and_is_cached() {
    let reviews = Arc::new(AtomicUsize::new(0));
    let addr = fake_api_server(reviews.clone()).await;
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let registry = Registry::new();
    registry.apply([Change::Upsert(pod_on("node-a"))]);
    let auth = KubeTokenReview::new(client, "cluster.local", registry);

    let caller = auth.authenticate(&metadata("good-token")).await.unwrap();
    assert_eq!(caller.node.as_deref(), Some("node-a"));
    assert_eq!(caller.description, "istio-system/ztunnel");
    auth.authenticate(&metadata("good-token")).await.unwrap();
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        1,
        "the second call is served from the cache"
    );

    let err = auth.authenticate(&metadata("bad-token")).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("invalid bearer token"), "{err}");
    // Refusals are not cached.
    auth.authenticate(&metadata("bad-token")).await.unwrap_err();
    assert_eq!(reviews.load(Ordering::SeqCst), 3);
}
