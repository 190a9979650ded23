//! The ZDS client (spec 5): connects to the node agent, says hello, and
//! answers each request once it is carried out. Reconnects with back-off
//! (10 ms doubling to 15 s) keeping the running pod proxies, which the next
//! snapshot reconciles. A protocol violation is NACKed and ends ztunnel with
//! status 1; on shutdown every pod drains within the deadline.

use std::path::PathBuf;
use std::time::Duration;

use mesh_api::istio::workload::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_response,
};
use mesh_core::drain::DrainWatcher;
use mesh_core::netns::Netns;
use mesh_core::xds::Backoff;
use mesh_core::zds::{ZdsError, ZdsSocket};

use super::pods::{Pods, RELEASE_DEADLINE, RETRY_PENDING};
use super::session::{Session, Step};
use crate::app::Shutdown;
use crate::metrics::Metrics;

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown started.
    Draining,
    /// Lost or unreadable: reconnect.
    Lost(ZdsError),
    /// The node agent broke the protocol: exit.
    Violation(String),
}

#[derive(Debug)]
pub struct ZdsClient {
    pub socket: PathBuf,
    pub pods: Pods,
    pub shutdown: Shutdown,
    pub metrics: std::sync::Arc<Metrics>,
    /// Shutdown's drain deadline, for the pods' connections.
    pub deadline: Duration,
}

impl ZdsClient {
    /// Runs until shutdown (or a protocol violation), then drains every pod.
    /// Holds `drain` until the pods are drained, so shutdown waits for them.
    pub async fn run(mut self, drain: DrainWatcher) {
        let mut backoff = Backoff::default();
        loop {
            let connected = tokio::select! {
                r = ZdsSocket::connect(&self.socket) => r,
                _ = drain.draining() => break,
            };
            let end = match connected {
                Ok(socket) => {
                    tracing::info!(socket = %self.socket.display(), "connected to the node agent");
                    self.metrics.zds_connected.set(1);
                    let end = self.serve(&socket, &drain, &mut backoff).await;
                    self.metrics.zds_connected.set(0);
                    end
                }
                Err(e) => Ended::Lost(e),
            };
            match end {
                Ended::Draining => break,
                Ended::Violation(reason) => {
                    tracing::error!(%reason, "ZDS protocol violation by the node agent; exiting");
                    self.shutdown
                        .fail(format!("ZDS protocol violation: {reason}"));
                    break;
                }
                Ended::Lost(error) => {
                    let delay = backoff.next_delay(rand::random());
                    tracing::warn!(%error, retry_in = ?delay, "no ZDS connection to the node agent; retrying (running pod proxies keep serving)");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = drain.draining() => break,
                    }
                }
            }
        }
        self.pods.drain_all(self.deadline).await;
        drop(drain);
    }

    async fn serve(
        &mut self,
        socket: &ZdsSocket,
        drain: &DrainWatcher,
        backoff: &mut Backoff,
    ) -> Ended {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        if let Err(e) = socket.send(&hello, None).await {
            return Ended::Lost(e);
        }
        let mut session = Session::default();
        let mut retry = tokio::time::interval(RETRY_PENDING);
        retry.tick().await;
        loop {
            let received = tokio::select! {
                r = socket.recv() => r,
                _ = retry.tick() => {
                    self.pods.retry_pending().await;
                    continue;
                }
                _ = drain.draining() => return Ended::Draining,
            };
            let datagram = match received {
                Ok(d) => d,
                Err(ZdsError::Closed) => return Ended::Lost(ZdsError::Closed),
                Err(e) => {
                    // Unreadable, but the peer is there: say why before leaving.
                    let _ = reply(socket, Some(e.to_string())).await;
                    return Ended::Lost(e);
                }
            };
            backoff.reset();
            let request: WorkloadRequest = match datagram.decode("WorkloadRequest") {
                Ok(r) => r,
                Err(e) => {
                    let _ = reply(socket, Some(e.to_string())).await;
                    return Ended::Lost(e);
                }
            };
            let netns = match datagram.fd.map(Netns::from_fd).transpose() {
                Ok(n) => n,
                Err(e) => {
                    let text = format!("the descriptor sent is not usable: {e}");
                    if let Err(e) = reply(socket, Some(text)).await {
                        return Ended::Lost(e);
                    }
                    continue;
                }
            };
            let step = session.step(request, netns.as_ref().map(Netns::id), |uid| {
                self.pods.running_netns(uid)
            });
            tracing::debug!(?step, "ZDS request");
            let error = match step {
                Step::Start { uid, info } | Step::Replace { uid, info } => match netns {
                    Some(netns) => {
                        // Replace: the old proxy goes first, so the new one can bind.
                        self.pods.remove(&uid);
                        self.pods.start(&uid, info, netns).await.err()
                    }
                    None => Some(format!("AddWorkload for {uid} without a netns")),
                },
                Step::Nothing => None,
                Step::Remove { uid } => {
                    self.pods.release(&uid, RELEASE_DEADLINE).await;
                    None
                }
                Step::Reconcile { keep } => {
                    self.pods.reconcile(&keep);
                    None
                }
                Step::Refuse(text) => Some(text),
                Step::Violation(text) => {
                    let _ = reply(socket, Some(text.clone())).await;
                    return Ended::Violation(text);
                }
            };
            if let Err(e) = reply(socket, error).await {
                return Ended::Lost(e);
            }
        }
    }
}

/// ACK (`None`) or NACK with the error text.
async fn reply(socket: &ZdsSocket, error: Option<String>) -> Result<(), ZdsError> {
    let mut error = error.unwrap_or_default();
    // A NACK must fit the peer's 1024-byte buffer.
    if error.len() > 900 {
        let mut cut = 900;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let response = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error })),
    };
    socket.send(&response, None).await
}
