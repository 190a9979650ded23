//! Waypoint provisioning in directory mode, with the whole istiod-lite
//! in-process over a temporary directory: the generated file appears, the
//! node's token obtains the waypoint's identity, the Gateway's status file
//! gets its conditions and address once the pod status overlay gives the
//! waypoint pod an IP, and the waypoint goes with its Gateway.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use istiod_lite::app::App;
use istiod_lite::config::Config;
use istiod_lite::provision::dir::GENERATED_FILE;
use mesh_core::Identity;
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{CertificateSource, IstioCaClient};
use mesh_testkit::eventually::eventually;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(15);

const APPS: &str = "\
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
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
";

const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

const POD_STATUS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: waypoint, namespace: shop}
status: {phase: Running, podIP: 10.244.0.9, conditions: [{type: Ready, status: \"True\"}]}
";

fn documents(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_becomes_a_waypoint_pod_with_status_and_identity() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("apps.yaml"), APPS).unwrap();
    std::fs::write(dir.join("gateway.yaml"), GATEWAY).unwrap();
    let state = temp.path().join("state");
    let config = Config::try_parse_from([
        "istiod-lite",
        "--dir",
        dir.to_str().unwrap(),
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
    let app = App::start(config, LogControl::detached()).await.unwrap();

    let generated = dir.join(GENERATED_FILE);
    let docs = eventually("the generated waypoint file", PATIENCE, || {
        let docs = documents(&generated);
        async move {
            anyhow::ensure!(find(&docs, "Pod", "waypoint").is_some(), "no pod yet");
            Ok(docs)
        }
    })
    .await
    .unwrap();
    let pod = find(&docs, "Pod", "waypoint").unwrap();
    assert_eq!(pod["spec"]["nodeName"], "node-a");
    assert_eq!(pod["spec"]["containers"][0]["command"][0], "waypoint");
    let service = find(&docs, "Service", "waypoint").unwrap();
    let vip = service["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(vip.starts_with("10.96.255."), "{vip}");
    assert!(find(&docs, "ServiceAccount", "waypoint").is_some());

    // node-a's token obtains the waypoint's identity: its pod is on node-a.
    let tokens: BTreeMap<String, String> =
        serde_yaml::from_slice(&std::fs::read(state.join("node-tokens.yaml")).unwrap()).unwrap();
    let root = std::fs::read(state.join("root-cert.pem")).unwrap();
    let control = ControlPlane {
        address: format!("https://localhost:{}", app.grpc.port()),
        server_name: None,
        roots: mesh_core::tls::parse_certs(&root, "root").unwrap(),
        token: Some(TokenSource::Literal(tokens["node-a"].clone())),
        cluster_id: "Kubernetes".into(),
        headers: vec![],
        mark: None,
    };
    let waypoint_id: Identity = "spiffe://cluster.local/ns/shop/sa/waypoint"
        .parse()
        .unwrap();
    let ca = IstioCaClient::new(control, true, Duration::from_secs(3600));
    let cert = eventually("the waypoint's certificate", PATIENCE, || {
        let ca = &ca;
        let id = waypoint_id.clone();
        async move { Ok(ca.fetch(&id).await?) }
    })
    .await
    .unwrap();
    assert_eq!(cert.identity, waypoint_id);
    let stranger: Identity = "spiffe://cluster.local/ns/shop/sa/nobody".parse().unwrap();
    assert!(
        ca.fetch(&stranger).await.is_err(),
        "no pod of that identity on node-a"
    );

    // Before the pod has an IP: accepted, addressed, not programmed.
    let status_file = dir.join("gateway.status.yaml");
    eventually("Gateway status: pending", PATIENCE, || {
        let docs = documents(&status_file);
        async move {
            let gw = find(&docs, "Gateway", "waypoint")
                .ok_or_else(|| anyhow::anyhow!("no status yet"))?;
            let programmed = gw["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
                .ok_or_else(|| anyhow::anyhow!("no Programmed: {gw}"))?;
            anyhow::ensure!(programmed["reason"] == "Pending", "{programmed}");
            Ok(())
        }
    })
    .await
    .unwrap();

    // The pod runner publishes the pod's IP: programmed, with the address.
    std::fs::write(dir.join("ambit-pods.status.yaml"), POD_STATUS).unwrap();
    eventually("Gateway status: programmed", PATIENCE, || {
        let docs = documents(&status_file);
        let vip = vip.clone();
        async move {
            let gw = find(&docs, "Gateway", "waypoint")
                .ok_or_else(|| anyhow::anyhow!("no status yet"))?;
            let status = &gw["status"];
            let condition = |type_: &str| {
                status["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == type_))
                    .map(|c| c["status"].clone())
            };
            anyhow::ensure!(condition("Accepted") == Some("True".into()), "{status}");
            anyhow::ensure!(condition("Programmed") == Some("True".into()), "{status}");
            anyhow::ensure!(
                status["addresses"][0]["value"] == vip.as_str()
                    && status["addresses"][0]["type"] == "IPAddress",
                "{status}"
            );
            Ok(())
        }
    })
    .await
    .unwrap();
    let bound = documents(&dir.join("apps.status.yaml"));
    let web = find(&bound, "Service", "web").expect("web's status");
    assert_eq!(
        web["status"]["conditions"][0]["type"],
        "istio.io/WaypointBound"
    );
    assert_eq!(web["status"]["conditions"][0]["status"], "True");

    // The Gateway goes: so does its waypoint.
    std::fs::remove_file(dir.join("gateway.yaml")).unwrap();
    eventually("the generated file removed", PATIENCE, || {
        let exists = generated.exists();
        async move {
            anyhow::ensure!(!exists, "still there");
            Ok(())
        }
    })
    .await
    .unwrap();
    app.shutdown().await;
}
