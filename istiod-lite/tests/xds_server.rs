//! The delta ADS server over real loopback sockets, driven by a raw tonic
//! client that sends and receives the protocol's messages by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use istiod_lite::auth::{AuthError, Authenticate, Caller, bearer_token};
use istiod_lite::xds::{ConnectedClients, LARGE_PUSH_BYTES, Snapshot, XdsMetrics, XdsServer};
use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::google::rpc::Status as RpcStatus;
use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{Address, Workload, address};
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::drain::{DrainOutcome, DrainTrigger};
use mesh_testkit::eventually::eventually;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

const PATIENCE: Duration = Duration::from_secs(10);

fn workload(uid: &str, name: &str) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        })),
    }
}

/// A snapshot of workloads named by uid, each with a name that changes
/// its content, and no authorization policies.
fn snapshot(workloads: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    s.declare(ADDRESS_TYPE_URL);
    s.declare(AUTHORIZATION_TYPE_URL);
    for (uid, name) in workloads {
        s.insert(ADDRESS_TYPE_URL, *uid, &workload(uid, name));
    }
    s.published_now()
}

/// Accepts the bearer token `good` only.
#[derive(Debug)]
struct OneToken;

impl Authenticate for OneToken {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            match bearer_token(metadata)? {
                "good" => Ok(Caller {
                    node: Some("node-1".into()),
                    identity: None,
                    description: "token of node-1".into(),
                }),
                _ => Err(AuthError::Invalid("unknown token".into())),
            }
        })
    }
}

struct Harness {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    clients: ConnectedClients,
    registry: Registry,
    trigger: DrainTrigger,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Harness {
    async fn start(initial: Snapshot, auth: Option<Arc<dyn Authenticate>>) -> Result<Harness> {
        Self::start_with(initial, auth, |server| server).await
    }

    async fn start_with(
        initial: Snapshot,
        auth: Option<Arc<dyn Authenticate>>,
        configure: impl FnOnce(XdsServer) -> XdsServer,
    ) -> Result<Harness> {
        let (snapshots, rx) = watch::channel(Arc::new(initial));
        let mut registry = Registry::default();
        let metrics = Arc::new(XdsMetrics::new(&mut registry));
        let (trigger, drain) = mesh_core::drain::channel();
        let server = configure(XdsServer::new(rx, auth, metrics, drain.clone()));
        let clients = server.connected_clients();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serve = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    drain.draining().await
                })
                .await
        });
        Ok(Harness {
            addr,
            snapshots,
            clients,
            registry,
            trigger,
            serve,
        })
    }

    fn publish(&self, s: Snapshot) {
        self.snapshots.send_replace(Arc::new(s));
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// The value of one sample line, e.g. `istiod_xds_clients`.
    fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn connect(&self, token: Option<&str>) -> Result<Client> {
        Client::connect(self.addr, token).await
    }
}

struct Client {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Client> {
        let mut grpc = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await?;
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let responses = grpc.delta_aggregated_resources(request).await?.into_inner();
        Ok(Client {
            requests,
            responses,
        })
    }

    async fn send(&self, request: DeltaDiscoveryRequest) -> Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| anyhow!("request stream closed"))
    }

    /// Opens a type as ztunnel does: node set, wildcard.
    async fn subscribe_wildcard(&self, type_url: &str) -> Result<()> {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
                    .into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) -> Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    async fn recv(&mut self) -> Result<DeltaDiscoveryResponse> {
        match tokio::time::timeout(PATIENCE, self.responses.message()).await {
            Err(_) => bail!("no response within {PATIENCE:?}"),
            Ok(Err(status)) => Err(status.into()),
            Ok(Ok(None)) => bail!("the stream ended"),
            Ok(Ok(Some(r))) => Ok(r),
        }
    }

    /// The next response, which must be of `type_url`.
    async fn recv_type(&mut self, type_url: &str) -> Result<DeltaDiscoveryResponse> {
        let r = self.recv().await?;
        if r.type_url != type_url {
            bail!("expected a {type_url} response, got {r:?}");
        }
        Ok(r)
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut n: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    n.sort();
    n
}

fn workload_name(r: &DeltaDiscoveryResponse, uid: &str) -> Result<String> {
    let resource = r
        .resources
        .iter()
        .find(|r| r.name == uid)
        .with_context(|| format!("{uid} not in the response"))?;
    let any = resource.resource.as_ref().context("no body")?;
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    match <Address as prost::Message>::decode(any.value.as_slice())?.r#type {
        Some(address::Type::Workload(w)) => Ok(w.name),
        other => bail!("not a workload: {other:?}"),
    }
}

#[tokio::test]
async fn full_state_then_only_changes_and_removals_after_an_ack() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "a"), ("u2", "b")]), None).await?;
    let mut c = h.connect(None).await?;
    c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    c.subscribe_wildcard(AUTHORIZATION_TYPE_URL).await?;

    let full = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&full), ["u1", "u2"]);
    assert!(full.removed_resources.is_empty());
    // No policies, but the type is still answered once: ztunnel waits for it.
    let authz = c.recv_type(AUTHORIZATION_TYPE_URL).await?;
    assert!(authz.resources.is_empty());
    assert_ne!(full.nonce, authz.nonce);
    c.ack(&full).await?;
    c.ack(&authz).await?;

    // The change waits until the server has seen both ACKs, else it would be
    // coalesced rather than pushed on its own (also fine, but not this test).
    eventually("both types acked", PATIENCE, || async {
        let clients = h.clients.list();
        let info = clients.first().context("no client")?;
        match info.types.values().all(|t| t.state == "acked") && info.types.len() == 2 {
            true => Ok(()),
            false => bail!("{info:?}"),
        }
    })
    .await?;
    h.publish(snapshot(&[("u1", "a2"), ("u3", "c")]));
    let change = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&change), ["u1", "u3"]);
    assert_eq!(workload_name(&change, "u1")?, "a2");
    assert_eq!(change.removed_resources, ["u2"]);
    c.ack(&change).await?;

    eventually("push metrics and latency recorded", PATIENCE, || async {
        let pushes = h.metric(&format!(
            "istiod_xds_pushes_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        ));
        let latency = h.metric("istiod_xds_push_latency_seconds_count");
        match (pushes, latency) {
            (2.0, 3.0) => Ok(()),
            other => bail!("pushes, acks with latency: {other:?}"),
        }
    })
    .await?;
    assert_eq!(
        h.metric(&format!(
            "istiod_xds_push_resources_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        )),
        4.0
    );
    assert!(
        h.metric(&format!(
            "istiod_xds_push_bytes_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        )) > 0.0
    );
    assert_eq!(h.metric("istiod_xds_clients"), 1.0);

    let info = h.clients.list().pop().context("no client")?;
    assert_eq!(
        info.node_id.as_deref(),
        Some("ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local")
    );
    let address = &info.types[ADDRESS_TYPE_URL];
    assert!(address.wildcard);
    assert_eq!(address.resources, 2);
    assert_eq!(address.last_nonce.as_deref(), Some(change.nonce.as_str()));
    assert_eq!(address.responses_sent, 2);
    serde_json::to_string(&info)?;

    // A policy arrives, workloads unchanged: only the policy type is pushed.
    eventually("change acked", PATIENCE, || async {
        match h
            .clients
            .list()
            .first()
            .map(|i| i.types[ADDRESS_TYPE_URL].state)
        {
            Some("acked") => Ok(()),
            other => bail!("{other:?}"),
        }
    })
    .await?;
    let mut with_policy = snapshot(&[("u1", "a2"), ("u3", "c")]);
    let policy = Authorization {
        name: "deny-all".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    with_policy.insert(AUTHORIZATION_TYPE_URL, "default/deny-all", &policy);
    h.publish(with_policy);
    let policies = c.recv_type(AUTHORIZATION_TYPE_URL).await?;
    assert_eq!(names(&policies), ["default/deny-all"]);
    let body = policies.resources[0].resource.as_ref().context("no body")?;
    assert_eq!(body.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(
        <Authorization as prost::Message>::decode(body.value.as_slice())?,
        policy
    );

    drop(c);
    eventually("a closed stream is forgotten", PATIENCE, || async {
        match (h.clients.list().len(), h.metric("istiod_xds_clients")) {
            (0, 0.0) => Ok(()),
            other => bail!("clients, gauge: {other:?}"),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn changes_while_unacknowledged_are_coalesced_into_one_response() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "v0")]), None).await?;
    let mut c = h.connect(None).await?;
    c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    let first = c.recv_type(ADDRESS_TYPE_URL).await?;

    // Not acknowledged: these all wait behind the first response.
    for v in 1..=5 {
        h.publish(snapshot(&[("u1", &format!("v{v}")), ("u2", "x")]));
    }
    h.publish(snapshot(&[("u1", "v6")]));
    c.ack(&first).await?;
    let coalesced = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&coalesced), ["u1"]);
    assert_eq!(workload_name(&coalesced, "u1")?, "v6");
    // u2 came and went while the client was busy: it never hears of it.
    assert!(coalesced.removed_resources.is_empty());
    c.ack(&coalesced).await?;

    // Nothing else was queued: the next response is this marker change.
    eventually("second ack seen", PATIENCE, || async {
        match h
            .clients
            .list()
            .first()
            .map(|i| i.types[ADDRESS_TYPE_URL].state)
        {
            Some("acked") => Ok(()),
            other => bail!("{other:?}"),
        }
    })
    .await?;
    h.publish(snapshot(&[("u1", "v6"), ("marker", "m")]));
    let next = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&next), ["marker"]);
    assert_eq!(
        h.metric(&format!(
            "istiod_xds_pushes_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        )),
        3.0
    );
    Ok(())
}

#[tokio::test]
async fn a_nack_is_counted_and_not_answered_with_the_same_resources() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "bad")]), None).await?;
    let mut c = h.connect(None).await?;
    c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    let rejected = c.recv_type(ADDRESS_TYPE_URL).await?;
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: rejected.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "u1: no addresses".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await?;
    eventually("the NACK is counted and shown", PATIENCE, || async {
        let nacks = h.metric(&format!(
            "istiod_xds_nacks_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        ));
        let shown = h
            .clients
            .list()
            .first()
            .and_then(|i| i.types[ADDRESS_TYPE_URL].last_nack.clone());
        match (nacks, shown.as_deref()) {
            (1.0, Some("u1: no addresses")) => Ok(()),
            other => bail!("{other:?}"),
        }
    })
    .await?;
    // The rejected version is not resent: the next response is the fix.
    h.publish(snapshot(&[("u1", "fixed")]));
    let fixed = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(workload_name(&fixed, "u1")?, "fixed");
    assert_eq!(
        h.metric(&format!(
            "istiod_xds_pushes_total{{type_url=\"{ADDRESS_TYPE_URL}\"}}"
        )),
        2.0
    );
    Ok(())
}

#[tokio::test]
async fn a_reconnecting_client_with_versions_gets_only_the_difference() -> Result<()> {
    let h = Harness::start(
        snapshot(&[("same", "s"), ("changed", "c1"), ("gone", "g")]),
        None,
    )
    .await?;
    let mut first = h.connect(None).await?;
    first.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    let full = first.recv_type(ADDRESS_TYPE_URL).await?;
    first.ack(&full).await?;
    let versions: HashMap<String, String> = full
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(versions.len(), 3);
    drop(first);

    // As after a control-plane restart: same content, same versions.
    h.publish(snapshot(&[("same", "s"), ("changed", "c2"), ("new", "n")]));
    let mut again = h.connect(None).await?;
    again
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            initial_resource_versions: versions,
            ..Default::default()
        })
        .await?;
    let diff = again.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&diff), ["changed", "new"]);
    assert_eq!(workload_name(&diff, "changed")?, "c2");
    assert_eq!(diff.removed_resources, ["gone"]);
    Ok(())
}

#[tokio::test]
async fn explicit_names_receive_only_those_names() -> Result<()> {
    let h = Harness::start(snapshot(&[("ns/a", "a1"), ("ns/b", "b1")]), None).await?;
    let mut c = h.connect(None).await?;
    // On-demand start: subscribed to nothing.
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        ..Default::default()
    })
    .await?;
    let nothing = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert!(nothing.resources.is_empty() && nothing.removed_resources.is_empty());
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: nothing.nonce.clone(),
        resource_names_subscribe: vec!["ns/a".into(), "/10.9.9.9".into()],
        ..Default::default()
    })
    .await?;
    let lookup = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&lookup), ["ns/a"]);
    // A name that does not exist is answered, so the lookup does not hang.
    assert_eq!(lookup.removed_resources, ["/10.9.9.9"]);
    c.ack(&lookup).await?;
    eventually("lookup acked", PATIENCE, || async {
        match h
            .clients
            .list()
            .first()
            .map(|i| i.types[ADDRESS_TYPE_URL].state)
        {
            Some("acked") => Ok(()),
            other => bail!("{other:?}"),
        }
    })
    .await?;

    h.publish(snapshot(&[("ns/a", "a2"), ("ns/b", "b2")]));
    let change = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&change), ["ns/a"]);
    assert!(change.removed_resources.is_empty());
    let info = h.clients.list().pop().context("no client")?;
    assert!(!info.types[ADDRESS_TYPE_URL].wildcard);
    assert_eq!(info.types[ADDRESS_TYPE_URL].names, ["/10.9.9.9", "ns/a"]);
    Ok(())
}

#[tokio::test]
async fn a_hundred_clients_all_receive_a_change() -> Result<()> {
    const CLIENTS: usize = 100;
    let h = Harness::start(snapshot(&[("u1", "v1")]), None).await?;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = h.connect(None).await?;
        c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
        let full = c.recv_type(ADDRESS_TYPE_URL).await?;
        c.ack(&full).await?;
        clients.push(c);
    }
    eventually("every client acked", PATIENCE, || async {
        let acked = h
            .clients
            .list()
            .iter()
            .filter(|i| {
                i.types
                    .get(ADDRESS_TYPE_URL)
                    .is_some_and(|t| t.state == "acked")
            })
            .count();
        match acked {
            CLIENTS => Ok(()),
            n => bail!("{n} acked"),
        }
    })
    .await?;

    let started = Instant::now();
    h.publish(snapshot(&[("u1", "v2")]));
    let receivers = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let r = c.recv_type(ADDRESS_TYPE_URL).await?;
            anyhow::ensure!(workload_name(&r, "u1")? == "v2");
            Ok::<_, anyhow::Error>(c)
        })
    });
    let done = futures::future::join_all(receivers).await;
    let elapsed = started.elapsed();
    for r in done {
        r??;
    }
    println!("{CLIENTS} clients received a change in {elapsed:?}");
    assert_eq!(h.metric("istiod_xds_clients"), CLIENTS as f64);
    Ok(())
}

/// Workloads and policies enough that each type's first response needs a
/// large-push slot.
fn large_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    let padding = "x".repeat(1024);
    let count = LARGE_PUSH_BYTES / padding.len() + 1;
    for i in 0..count {
        let uid = format!("u{i}");
        s.insert(ADDRESS_TYPE_URL, uid.as_str(), &workload(&uid, &padding));
        let policy = Authorization {
            name: format!("p{i}-{padding}"),
            namespace: "default".into(),
            ..Default::default()
        };
        s.insert(AUTHORIZATION_TYPE_URL, format!("default/p{i}"), &policy);
    }
    s.published_now()
}

#[tokio::test]
async fn large_first_responses_wait_for_a_slot_until_the_one_in_flight_is_answered() -> Result<()> {
    let h = Harness::start_with(large_snapshot(), None, |server| {
        server.with_large_push_slots(1, Duration::from_secs(60))
    })
    .await?;
    let waiting = || async {
        match h.metric("istiod_xds_pushes_waiting") {
            1.0 => Ok(()),
            n => bail!("{n} waiting"),
        }
    };

    // One client, two large types: the second waits for the first's ACK,
    // which the stream still reads while it waits.
    let mut a = h.connect(None).await?;
    a.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    a.subscribe_wildcard(AUTHORIZATION_TYPE_URL).await?;
    let first = a.recv().await?;
    assert!(prost::Message::encoded_len(&first) >= LARGE_PUSH_BYTES);
    eventually("the second type waits", PATIENCE, waiting).await?;

    a.ack(&first).await?;
    let second = a.recv().await?;
    assert_ne!(second.type_url, first.type_url);

    // Another client waits until that one is answered.
    let mut b = h.connect(None).await?;
    b.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    eventually("b waits for a's second response", PATIENCE, waiting).await?;
    a.ack(&second).await?;
    let full = b.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(full.resources.len(), first.resources.len());
    b.ack(&full).await?;
    eventually("nothing waits", PATIENCE, || async {
        match h.metric("istiod_xds_pushes_waiting") {
            0.0 => Ok(()),
            n => bail!("{n} waiting"),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_answers_holds_its_slot_only_for_a_while() -> Result<()> {
    let h = Harness::start_with(large_snapshot(), None, |server| {
        server.with_large_push_slots(1, Duration::from_millis(200))
    })
    .await?;
    let mut silent = h.connect(None).await?;
    silent.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    silent.recv_type(ADDRESS_TYPE_URL).await?;
    let mut other = h.connect(None).await?;
    other.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    let full = other.recv_type(ADDRESS_TYPE_URL).await?;
    assert!(prost::Message::encoded_len(&full) >= LARGE_PUSH_BYTES);
    Ok(())
}

#[tokio::test]
async fn streams_are_authenticated_on_open() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "a")]), Some(Arc::new(OneToken))).await?;

    for token in [None, Some("bad")] {
        let refused = h
            .connect(token)
            .await
            .err()
            .context("a bad token was accepted")?;
        let status = refused
            .downcast_ref::<tonic::Status>()
            .with_context(|| format!("not a status: {refused:#}"))?;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("bearer token"), "{status:?}");
    }

    let mut c = h.connect(Some("good")).await?;
    c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    c.recv_type(ADDRESS_TYPE_URL).await?;
    let info = h.clients.list().pop().context("no client")?;
    assert_eq!(info.caller.as_deref(), Some("token of node-1"));
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_open_streams_promptly() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "a")]), None).await?;
    let mut c = h.connect(None).await?;
    c.subscribe_wildcard(ADDRESS_TYPE_URL).await?;
    let full = c.recv_type(ADDRESS_TYPE_URL).await?;
    c.ack(&full).await?;

    let started = Instant::now();
    let outcome = h.trigger.drain(Duration::from_secs(5)).await;
    assert_eq!(outcome, DrainOutcome::Complete);
    assert!(started.elapsed() < Duration::from_secs(5));
    match c.responses.message().await {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("the stream went on after shutdown: {other:?}"),
    }
    tokio::time::timeout(PATIENCE, h.serve)
        .await
        .context("the server did not stop")???;
    Ok(())
}

#[tokio::test]
async fn requests_without_a_type_end_the_stream_with_a_clear_error() -> Result<()> {
    let h = Harness::start(snapshot(&[]), None).await?;
    let mut c = h.connect(None).await?;
    c.send(DeltaDiscoveryRequest::default()).await?;
    let err = c
        .recv()
        .await
        .err()
        .context("accepted a request without a type")?;
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("not a status")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("type_url"), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn clients_wait_for_the_first_published_snapshot() -> Result<()> {
    // Not published yet: a reconnecting client must not be told that
    // everything it has is gone.
    let h = Harness::start(Snapshot::default(), None).await?;
    let mut c = h.connect(None).await?;
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        initial_resource_versions: [("u1".to_string(), "0123456789abcdef".to_string())].into(),
        ..Default::default()
    })
    .await?;
    eventually("the client is connected", PATIENCE, || async {
        match h.clients.list().len() {
            1 => Ok(()),
            n => bail!("{n} clients"),
        }
    })
    .await?;
    h.publish(snapshot(&[("u1", "a")]));
    let first = c.recv_type(ADDRESS_TYPE_URL).await?;
    assert_eq!(names(&first), ["u1"]);
    assert!(first.removed_resources.is_empty());
    Ok(())
}

#[tokio::test]
async fn unknown_types_are_answered_empty_and_counted_as_other() -> Result<()> {
    const UNKNOWN: &str = "type.googleapis.com/example.NotServed";
    let h = Harness::start(snapshot(&[("u1", "a")]), None).await?;
    let mut c = h.connect(None).await?;
    c.subscribe_wildcard(UNKNOWN).await?;
    let r = c.recv_type(UNKNOWN).await?;
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert_eq!(h.metric("istiod_xds_pushes_total{type_url=\"other\"}"), 1.0);
    let json = h.clients.to_json();
    assert_eq!(json[0]["types"][UNKNOWN]["wildcard"], true, "{json}");
    Ok(())
}

#[tokio::test]
async fn state_of_the_world_ads_is_refused_with_a_clear_message() -> Result<()> {
    let h = Harness::start(snapshot(&[("u1", "a")]), None).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>::default();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let refused = grpc
        .unary(
            tonic::Request::new(DeltaDiscoveryRequest::default()),
            path,
            codec,
        )
        .await
        .err()
        .context("state-of-the-world ADS was served")?;
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    assert!(
        refused.message().contains("DeltaAggregatedResources"),
        "{refused:?}"
    );
    Ok(())
}
