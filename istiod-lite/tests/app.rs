//! The whole istiod-lite in-process, as the binary runs it: a directory
//! source, translation, xDS and CA on one TLS port, the admin port, and a
//! shutdown that ends open streams within its deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use istiod_lite::app::App;
use istiod_lite::config::Config;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::telemetry::LogControl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop}
spec: {nodeName: node-a, serviceAccountName: cart, containers: [{name: c, image: c}]}
status: {phase: Running, podIP: 10.0.0.7, conditions: [{type: Ready, status: \"True\"}]}
";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// istiod-lite on loopback, serving `resources`, its state in `state`.
async fn start(resources: &std::path::Path, state: &std::path::Path) -> App {
    let config = Config::try_parse_from([
        "istiod-lite",
        "--dir",
        resources.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--drain-deadline",
        "2s",
    ])
    .unwrap();
    App::start(config, LogControl::detached()).await.unwrap()
}

/// The control plane as node-a's proxies see it, with the token istiod-lite
/// created for that node.
fn node_a(app: &App, state: &std::path::Path) -> ControlPlane {
    let tokens: BTreeMap<String, String> =
        serde_yaml::from_slice(&std::fs::read(state.join("node-tokens.yaml")).unwrap()).unwrap();
    let root = std::fs::read(state.join("root-cert.pem")).unwrap();
    ControlPlane {
        address: format!("https://localhost:{}", app.grpc.port()),
        server_name: None,
        roots: mesh_core::tls::parse_certs(&root, "root").unwrap(),
        token: Some(TokenSource::Literal(tokens["node-a"].clone())),
        cluster_id: "Kubernetes".into(),
        headers: vec![],
        mark: None,
    }
}

type Requests = tokio::sync::mpsc::UnboundedSender<DeltaDiscoveryRequest>;
type Responses = tonic::Streaming<DeltaDiscoveryResponse>;

/// Opens an ADS stream whose first request is `first`.
async fn subscribe(control: &ControlPlane, first: DeltaDiscoveryRequest) -> (Requests, Responses) {
    let mut ads = AggregatedDiscoveryServiceClient::new(control.channel().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    control.authorize(&mut request).unwrap();
    let responses = ads
        .delta_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_xds_from_a_directory_and_shuts_down_within_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(resources.join("shop.yaml"), CLUSTER).unwrap();
    let state = dir.path().join("state");
    let app = start(&resources, &state).await;

    // Ready once the first snapshot is out, which follows the debounce.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(app.admin, "/ready").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("first snapshot published"), "{body}");
        assert!(Instant::now() < deadline, "not ready after 10s: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, dump) = get(app.admin, "/debug/config_dump").await;
    assert!(dump.contains("Kubernetes//Pod/shop/cart"), "{dump}");

    let control = node_a(&app, &state);
    let (tx, mut responses) = subscribe(
        &control,
        DeltaDiscoveryRequest {
            type_url: mesh_api::ADDRESS_TYPE_URL.into(),
            ..Default::default()
        },
    )
    .await;
    let first = responses.next().await.unwrap().unwrap();
    let names: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["Kubernetes//Pod/shop/cart"]);
    let (_, clients) = get(app.admin, "/debug/clients").await;
    assert!(clients.contains("node-a"), "{clients}");

    // Shutdown ends the open stream and returns within the deadline.
    let started = Instant::now();
    app.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), responses.next())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    drop(tx);
}

const WAYPOINT_CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
";

const WAYPOINT_GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

fn web_route(weight: u32) -> String {
    format!(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules: [{{backendRefs: [{{name: web, port: 80, weight: {weight}}}, {{name: web-v2, port: 80, weight: 1}}]}}]
"
    )
}

/// Writes a file of the watched directory in one step (a rename), so the
/// watcher never reads it half-written.
fn write_atomically(path: &std::path::Path, text: &str) {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// A waypoint's view of the ADS stream: it subscribes to its own Waypoint
/// by name, receives it, receives it again when its route changes, and
/// receives its removal when the Gateway is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_waypoint_its_l7_config_and_follows_changes() {
    use mesh_api::ambit::waypoint::v1::Waypoint;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(resources.join("cluster.yaml"), WAYPOINT_CLUSTER).unwrap();
    std::fs::write(resources.join("gateway.yaml"), WAYPOINT_GATEWAY).unwrap();
    std::fs::write(resources.join("route.yaml"), web_route(9)).unwrap();
    let state = dir.path().join("state");
    let app = start(&resources, &state).await;

    let control = node_a(&app, &state);
    let (tx, mut responses) = subscribe(
        &control,
        DeltaDiscoveryRequest {
            type_url: mesh_api::WAYPOINT_TYPE_URL.into(),
            resource_names_subscribe: vec!["shop/waypoint".into()],
            ..Default::default()
        },
    )
    .await;
    let mut next = async || {
        let response = tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("a response within 10s")
            .expect("the stream stays open")
            .expect("not an error");
        assert_eq!(response.type_url, mesh_api::WAYPOINT_TYPE_URL);
        tx.send(DeltaDiscoveryRequest {
            type_url: mesh_api::WAYPOINT_TYPE_URL.into(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .unwrap();
        response
    };
    let weights = |response: &mesh_api::envoy::service::discovery::v3::DeltaDiscoveryResponse| {
        assert_eq!(response.resources.len(), 1, "{response:?}");
        assert_eq!(response.resources[0].name, "shop/waypoint");
        let any = response.resources[0].resource.as_ref().unwrap();
        assert_eq!(any.type_url, mesh_api::WAYPOINT_TYPE_URL);
        let waypoint = Waypoint::decode(any.value.as_slice()).unwrap();
        let web = waypoint
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web is bound");
        web.routes[0].rules[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>()
    };

    let first = next().await;
    assert_eq!(weights(&first), [9, 1]);

    // A wildcard subscriber gets every waypoint's resource.
    let (_wildcard_tx, mut wildcard) = subscribe(
        &control,
        DeltaDiscoveryRequest {
            type_url: mesh_api::WAYPOINT_TYPE_URL.into(),
            ..Default::default()
        },
    )
    .await;
    let all = tokio::time::timeout(Duration::from_secs(10), wildcard.next())
        .await
        .expect("a response within 10s")
        .unwrap()
        .unwrap();
    assert_eq!(weights(&all), [9, 1]);
    drop(wildcard);

    write_atomically(&resources.join("route.yaml"), &web_route(3));
    let changed = next().await;
    assert_eq!(weights(&changed), [3, 1]);

    std::fs::remove_file(resources.join("gateway.yaml")).unwrap();
    let removed = next().await;
    assert!(removed.resources.is_empty(), "{removed:?}");
    assert_eq!(removed.removed_resources, ["shop/waypoint"]);

    app.shutdown().await;
}

/// Serves `body` as JSON to every request on a local port.
async fn serve_json(body: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// RequestAuthentications from the directory reach the waypoint on its
/// ADS stream: an inline key set on the Gateway at once, a `jwksUri` on a
/// bound Service first with no keys, then with the keys istiod-lite
/// fetched from a local server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_receives_its_request_authentications_with_fetched_keys() {
    use mesh_api::ambit::waypoint::v1::Waypoint;
    use prost::Message;

    const KEYS: &str = r#"{"keys":[{"e":"AQAB","kid":"k1","kty":"RSA","n":"AQAB"}]}"#;
    let (keys_at, keys_server) = serve_json(KEYS).await;
    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(resources.join("cluster.yaml"), WAYPOINT_CLUSTER).unwrap();
    std::fs::write(resources.join("gateway.yaml"), WAYPOINT_GATEWAY).unwrap();
    std::fs::write(
        resources.join("jwt.yaml"),
        format!(
            "\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: inline, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]
  jwtRules:
  - issuer: https://inline.example
    audiences: [shop]
    jwks: '{KEYS}'
    fromHeaders: [{{name: x-jwt, prefix: \"Bearer \"}}]
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: fetched, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: web}}]
  jwtRules:
  - issuer: https://fetched.example
    jwksUri: http://{keys_at}/jwks
"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let app = start(&resources, &state).await;

    let control = node_a(&app, &state);
    let (tx, mut responses) = subscribe(
        &control,
        DeltaDiscoveryRequest {
            type_url: mesh_api::WAYPOINT_TYPE_URL.into(),
            resource_names_subscribe: vec!["shop/waypoint".into()],
            ..Default::default()
        },
    )
    .await;

    // Versions until the fetched keys are in, acknowledging each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waypoint = loop {
        let response = tokio::time::timeout_at(deadline, responses.next())
            .await
            .expect("the fetched keys pushed within 10s")
            .expect("the stream stays open")
            .expect("not an error");
        tx.send(DeltaDiscoveryRequest {
            type_url: mesh_api::WAYPOINT_TYPE_URL.into(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .unwrap();
        let any = response.resources[0].resource.as_ref().unwrap();
        let waypoint = Waypoint::decode(any.value.as_slice()).unwrap();
        let web = waypoint.services.iter().find(|s| s.name == "web").unwrap();
        let jwks = web.authentications[0].rules[0].jwks.clone();
        if jwks == KEYS {
            break waypoint;
        }
        // Until fetched, the rule is sent with no keys: its tokens are refused.
        assert_eq!(jwks, r#"{"keys":[]}"#);
    };

    let on_gateway = &waypoint.authentications;
    assert_eq!(on_gateway.len(), 1, "{on_gateway:?}");
    assert_eq!(on_gateway[0].name, "inline");
    let rule = &on_gateway[0].rules[0];
    assert_eq!(rule.issuer, "https://inline.example");
    assert_eq!(rule.audiences, ["shop"]);
    assert_eq!(rule.jwks, KEYS);
    assert_eq!(
        (
            rule.from_headers[0].name.as_str(),
            rule.from_headers[0].prefix.as_str()
        ),
        ("x-jwt", "Bearer ")
    );
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
    let web = waypoint.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.authentications[0].name, "fetched");
    assert_eq!(
        web.authentications[0].rules[0].jwks_uri,
        format!("http://{keys_at}/jwks")
    );
    assert!(
        waypoint
            .services
            .iter()
            .filter(|s| s.name != "web")
            .all(|s| s.authentications.is_empty())
    );

    app.shutdown().await;
    keys_server.abort();
}
