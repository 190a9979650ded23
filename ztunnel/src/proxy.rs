//! The data path: outbound capture (15001), HBONE inbound (15008) and
//! plaintext inbound (15006). Decisions come from `route` and `authz`; this
//! module carries them out, counts and logs.

pub mod inbound;
pub mod outbound;
pub mod plain;
pub mod plaintext;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::Pool;
use mesh_core::tls::CertStore;
use tokio::net::TcpListener;

use crate::config::WorkloadRef;
use crate::metrics::{Metrics, TrafficLabels};
use crate::state::{StateStore, WorkloadEntry};

/// Everything the proxies share.
#[derive(Debug)]
pub struct Proxy {
    pub state: Arc<StateStore>,
    pub certs: Arc<CertStore>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// The workload this (dedicated) ztunnel serves.
    pub local: WorkloadRef,
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
}

impl Proxy {
    /// The local workload in the current state.
    pub fn local_workload(&self) -> Option<Arc<WorkloadEntry>> {
        self.state
            .load()
            .workload_named(&self.local.namespace, &self.local.name)
            .cloned()
    }
}

/// Runs an accept loop until drain starts; each connection gets a drain watcher.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    drain: DrainWatcher,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, DrainWatcher) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain.draining() => {
                tracing::info!(listener = name, "stopped accepting");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                crate::capture::tune(&stream);
                tokio::spawn(handle(
                    stream,
                    crate::capture::canonical(peer),
                    drain.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
        }
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
