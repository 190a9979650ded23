//! The pods this ztunnel serves: running proxies, pods whose proxy failed to
//! start (pending, retried every 5 s), readiness, and the view shown at
//! `/config_dump`. Owned by the ZDS client task, which is the only writer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::istio::workload::zds::WorkloadInfo;
use mesh_core::netns::{Netns, NetnsId};
use mesh_core::readiness::{BlockReady, Readiness};
use serde::Serialize;

use super::pod::{self, PodContext, RunningPod};

/// How often pods whose proxy failed to start are tried again (spec 5).
pub const RETRY_PENDING: Duration = Duration::from_secs(5);

/// How long a pod leaving the mesh (ZDS Del) has to finish the connections
/// its proxy holds before they are reset. Short: the node agent waits for
/// the Ack (within its 5 s message deadline) before it removes the pod's
/// rules; long enough for calls in flight, which take milliseconds.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(1);

const NOT_SYNCED: &str = "ZDS snapshot";
const PODS_PENDING: &str = "pods pending";

/// One served pod as `/config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub identity: String,
    pub netns: String,
    /// `Up` or `Pending`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A read-only view of the served pods, shared with the admin server.
#[derive(Debug, Clone, Default)]
pub struct PodsView(Arc<Mutex<BTreeMap<String, PodStatus>>>);

impl PodsView {
    pub fn list(&self) -> Vec<PodStatus> {
        lock(&self.0).values().cloned().collect()
    }
}

#[derive(Debug)]
struct PendingPod {
    info: WorkloadInfo,
    netns: Netns,
}

#[derive(Debug)]
pub struct Pods {
    ctx: Arc<PodContext>,
    running: HashMap<String, RunningPod>,
    pending: HashMap<String, PendingPod>,
    view: PodsView,
    readiness: Readiness,
    /// Held while not ready: before the first snapshot, or with pods pending;
    /// with the reason it was registered under.
    block: Option<(BlockReady, &'static str)>,
    synced: bool,
    /// Drains of removed pods, still closing their connections.
    stopping: tokio::task::JoinSet<()>,
}

impl Pods {
    pub fn new(ctx: Arc<PodContext>, readiness: Readiness) -> Self {
        let block = Some((readiness.register(NOT_SYNCED), NOT_SYNCED));
        Pods {
            ctx,
            running: HashMap::new(),
            pending: HashMap::new(),
            view: PodsView::default(),
            readiness,
            block,
            synced: false,
            stopping: tokio::task::JoinSet::new(),
        }
    }

    pub fn view(&self) -> PodsView {
        self.view.clone()
    }

    /// The netns of the running proxy of `uid`. A pending pod has none: an
    /// Add for it is a fresh attempt, answered by how that goes.
    pub fn running_netns(&self, uid: &str) -> Option<NetnsId> {
        self.running.get(uid).map(|p| p.netns)
    }

    /// Starts a pod's proxy; on failure the pod stays pending and the error
    /// text is returned for the NACK.
    pub async fn start(
        &mut self,
        uid: &str,
        info: WorkloadInfo,
        netns: Netns,
    ) -> Result<(), String> {
        self.pending.remove(uid);
        match pod::start(&self.ctx, uid, &info, &netns).await {
            Ok(running) => {
                self.ctx.metrics.pods_started.inc();
                self.show(uid, &info, running.netns, None);
                self.running.insert(uid.to_string(), running);
                self.publish();
                Ok(())
            }
            Err(error) => {
                let text = error.to_string();
                tracing::warn!(%uid, error = %text, "pod proxy failed to start; retrying every 5s");
                self.show(uid, &info, netns.id(), Some(text.clone()));
                self.pending
                    .insert(uid.to_string(), PendingPod { info, netns });
                self.publish();
                Err(text)
            }
        }
    }

    /// Stops a pod's proxy at once: listeners closed, connections reset.
    pub fn remove(&mut self, uid: &str) {
        if let Some(pod) = self.take(uid) {
            self.stopping.spawn(async move {
                pod.drain(Duration::ZERO).await;
            });
        }
    }

    /// Takes a pod out of the mesh at the node agent's request (ZDS Del):
    /// its listeners stop, the connections they had queued and those already
    /// open are served for up to `deadline`, then whatever is left is reset.
    /// Returns once the proxy has let go of all of them, so the agent's Ack
    /// means "nothing of the pod is open any more": the agent has stopped
    /// redirecting the pod's new connections and removes the rest of its
    /// rules only then (docs/node-agent.md, "Leaving the mesh").
    pub async fn release(&mut self, uid: &str, deadline: Duration) {
        if let Some(pod) = self.take(uid) {
            let outcome = pod.drain(deadline).await;
            tracing::info!(%uid, ?outcome, "pod proxy closed");
        }
    }

    /// Out of the running and pending sets, the view and the metrics.
    fn take(&mut self, uid: &str) -> Option<RunningPod> {
        let running = self.running.remove(uid);
        if let Some(pod) = &running {
            tracing::info!(%uid, pod = %pod::pod_name(&pod.info), "pod removed; closing its proxy");
            self.ctx.metrics.pods_stopped.inc();
            self.forget_unused(&pod.identity);
        }
        self.pending.remove(uid);
        lock(&self.view.0).remove(uid);
        self.publish();
        running
    }

    /// After a snapshot: every pod it did not name goes.
    pub fn reconcile(&mut self, keep: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .running
            .keys()
            .chain(self.pending.keys())
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
        self.synced = true;
        self.publish();
    }

    /// Tries the pending pods again.
    pub async fn retry_pending(&mut self) {
        let uids: Vec<String> = self.pending.keys().cloned().collect();
        for uid in uids {
            if let Some(p) = self.pending.remove(&uid) {
                let _ = self.start(&uid, p.info, p.netns).await;
            }
        }
        while self.stopping.try_join_next().is_some() {}
    }

    /// Drains every pod within `deadline` (shutdown).
    pub async fn drain_all(&mut self, deadline: Duration) {
        let drains: Vec<_> = self
            .running
            .drain()
            .map(|(_, pod)| pod.drain(deadline))
            .collect();
        futures::future::join_all(drains).await;
        while self.stopping.join_next().await.is_some() {}
        lock(&self.view.0).clear();
        self.publish();
    }

    fn show(&self, uid: &str, info: &WorkloadInfo, netns: NetnsId, error: Option<String>) {
        let identity = pod::identity_of(&self.ctx, info)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let status = PodStatus {
            uid: uid.to_string(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            service_account: info.service_account.clone(),
            identity,
            netns: netns.to_string(),
            state: if error.is_some() { "Pending" } else { "Up" },
            error,
        };
        lock(&self.view.0).insert(uid.to_string(), status);
    }

    /// Metrics and readiness from the current sets.
    fn publish(&mut self) {
        let m = &self.ctx.metrics;
        m.pods_active.set(self.running.len() as i64);
        m.pods_pending.set(self.pending.len() as i64);
        let reason = if !self.synced {
            Some(NOT_SYNCED)
        } else if !self.pending.is_empty() {
            Some(PODS_PENDING)
        } else {
            None
        };
        if self.block.as_ref().map(|(_, r)| *r) != reason {
            self.block = reason.map(|r| (self.readiness.register(r), r));
        }
    }

    /// Certificates are kept only for identities some pod still uses.
    fn forget_unused(&self, identity: &mesh_core::Identity) {
        let used = self.running.values().any(|p| &p.identity == identity)
            || self
                .pending
                .values()
                .any(|p| pod::identity_of(&self.ctx, &p.info).ok().as_ref() == Some(identity));
        if !used {
            self.ctx.certs.forget(identity);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The view holds plain data; a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
