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

use crate::config::WorkloadRef;
use crate::metrics::{Metrics, TrafficLabels};
use crate::sockets::SocketFactory;
use crate::state::{StateStore, WorkloadEntry};

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
}

impl Proxy {
    /// The local workload in the current state, or as announced. `pod_ip` is
    /// an address of the pod seen on the connection (in-pod mode), used when
    /// the model knows the pod by address but not by the announced name.
    pub fn local_workload(&self, pod_ip: IpAddr) -> Option<Arc<WorkloadEntry>> {
        let state = self.state.load();
        let by_name = state.workload_named(&self.local.name.namespace, &self.local.name.name);
        let Some(announced) = &self.local.announced else {
            return by_name.cloned();
        };
        // A record of another identity is not this pod (spec 3.5).
        let ours = |w: &&Arc<WorkloadEntry>| w.identity == announced.identity;
        by_name
            .filter(ours)
            .or_else(|| state.workload_by_ip(pod_ip).filter(ours))
            .cloned()
            .or_else(|| Some(announced.clone()))
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
