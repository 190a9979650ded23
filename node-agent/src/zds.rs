//! The ZDS server (spec 5): ztunnels connect to the node agent's seqpacket
//! socket, say hello, receive the snapshot of enrolled pods (each with its
//! netns descriptor, each acked), then `SnapshotSent`. Afterwards a new pod
//! goes to the newest connected ztunnel only and a removal to all of them,
//! one acked message at a time. Every exchange has a deadline; a ztunnel
//! that misses one, closes, or speaks out of turn is dropped (it reconnects
//! and gets a fresh snapshot).

mod conn;

pub use conn::{ExchangeError, read_answer, read_hello};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_api::istio::workload::zds::{
    AddWorkload, DelWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest, ZdsHello,
    workload_request,
};
use mesh_core::drain::DrainWatcher;
use mesh_core::netns::Netns;
use mesh_core::zds::ZdsListener;
use std::os::fd::{AsFd, AsRawFd};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;
use conn::Conn;

/// Per-message read/write deadline (spec 5).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often connected ztunnels are checked for liveness.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// Accepts are rate limited to 5 per second (spec 5).
const ACCEPT_SPACING: Duration = Duration::from_millis(200);

/// A pod as ztunnel is told about it.
#[derive(Clone, Debug)]
pub struct ZdsPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub netns: Arc<Netns>,
}

#[derive(Debug, thiserror::Error)]
pub enum ZdsServerError {
    #[error("no ztunnel connected to the node agent within {0:?}")]
    NoZtunnel(Duration),
    #[error("ztunnel refused pod {uid}: {message}")]
    Nack { uid: String, message: String },
    #[error("the node agent is shutting down")]
    ShuttingDown,
}

impl ZdsServerError {
    pub fn reason(&self) -> &'static str {
        match self {
            ZdsServerError::NoZtunnel(_) => "no_ztunnel",
            ZdsServerError::Nack { .. } => "nack",
            ZdsServerError::ShuttingDown => "shutdown",
        }
    }
}

/// The pods offered in a new ztunnel's snapshot.
pub type SnapshotFn = Arc<dyn Fn() -> Vec<ZdsPod> + Send + Sync>;

/// Cheap to clone.
#[derive(Clone)]
pub struct ZdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connected ztunnels past their snapshot, oldest first. The lock also
    /// serializes every exchange, so a snapshot and a concurrent Add cannot
    /// interleave on one socket or miss each other.
    conns: Mutex<Vec<Conn>>,
    ready: watch::Sender<usize>,
    /// Set when drain starts: Adds waiting for a ztunnel give up at once.
    closing: watch::Sender<bool>,
    next_id: AtomicU64,
    snapshot: SnapshotFn,
    message_timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for ZdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdsServer")
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl ZdsServer {
    pub fn new(snapshot: SnapshotFn, message_timeout: Duration, metrics: Metrics) -> ZdsServer {
        ZdsServer {
            inner: Arc::new(Inner {
                conns: Mutex::new(Vec::new()),
                ready: watch::channel(0).0,
                closing: watch::channel(false).0,
                next_id: AtomicU64::new(1),
                snapshot,
                message_timeout,
                metrics,
            }),
        }
    }

    /// ztunnels connected and past their snapshot.
    pub fn connected(&self) -> usize {
        *self.inner.ready.borrow()
    }

    /// Accepts ztunnels and checks their liveness until drain starts; then
    /// closes every connection (ztunnels keep their pods and reconnect).
    pub fn serve(&self, listener: ZdsListener, drain: DrainWatcher) -> JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut handshakes = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(socket) => {
                            server.inner.metrics.zds_connections_total.inc();
                            let id = server.inner.next_id.fetch_add(1, Ordering::Relaxed);
                            let server = server.clone();
                            handshakes.spawn(async move { server.handshake(Conn::new(id, socket)).await });
                            tokio::time::sleep(ACCEPT_SPACING).await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "ZDS accept failed");
                            tokio::time::sleep(ACCEPT_SPACING).await;
                        }
                    },
                    _ = liveness.tick() => server.check_liveness().await,
                    Some(_) = handshakes.join_next() => {}
                    _ = drain.draining() => break,
                }
            }
            server.inner.closing.send_replace(true);
            handshakes.shutdown().await;
            let mut conns = server.inner.conns.lock().await;
            conns.clear();
            server.publish(&conns);
        })
    }

    async fn handshake(&self, conn: Conn) {
        let timeout = self.inner.message_timeout;
        let hello: ZdsHello = match conn.recv_hello(timeout).await {
            Ok(hello) => hello,
            Err(error) => {
                tracing::warn!(conn = conn.id, %error, "ztunnel did not say hello; closing");
                return;
            }
        };
        if hello.version != 1 {
            tracing::warn!(
                conn = conn.id,
                version = hello.version,
                "ztunnel speaks an unknown ZDS version; closing"
            );
            return;
        }
        let mut conns = self.inner.conns.lock().await;
        let pods = (self.inner.snapshot)();
        tracing::info!(
            conn = conn.id,
            pods = pods.len(),
            "ztunnel connected; sending snapshot"
        );
        for pod in &pods {
            match conn
                .exchange(
                    &add_request(pod),
                    Some(pod.netns.as_fd().as_raw_fd()),
                    timeout,
                )
                .await
            {
                Ok(Ok(())) => {}
                // ztunnel keeps a refused pod pending and retries it itself.
                Ok(Err(message)) => {
                    tracing::warn!(conn = conn.id, uid = %pod.uid, %message, "ztunnel refused a snapshot pod")
                }
                Err(error) => {
                    tracing::warn!(conn = conn.id, %error, "snapshot failed; closing");
                    return;
                }
            }
        }
        let sent = WorkloadRequest {
            payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
        };
        match conn.exchange(&sent, None, timeout).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                tracing::warn!(conn = conn.id, %message, "ztunnel refused the end of the snapshot; closing");
                return;
            }
            Err(error) => {
                tracing::warn!(conn = conn.id, %error, "snapshot failed; closing");
                return;
            }
        }
        conns.push(conn);
        self.publish(&conns);
    }

    fn publish(&self, conns: &[Conn]) {
        self.inner.ready.send_replace(conns.len());
        self.inner.metrics.zds_connections.set(conns.len() as i64);
    }

    async fn check_liveness(&self) {
        let mut conns = self.inner.conns.lock().await;
        let before = conns.len();
        let mut alive = Vec::with_capacity(before);
        for conn in conns.drain(..) {
            match conn.probe().await {
                Ok(()) => alive.push(conn),
                Err(error) => tracing::info!(conn = conn.id, %error, "ztunnel gone"),
            }
        }
        *conns = alive;
        if conns.len() != before {
            self.publish(&conns);
        }
    }

    /// Hands a pod to the newest connected ztunnel and waits for its Ack,
    /// waiting for a ztunnel to connect if none is, all before `deadline`.
    pub async fn add(&self, pod: &ZdsPod, deadline: Instant) -> Result<(), ZdsServerError> {
        let started = Instant::now();
        let request = add_request(pod);
        let no_ztunnel = || ZdsServerError::NoZtunnel(started.elapsed());
        let mut closing = self.inner.closing.subscribe();
        loop {
            if *closing.borrow_and_update() {
                return Err(ZdsServerError::ShuttingDown);
            }
            {
                let mut conns = tokio::time::timeout_at(deadline, self.inner.conns.lock())
                    .await
                    .map_err(|_| no_ztunnel())?;
                while let Some(conn) = conns.last() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let timeout = left.min(self.inner.message_timeout);
                    match conn
                        .exchange(&request, Some(pod.netns.as_fd().as_raw_fd()), timeout)
                        .await
                    {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(message)) => {
                            return Err(ZdsServerError::Nack {
                                uid: pod.uid.clone(),
                                message,
                            });
                        }
                        Err(error) => {
                            tracing::warn!(conn = conn.id, %error, "dropping ztunnel connection");
                            conns.pop();
                            self.publish(&conns);
                            if matches!(error, ExchangeError::Timeout(_))
                                && Instant::now() >= deadline
                            {
                                return Err(no_ztunnel());
                            }
                        }
                    }
                }
            }
            let mut ready = self.inner.ready.subscribe();
            tokio::select! {
                waited = tokio::time::timeout_at(deadline, ready.wait_for(|n| *n > 0)) => {
                    waited.map_err(|_| no_ztunnel())?.map_err(|_| no_ztunnel())?;
                }
                _ = closing.wait_for(|c| *c) => return Err(ZdsServerError::ShuttingDown),
            }
        }
    }

    /// Like `add`, but only if a ztunnel is connected now: `Ok(false)` when
    /// none is (the pod will be in the next ztunnel's snapshot).
    pub async fn add_if_connected(&self, pod: &ZdsPod) -> Result<bool, ZdsServerError> {
        if self.connected() == 0 {
            return Ok(false);
        }
        match self
            .add(pod, Instant::now() + self.inner.message_timeout)
            .await
        {
            Ok(()) => Ok(true),
            Err(ZdsServerError::NoZtunnel(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tells every connected ztunnel to drop a pod; returns how many acked.
    pub async fn del(&self, uid: &str) -> usize {
        let request = WorkloadRequest {
            payload: Some(workload_request::Payload::Del(DelWorkload {
                uid: uid.to_string(),
            })),
        };
        let mut conns = self.inner.conns.lock().await;
        let before = conns.len();
        let mut kept = Vec::with_capacity(before);
        let mut acked = 0;
        for conn in conns.drain(..) {
            match conn
                .exchange(&request, None, self.inner.message_timeout)
                .await
            {
                Ok(Ok(())) => {
                    acked += 1;
                    kept.push(conn);
                }
                Ok(Err(message)) => {
                    tracing::warn!(conn = conn.id, %uid, %message, "ztunnel refused a removal");
                    kept.push(conn);
                }
                Err(error) => {
                    tracing::warn!(conn = conn.id, %error, "dropping ztunnel connection")
                }
            }
        }
        *conns = kept;
        if conns.len() != before {
            self.publish(&conns);
        }
        acked
    }
}

fn add_request(pod: &ZdsPod) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(WorkloadInfo {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
            }),
        })),
    }
}
