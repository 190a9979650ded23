//! The delta ADS client against the scripted server over real TLS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use mesh_api::envoy::config::core::v3::Node;
use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{Address, Workload, address};
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::xds::{
    Handler, NodeInfo, ReasonLabel, Rejection, Update, UrlLabel, XdsClient, XdsMetrics, XdsStatus,
};
use mesh_testkit::eventually;
use mesh_testkit::xds_server::{ReceivedRequest, XdsServer, resource};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(10);

/// Keeps resources by name; refuses names starting with `bad`. Optionally
/// holds every apply until the test opens the gate.
#[derive(Debug)]
struct Recorder {
    type_url: &'static str,
    applied: Mutex<BTreeMap<String, String>>,
    entered: Mutex<u32>,
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Recorder {
    fn new(type_url: &'static str) -> Arc<Self> {
        Arc::new(Recorder {
            type_url,
            applied: Mutex::new(BTreeMap::new()),
            entered: Mutex::new(0),
            gate: Mutex::new(None),
        })
    }

    fn names(&self) -> Vec<String> {
        self.applied.lock().unwrap().keys().cloned().collect()
    }
}

impl Handler for Recorder {
    fn type_url(&self) -> &str {
        self.type_url
    }

    fn apply(&self, update: &Update) -> Vec<Rejection> {
        *self.entered.lock().unwrap() += 1;
        if let Some(gate) = self.gate.lock().unwrap().as_ref() {
            // Hand this worker's other tasks to the rest of the runtime while
            // held, or a task parked here would stall the test itself.
            tokio::task::block_in_place(|| {
                let _ = gate.recv_timeout(PATIENCE);
            });
        }
        let mut applied = self.applied.lock().unwrap();
        let mut rejected = Vec::new();
        for name in &update.removed {
            applied.remove(name);
        }
        for r in &update.resources {
            if r.name.starts_with("bad") {
                rejected.push(Rejection::new(
                    &r.name,
                    "names starting with bad are refused",
                ));
            } else {
                applied.insert(r.name.clone(), r.version.clone());
            }
        }
        rejected
    }
}

fn workload(uid: &str) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        })),
    }
}

fn policy(name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

fn versions(r: &ReceivedRequest) -> BTreeMap<String, String> {
    r.request
        .initial_resource_versions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn node() -> Node {
    NodeInfo {
        proxy_type: "ztunnel".into(),
        pod_name: "zt".into(),
        pod_namespace: "istio-system".into(),
        instance_ip: Some("10.0.0.9".parse().unwrap()),
        node_name: "node-a".into(),
        cluster_id: "Kubernetes".into(),
        metadata: Default::default(),
    }
    .to_node()
}

struct Fixture {
    server: XdsServer,
    addresses: Arc<Recorder>,
    policies: Arc<Recorder>,
    status: watch::Receiver<XdsStatus>,
    metrics: Arc<XdsMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn fixture() -> Result<Fixture> {
    let server = XdsServer::start().await?;
    let addresses = Recorder::new(ADDRESS_TYPE_URL);
    let policies = Recorder::new(AUTHORIZATION_TYPE_URL);
    let control = ControlPlane {
        address: server.address(),
        server_name: None,
        roots: vec![server.root_der()],
        token: Some(TokenSource::Literal("secret-token".into())),
        cluster_id: "Kubernetes".into(),
        headers: vec![],
        mark: None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = XdsMetrics::register(&mut registry);
    let client = XdsClient::new(control, node(), vec![addresses.clone(), policies.clone()])?
        .with_metrics(metrics.clone());
    let status = client.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));
    Ok(Fixture {
        server,
        addresses,
        policies,
        status,
        metrics,
        stop: Some(stop),
        task,
    })
}

impl Fixture {
    /// Waits for `n` requests on stream `stream` and returns them.
    async fn requests_on(&self, stream: u64, n: usize) -> Result<Vec<ReceivedRequest>> {
        eventually("requests on the stream", PATIENCE, || async {
            let got: Vec<_> = self
                .server
                .requests()
                .into_iter()
                .filter(|r| r.stream == stream)
                .collect();
            ensure!(got.len() >= n, "{} of {n} requests: {got:?}", got.len());
            Ok(got)
        })
        .await
    }

    /// Waits for the reply to `nonce`.
    async fn reply_to(&self, nonce: &str) -> Result<ReceivedRequest> {
        eventually("a reply to the nonce", PATIENCE, || async {
            self.server
                .requests()
                .into_iter()
                .find(|r| r.request.response_nonce == nonce)
                .ok_or_else(|| anyhow!("no reply to {nonce} yet"))
        })
        .await
    }

    async fn status_where(&self, what: &str, f: impl Fn(&XdsStatus) -> bool) -> Result<()> {
        eventually(what, PATIENCE, || async {
            let s = self.status.borrow().clone();
            ensure!(f(&s), "status is {s:?}");
            Ok(())
        })
        .await
    }

    async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .map_err(|_| anyhow!("the client did not stop within 2 s"))??;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_address_then_authorization_with_node_and_token() -> Result<()> {
    let f = fixture().await?;
    let reqs = f.requests_on(1, 2).await?;
    assert_eq!(reqs[0].request.type_url, ADDRESS_TYPE_URL);
    assert_eq!(reqs[1].request.type_url, AUTHORIZATION_TYPE_URL);
    for r in &reqs {
        assert_eq!(r.request.node.as_ref(), Some(&node()));
        assert!(r.request.resource_names_subscribe.is_empty(), "wildcard");
        assert!(r.request.initial_resource_versions.is_empty());
        assert!(!r.is_reply());
    }
    let md = &f.server.stream_metadata()[0];
    assert_eq!(md.get("authorization").unwrap(), "Bearer secret-token");
    assert_eq!(md.get("clusterid").unwrap(), "Kubernetes");
    f.status_where("connected", |s| s.connected && !s.synced)
        .await?;
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_only_after_the_handler_applied_and_syncs_after_both_types() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    let (open, gate) = std::sync::mpsc::channel();
    *f.addresses.gate.lock().unwrap() = Some(gate);
    let nonce = f
        .server
        .push(
            ADDRESS_TYPE_URL,
            vec![resource("w1", "1", ADDRESS_TYPE_URL, &workload("w1"))],
            vec![],
        )
        .await?;
    eventually("the handler is applying", PATIENCE, || async {
        ensure!(*f.addresses.entered.lock().unwrap() == 1);
        Ok(())
    })
    .await?;
    // The handler is held inside apply: no reply may exist yet.
    assert!(
        f.server
            .requests()
            .iter()
            .all(|r| r.request.response_nonce != nonce),
        "replied before the update was applied"
    );
    open.send(())?;
    let ack = f.reply_to(&nonce).await?;
    assert_eq!(ack.request.type_url, ADDRESS_TYPE_URL);
    assert!(ack.nack().is_none(), "{ack:?}");
    assert_eq!(f.addresses.names(), vec!["w1"]);
    // One type of two applied: not yet synced.
    assert!(!f.status.borrow().synced);

    let nonce = f
        .server
        .push(
            AUTHORIZATION_TYPE_URL,
            vec![resource(
                "default/p",
                "1",
                AUTHORIZATION_TYPE_URL,
                &policy("p"),
            )],
            vec![],
        )
        .await?;
    f.reply_to(&nonce).await?;
    f.status_where("synced", |s| s.synced && s.connected)
        .await?;
    assert_eq!(f.policies.names(), vec!["default/p"]);
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_is_nacked_by_name_the_rest_applies_and_removals_apply() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    let nonce = f
        .server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                resource("w1", "1", ADDRESS_TYPE_URL, &workload("w1")),
                resource("bad-1", "1", ADDRESS_TYPE_URL, &workload("bad-1")),
                resource("w2", "1", ADDRESS_TYPE_URL, &workload("w2")),
            ],
            vec![],
        )
        .await?;
    let nack = f.reply_to(&nonce).await?;
    assert_eq!(
        nack.nack(),
        Some("bad-1: names starting with bad are refused")
    );
    assert_eq!(f.addresses.names(), vec!["w1", "w2"]);
    let last_error = f.status.borrow().last_error.clone().unwrap_or_default();
    assert!(last_error.contains("bad-1"), "{last_error}");
    let url = UrlLabel {
        url: ADDRESS_TYPE_URL.into(),
    };
    assert_eq!(f.metrics.rejected.get_or_create(&url).get(), 1);
    assert_eq!(f.metrics.messages.get_or_create(&url).get(), 1);
    assert!(f.metrics.message_bytes.get_or_create(&url).get() > 0);

    let nonce = f
        .server
        .push(ADDRESS_TYPE_URL, vec![], vec!["w1".into()])
        .await?;
    let ack = f.reply_to(&nonce).await?;
    assert!(ack.nack().is_none());
    assert_eq!(f.addresses.names(), vec!["w2"]);
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_sends_applied_versions_without_rejected_names() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    let n1 = f
        .server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                resource("w1", "v1", ADDRESS_TYPE_URL, &workload("w1")),
                resource("bad-1", "v1", ADDRESS_TYPE_URL, &workload("bad-1")),
            ],
            vec![],
        )
        .await?;
    let n2 = f
        .server
        .push(
            AUTHORIZATION_TYPE_URL,
            vec![resource(
                "default/p",
                "v7",
                AUTHORIZATION_TYPE_URL,
                &policy("p"),
            )],
            vec![],
        )
        .await?;
    f.reply_to(&n1).await?;
    f.reply_to(&n2).await?;
    f.status_where("synced", |s| s.synced).await?;

    f.server.fail_streams();
    let reqs = f.requests_on(2, 2).await?;
    assert_eq!(reqs[0].request.type_url, ADDRESS_TYPE_URL);
    assert_eq!(
        versions(&reqs[0]),
        BTreeMap::from([("w1".to_string(), "v1".to_string())])
    );
    assert_eq!(reqs[1].request.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(
        versions(&reqs[1]),
        BTreeMap::from([("default/p".to_string(), "v7".to_string())])
    );
    assert!(reqs.iter().all(|r| r.request.node.is_some()));
    // The last config keeps serving while the stream is replaced.
    assert!(f.status.borrow().synced);
    assert_eq!(f.addresses.names(), vec!["w1"]);
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_backoff_after_the_server_goes_away_and_stays_synced() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    for (type_url, name) in [
        (ADDRESS_TYPE_URL, "w1"),
        (AUTHORIZATION_TYPE_URL, "default/p"),
    ] {
        let body = resource(name, "1", type_url, &workload(name));
        let nonce = f.server.push(type_url, vec![body], vec![]).await?;
        f.reply_to(&nonce).await?;
    }
    f.status_where("synced", |s| s.synced && s.connected)
        .await?;

    f.server.stop().await;
    f.status_where("disconnected, still synced", |s| {
        !s.connected && s.synced && s.last_error.is_some()
    })
    .await?;
    let error = ReasonLabel {
        reason: "Error".into(),
    };
    assert!(f.metrics.terminations.get_or_create(&error).get() >= 1);
    let opened = f.server.streams_opened();
    f.server.resume().await?;
    f.status_where("connected again", |s| s.connected).await?;
    let reqs = f.requests_on(opened + 1, 2).await?;
    assert_eq!(reqs[0].request.initial_resource_versions.len(), 1);
    assert_eq!(f.addresses.names(), vec!["w1"]);
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_the_server_is_unreachable() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    f.server.stop().await;
    f.status_where("disconnected", |s| !s.connected && s.last_error.is_some())
        .await?;
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_end_after_responses_reconnects_at_once_without_an_error() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    let nonce = f
        .server
        .push(
            ADDRESS_TYPE_URL,
            vec![resource("w1", "3", ADDRESS_TYPE_URL, &workload("w1"))],
            vec![],
        )
        .await?;
    f.reply_to(&nonce).await?;
    f.server.end_streams();
    let reqs = f.requests_on(2, 2).await?;
    assert_eq!(versions(&reqs[0]).get("w1").map(String::as_str), Some("3"));
    let complete = ReasonLabel {
        reason: "Complete".into(),
    };
    assert_eq!(f.metrics.terminations.get_or_create(&complete).get(), 1);
    assert_eq!(f.status.borrow().last_error, None);
    f.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_of_an_unsubscribed_type_is_nacked() -> Result<()> {
    let f = fixture().await?;
    f.requests_on(1, 2).await?;
    let other = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    let nonce = f
        .server
        .push(
            other,
            vec![resource("c1", "1", other, &policy("x"))],
            vec![],
        )
        .await?;
    let nack = f.reply_to(&nonce).await?;
    assert_eq!(nack.request.type_url, other);
    assert_eq!(
        nack.nack(),
        Some(format!("{other}: type not subscribed by this client").as_str())
    );
    assert!(f.addresses.names().is_empty() && f.policies.names().is_empty());
    assert!(!f.status.borrow().synced);
    f.shutdown().await
}
