//! The data path: outbound capture (15001), HBONE inbound (15008) and
//! plaintext inbound (15006). Decisions come from `route` and `authz`; this
//! module carries them out, counts and logs.

pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod plain;
pub mod plaintext;
pub mod route;
pub mod waypoint;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::Pool;
use mesh_core::tls::CertStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::WorkloadRef;
use crate::metrics::{Metrics, TrafficLabels};
use crate::sockets::SocketFactory;
use crate::state::{State, StateStore, WorkloadEntry};

/// How long inbound traffic to a new pod waits for the control plane to
/// describe it (spec 2.8 step 2): until then its selector policies and
/// waypoint binding are unknown, so admitting it would skip them.
pub const LOCAL_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// Everything the proxies of one served workload share: the dedicated
/// ztunnel's one workload, or one pod in in-pod mode.
#[derive(Debug)]
pub struct Proxy {
    pub state: Arc<StateStore>,
    pub certs: Arc<CertStore>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub local: LocalWorkload,
    /// Where upstream sockets are created (the pod's netns in in-pod mode).
    pub sockets: SocketFactory,
    /// Connect to apps from the client's own address (in-pod mode).
    pub original_source: bool,
    pub connect_timeout: Duration,
}

/// The served workload: found in the state by namespace and name; in in-pod
/// mode the node agent's description stands in until the control plane
/// knows the pod (a new pod's first connections come before that).
#[derive(Debug, Clone)]
pub struct LocalWorkload {
    pub name: WorkloadRef,
    /// In-pod mode: the pod as ZDS described it (identity, no addresses).
    pub announced: Option<Arc<WorkloadEntry>>,
    /// In-pod mode with xDS: the model's state generations, so inbound can
    /// wait for the pod's record instead of admitting on the announced one.
    /// `None` (file config): nothing more will come, the announced one serves.
    pub updates: Option<watch::Receiver<u64>>,
    /// How long inbound waits on `updates` (normally [`LOCAL_WORKLOAD_WAIT`]).
    pub wait: Duration,
}

/// Why inbound traffic to the local workload was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum LocalWorkloadError {
    #[error("the control plane did not describe the pod within {0:?}")]
    NotDescribed(Duration),
    #[error("the control plane's model is gone before it described the pod")]
    ModelGone,
}

impl LocalWorkload {
    /// The workload's record in `state`, if the state has it. `pod_ip` is an
    /// address of the pod seen on the connection (in-pod mode), used when
    /// the model knows the pod by address but not by the announced name.
    pub fn described(&self, state: &State, pod_ip: IpAddr) -> Option<Arc<WorkloadEntry>> {
        let by_name = state.workload_named(&self.name.namespace, &self.name.name);
        let Some(announced) = &self.announced else {
            return by_name.cloned();
        };
        // A record of another identity is not this pod (spec 3.5).
        let ours = |w: &&Arc<WorkloadEntry>| w.identity == announced.identity;
        by_name
            .filter(ours)
            .or_else(|| state.workload_by_ip(pod_ip).filter(ours))
            .cloned()
    }

    /// The record inbound traffic is checked against: the one in `store`,
    /// waiting up to `wait` for xDS to deliver it when only the announced
    /// one exists, since the announced one has no policies and no waypoint.
    pub async fn for_inbound(
        &self,
        store: &StateStore,
        pod_ip: IpAddr,
    ) -> Result<Option<Arc<WorkloadEntry>>, LocalWorkloadError> {
        // Fast path: a described pod costs what the lookup always did.
        if let Some(w) = self.described(&store.load(), pod_ip) {
            return Ok(Some(w));
        }
        let (Some(_), Some(updates)) = (&self.announced, &self.updates) else {
            return Ok(self.announced.clone());
        };
        let mut updates = updates.clone();
        let wait = async {
            loop {
                // Marked seen before the lookup: a swap after it bumps the
                // generation again, so `changed` cannot miss it.
                updates.borrow_and_update();
                if let Some(w) = self.described(&store.load(), pod_ip) {
                    return Ok(Some(w));
                }
                if updates.changed().await.is_err() {
                    return Err(LocalWorkloadError::ModelGone);
                }
            }
        };
        tokio::time::timeout(self.wait, wait)
            .await
            .unwrap_or(Err(LocalWorkloadError::NotDescribed(self.wait)))
    }
}

impl Proxy {
    /// The local workload in the current state, or as announced.
    pub fn local_workload(&self, pod_ip: IpAddr) -> Option<Arc<WorkloadEntry>> {
        self.local
            .described(&self.state.load(), pod_ip)
            .or_else(|| self.local.announced.clone())
    }

    /// The local workload for an inbound connection; see
    /// [`LocalWorkload::for_inbound`].
    pub async fn inbound_local_workload(
        &self,
        pod_ip: IpAddr,
    ) -> Result<Option<Arc<WorkloadEntry>>, LocalWorkloadError> {
        self.local.for_inbound(&self.state, pod_ip).await
    }

    /// Whether `target` (a CONNECT authority or original destination reached
    /// on `local`, the accepting socket's address) is this workload. In a pod's
    /// netns the listener's own address is the pod's, known before xDS has it.
    pub fn is_local_target(
        &self,
        local: &WorkloadEntry,
        target: SocketAddr,
        accepted_on: IpAddr,
    ) -> bool {
        local.spec.addresses.contains(&target.ip())
            || (self.local.announced.is_some() && target.ip() == accepted_on)
    }

    /// Connects to the app at `target` for a client at `client`.
    pub async fn connect_app(
        &self,
        target: SocketAddr,
        client: IpAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let source = self.original_source.then_some(client);
        self.sockets
            .connect(target, source, self.connect_timeout)
            .await
    }
}

/// Runs an accept loop until drain starts; each connection gets a drain
/// watcher. When the drain starts, the connections the kernel has already
/// queued are taken too and served under the drain like the others: closing
/// the listener with them queued would reset connections whose handshake
/// the client has already seen complete.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    drain: DrainWatcher,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, DrainWatcher) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = |stream: tokio::net::TcpStream, peer: SocketAddr| {
        crate::capture::tune(&stream);
        tokio::spawn(handle(
            stream,
            crate::capture::canonical(peer),
            drain.clone(),
        ));
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain.draining() => {
                let mut queued = 0;
                while let Some((stream, peer)) = take_queued(&listener, name) {
                    serve(stream, peer);
                    queued += 1;
                }
                tracing::info!(listener = name, queued, "stopped accepting");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer),
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection from the listener's queue without waiting (the listener
/// is non-blocking); `None` once the queue is empty or on an error.
fn take_queued(
    listener: &TcpListener,
    name: &'static str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let taken = socket2::SockRef::from(listener)
        .accept()
        .and_then(|(socket, peer)| {
            socket.set_nonblocking(true)?;
            let stream = tokio::net::TcpStream::from_std(socket.into())?;
            let peer = peer
                .as_socket()
                .ok_or_else(|| std::io::Error::other("a TCP peer without an IP address"))?;
            Ok((stream, peer))
        });
    match taken {
        Ok(connection) => Some(connection),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(error) => {
            tracing::warn!(listener = name, %error, "taking a queued connection failed");
            None
        }
    }
}

/// One connection's telemetry: the counters it moves and its one access-log line.
#[derive(Debug)]
pub struct Record<'a> {
    metrics: &'a Metrics,
    direction: &'static str,
    src: SocketAddr,
    dst: SocketAddr,
    started: Instant,
    /// The waypoint this connection goes through, if any.
    waypoint: Option<String>,
}

impl<'a> Record<'a> {
    pub fn new(
        metrics: &'a Metrics,
        direction: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Record {
            metrics,
            direction,
            src,
            dst,
            started: Instant::now(),
            waypoint: None,
        }
    }

    /// Names the waypoint hop in the access log.
    pub fn via_waypoint(&mut self, name: &str) {
        self.waypoint = Some(name.to_string());
    }

    /// A connection that never carried data: counted as failed with `flag`, logged with the reason.
    pub fn failed(&self, labels: TrafficLabels, flag: &str, reason: &str) {
        let labels = self.count_failed(labels, flag);
        self.log(&labels, 0, 0, reason);
    }

    /// Counts a failure of an opened connection; `closed` then logs it once.
    pub fn count_failed(&self, labels: TrafficLabels, flag: &str) -> TrafficLabels {
        let labels = labels.with_flag(flag);
        self.metrics.failed.get_or_create(&labels).inc();
        labels
    }

    pub fn opened(&self, labels: &TrafficLabels) {
        self.metrics.opened.get_or_create(labels).inc();
        self.metrics.sockets_open.inc();
    }

    /// Closes what `opened` counted. `sent` goes to the client, `received` comes from it.
    pub fn closed(&self, labels: &TrafficLabels, sent: u64, received: u64, outcome: &str) {
        self.metrics.sockets_open.dec();
        self.metrics.closed.get_or_create(labels).inc();
        self.metrics.sent_bytes.get_or_create(labels).inc_by(sent);
        self.metrics
            .received_bytes
            .get_or_create(labels)
            .inc_by(received);
        self.log(labels, sent, received, outcome);
    }

    fn log(&self, l: &TrafficLabels, sent: u64, received: u64, outcome: &str) {
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            src.workload = %l.source_workload,
            src.namespace = %l.source_workload_namespace,
            src.identity = %l.source_principal,
            dst.addr = %self.dst,
            dst.service = %l.destination_service,
            dst.workload = %l.destination_workload,
            dst.namespace = %l.destination_workload_namespace,
            dst.identity = %l.destination_principal,
            via.waypoint = self.waypoint.as_deref().unwrap_or("-"),
            security = %l.connection_security_policy,
            flags = %l.response_flags,
            bytes_sent = sent,
            bytes_recv = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome,
            "connection complete"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's full record (with a selector policy) and the announced one
    /// ZDS would give: same identity, no addresses, no policies.
    fn pod() -> (State, Arc<WorkloadEntry>) {
        let c = crate::config::Config::parse(
            "
proxy:
  workload: default/pod
  certificates: {ca: {cert: r, key: k}}
workloads:
- {uid: p-uid, name: pod, namespace: default, addresses: [10.0.0.2], serviceAccount: pod,
   authorizationPolicies: [default/no-one]}
authorizationPolicies:
- {name: no-one, namespace: default, scope: WORKLOAD_SELECTOR, action: DENY,
   rules: [{clauses: [{matches: [{principals: ['cluster.local/ns/default/sa/a']}]}]}]}
",
        )
        .unwrap();
        let full = State::from_config(&c).unwrap();
        let record = full.workload_named("default", "pod").unwrap();
        let mut spec = record.spec.clone();
        spec.addresses.clear();
        spec.authorization_policies.clear();
        let announced = Arc::new(WorkloadEntry {
            spec,
            identity: record.identity.clone(),
        });
        (full, announced)
    }

    fn local(announced: Arc<WorkloadEntry>, updates: watch::Receiver<u64>) -> LocalWorkload {
        LocalWorkload {
            name: WorkloadRef {
                namespace: "default".into(),
                name: "pod".into(),
            },
            announced: Some(announced),
            updates: Some(updates),
            wait: LOCAL_WORKLOAD_WAIT,
        }
    }

    const POD_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test(start_paused = true)]
    async fn inbound_to_a_new_pod_is_held_until_xds_describes_it_and_gets_its_policies() {
        let (full, announced) = pod();
        let store = Arc::new(StateStore::new(State::default()));
        let (generation, updates) = watch::channel(0u64);
        let local = local(announced, updates);
        assert!(
            local.described(&store.load(), POD_IP).is_none(),
            "an empty state describes no pod"
        );
        let held = tokio::spawn({
            let store = store.clone();
            async move { local.for_inbound(&store, POD_IP).await }
        });
        // The waiter holds its own receiver once it is waiting.
        while generation.receiver_count() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(!held.is_finished(), "admitted before xDS described the pod");
        store.replace(full);
        generation.send_modify(|g| *g += 1);
        let record = held.await.unwrap().unwrap().unwrap();
        assert_eq!(record.spec.addresses, vec![POD_IP]);
        assert_eq!(record.spec.authorization_policies, vec!["default/no-one"]);
    }

    #[tokio::test(start_paused = true)]
    async fn inbound_to_a_pod_xds_never_describes_is_refused_after_the_wait() {
        let (_, announced) = pod();
        let store = StateStore::new(State::default());
        let (generation, updates) = watch::channel(0u64);
        let local = local(announced, updates);
        let started = tokio::time::Instant::now();
        let refused = local.for_inbound(&store, POD_IP).await;
        assert!(
            matches!(refused, Err(LocalWorkloadError::NotDescribed(w)) if w == LOCAL_WORKLOAD_WAIT),
            "{refused:?}"
        );
        assert!(started.elapsed() >= LOCAL_WORKLOAD_WAIT);
        drop(generation);
    }

    #[tokio::test]
    async fn a_described_pod_or_file_config_does_not_wait() {
        let (full, announced) = pod();
        let (_generation, updates) = watch::channel(0u64);
        let described = local(announced.clone(), updates);
        let store = StateStore::new(full);
        let record = described
            .for_inbound(&store, POD_IP)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.spec.authorization_policies, vec!["default/no-one"]);
        // Without xDS nothing will come: the announced record serves at once.
        let file = LocalWorkload {
            updates: None,
            ..described
        };
        let empty = StateStore::new(State::default());
        let record = file.for_inbound(&empty, POD_IP).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&record, &announced));
    }
}
