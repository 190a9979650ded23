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

/// One access-log line per connection.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub labels: &'a TrafficLabels,
    pub started: Instant,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub outcome: &'a str,
}

impl AccessLog<'_> {
    pub fn emit(&self) {
        let l = self.labels;
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
            bytes_sent = self.bytes_sent,
            bytes_recv = self.bytes_received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = self.outcome,
            "connection complete"
        );
    }
}
