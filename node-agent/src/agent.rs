//! The node agent's operations on pods: CNI ADD/DEL/CHECK (`cni`), enrolment
//! and removal when labels change and reconciliation after a restart
//! (`reconcile`). Decisions come from `enrolment`; this module carries them
//! out (rules via `redirect`, ztunnel via `zds`, records via `pods::record`),
//! one operation per pod at a time, and holds the shared state they use.

mod cni;
mod reconcile;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use mesh_registry::Registry;
use mesh_registry::model::{NamespacedName, Store};
use serde_json::json;
use tokio::task::JoinSet;

use crate::enrolment::{Decision, bypasses_inbound, decide_known};
use crate::metrics::Metrics;
use crate::pods::{PodEntry, PodRecord, PodTable, RecordStore};
use crate::redirect::Family;
use crate::redirect::apply::Redirector;
use crate::zds::{MESSAGE_TIMEOUT, SnapshotFn, ZdsPod, ZdsServer};

/// What the agent is configured with.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// Longest an ADD waits for a ztunnel and its Ack.
    pub ack_timeout: Duration,
    pub redirector: Redirector,
    /// Per-message ZDS deadline.
    pub message_timeout: Duration,
    /// Rewrite kubelet probes to enrolled pods in this process's netns (spec 6.2).
    pub probe_snat: bool,
}

impl AgentOptions {
    pub fn new(node: impl Into<String>) -> AgentOptions {
        AgentOptions {
            node: node.into(),
            ack_timeout: Duration::from_secs(10),
            redirector: Redirector::default(),
            message_timeout: MESSAGE_TIMEOUT,
            probe_snat: false,
        }
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    options: AgentOptions,
    registry: Registry,
    pods: Arc<Mutex<PodTable>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    records: RecordStore,
    zds: ZdsServer,
    metrics: Metrics,
    tasks: Mutex<JoinSet<()>>,
    /// One probe SNAT update at a time, so the last one written is the
    /// latest set.
    probe_snat: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.inner.options.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks completes before it could panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    pub fn new(
        options: AgentOptions,
        registry: Registry,
        records: RecordStore,
        metrics: Metrics,
    ) -> Agent {
        let pods: Arc<Mutex<PodTable>> = Arc::default();
        let snapshot: SnapshotFn = {
            let pods = pods.clone();
            let registry = registry.clone();
            Arc::new(move || {
                let store = registry.snapshot();
                lock(&pods)
                    .values()
                    .filter(|e| e.record.enrolled)
                    .map(|e| zds_pod(e, &store))
                    .collect()
            })
        };
        let zds = ZdsServer::new(snapshot, options.message_timeout, metrics.clone());
        Agent {
            inner: Arc::new(Inner {
                options,
                registry,
                pods,
                locks: Mutex::default(),
                records,
                zds,
                metrics,
                tasks: Mutex::new(JoinSet::new()),
                probe_snat: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn zds(&self) -> &ZdsServer {
        &self.inner.zds
    }

    async fn lock_pod(&self, uid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = lock(&self.inner.locks)
            .entry(uid.to_string())
            .or_default()
            .clone();
        mutex.lock_owned().await
    }

    fn forget_lock(&self, uid: &str) {
        let mut locks = lock(&self.inner.locks);
        // Only when nobody else waits on it.
        if locks.get(uid).is_some_and(|m| Arc::strong_count(m) == 1) {
            locks.remove(uid);
        }
    }

    /// The decision for a known pod, and whether it bypasses inbound capture.
    fn decision(&self, store: &Store, record: &PodRecord) -> (Decision, bool) {
        let (pod, ns) = lookup_uid(store, &record.namespace, &record.name, &record.uid);
        (
            decide_known(pod, record.seen_in_registry, ns, &self.inner.options.node),
            bypasses_inbound(pod),
        )
    }

    fn update_gauge(&self) {
        let enrolled = lock(&self.inner.pods)
            .values()
            .filter(|e| e.record.enrolled)
            .count();
        self.inner.metrics.pods_enrolled.set(enrolled as i64);
    }

    fn write_record(&self, record: &PodRecord) {
        if let Err(error) = self.inner.records.write(record) {
            tracing::error!(%error, "cannot write the pod record; a restart may not reconcile this pod");
        }
    }

    /// Brings the node's probe SNAT rules to the enrolled pods' addresses
    /// (with `--probe-snat`).
    pub async fn sync_probe_snat(&self) {
        if !self.inner.options.probe_snat {
            return;
        }
        let _one_at_a_time = self.inner.probe_snat.lock().await;
        let addresses: std::collections::BTreeSet<IpAddr> = lock(&self.inner.pods)
            .values()
            .filter(|e| e.record.enrolled)
            .flat_map(|e| e.record.ips.iter().copied())
            .collect();
        if let Err(error) = self
            .inner
            .options
            .redirector
            .sync_probe_snat(&addresses)
            .await
        {
            tracing::warn!(%error, "updating the kubelet probe SNAT rules");
        }
    }

    fn set_enrolled(&self, uid: &str, enrolled: bool) {
        if let Some(entry) = lock(&self.inner.pods).get_mut(uid) {
            entry.record.enrolled = enrolled;
        }
    }

    fn set_error(&self, uid: &str, error: Option<String>) {
        if let Some(entry) = lock(&self.inner.pods).get_mut(uid) {
            entry.last_error = error;
        }
    }

    /// Stops the per-pod tasks.
    pub async fn stop(&self) {
        let mut tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        tasks.shutdown().await;
    }

    /// `/debug/pods`.
    pub fn debug_pods(&self) -> serde_json::Value {
        let store = self.inner.registry.snapshot();
        let pods = lock(&self.inner.pods);
        let list: Vec<_> = pods
            .values()
            .map(|e| {
                let r = &e.record;
                let (decision, _) = self.decision(&store, r);
                json!({
                    "uid": r.uid,
                    "namespace": r.namespace,
                    "name": r.name,
                    "containerId": r.container_id,
                    "netns": r.netns_path,
                    "netnsInode": r.netns_ino,
                    "ips": r.ips,
                    "serviceAccount": r.service_account,
                    "enrolled": r.enrolled,
                    "seenInRegistry": r.seen_in_registry,
                    "decision": match decision {
                        Decision::Enrol => "enrol".to_string(),
                        Decision::Skip(reason) => format!("skip: {}", reason.as_str()),
                    },
                    "lastError": e.last_error,
                })
            })
            .collect();
        json!({"node": self.inner.options.node, "ztunnels": self.inner.zds.connected(), "pods": list})
    }
}

fn lookup<'a>(
    store: &'a Store,
    namespace: &str,
    name: &str,
) -> (Option<&'a Pod>, Option<&'a Namespace>) {
    (
        store
            .pods
            .get(&NamespacedName::new(namespace, name))
            .map(|p| &**p),
        store
            .namespaces
            .get(&NamespacedName::cluster(namespace))
            .map(|n| &**n),
    )
}

/// `lookup`, but a registry pod with another uid is another pod (one
/// recreated under the same name) and does not count.
fn lookup_uid<'a>(
    store: &'a Store,
    namespace: &str,
    name: &str,
    uid: &str,
) -> (Option<&'a Pod>, Option<&'a Namespace>) {
    let (pod, ns) = lookup(store, namespace, name);
    let pod = pod.filter(|p| {
        p.metadata
            .uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || u == uid)
    });
    (pod, ns)
}

fn service_account(pod: Option<&Pod>) -> String {
    pod.and_then(|p| p.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn zds_pod(entry: &PodEntry, store: &Store) -> ZdsPod {
    let r = &entry.record;
    let (pod, _) = lookup_uid(store, &r.namespace, &r.name, &r.uid);
    ZdsPod {
        uid: r.uid.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        service_account: if pod.is_some() {
            service_account(pod)
        } else if r.service_account.is_empty() {
            "default".to_string()
        } else {
            r.service_account.clone()
        },
        netns: entry.netns.clone(),
    }
}

/// IPv4 always (a pod without addresses in `prevResult` still gets them);
/// IPv6 when the pod has a v6 address.
fn families(ips: &[IpAddr]) -> Vec<Family> {
    let mut families = vec![Family::V4];
    if ips.iter().any(IpAddr::is_ipv6) {
        families.push(Family::V6);
    }
    families
}
