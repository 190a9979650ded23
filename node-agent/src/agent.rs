//! The node agent's operations on pods: CNI ADD/DEL/CHECK, enrolment and
//! removal when labels change, and reconciliation after a restart. Decisions
//! come from `enrolment::decide`; this module carries them out (rules via
//! `redirect`, ztunnel via `zds`, records via `pods::record`), one operation
//! per pod at a time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use mesh_core::netns::Netns;
use mesh_registry::Registry;
use mesh_registry::model::{NamespacedName, Store};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cni::{AgentReply, AgentRequest, Command, code};
use crate::enrolment::{Decision, bypasses_inbound, decide_known};
use crate::metrics::Metrics;
use crate::pods::{PodEntry, PodRecord, PodTable, RecordStore};
use crate::redirect::Family;
use crate::redirect::apply::Redirector;
use crate::zds::{MESSAGE_TIMEOUT, SnapshotFn, ZdsPod, ZdsServer, ZdsServerError};

/// Time kept back from the plugin's timeout so the agent can undo a failed
/// ADD and answer before the plugin gives up.
const ADD_MARGIN: Duration = Duration::from_millis(500);

/// What the agent is configured with.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// Longest an ADD waits for a ztunnel and its Ack.
    pub ack_timeout: Duration,
    pub redirector: Redirector,
    /// Per-message ZDS deadline.
    pub message_timeout: Duration,
}

impl AgentOptions {
    pub fn new(node: impl Into<String>) -> AgentOptions {
        AgentOptions {
            node: node.into(),
            ack_timeout: Duration::from_secs(10),
            redirector: Redirector::default(),
            message_timeout: MESSAGE_TIMEOUT,
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

    fn set_error(&self, uid: &str, error: Option<String>) {
        if let Some(entry) = lock(&self.inner.pods).get_mut(uid) {
            entry.last_error = error;
        }
    }

    /// Answers one CNI plugin request.
    pub async fn handle_cni(&self, request: AgentRequest) -> AgentReply {
        let command = request.command;
        let reply = match command {
            Command::Add => self.cni_add(request).await,
            Command::Del => self.cni_del(request).await,
            Command::Check => self.cni_check(request).await,
        };
        self.inner
            .metrics
            .cni(command.as_str(), if reply.ok { "ok" } else { "failed" });
        reply
    }

    async fn cni_add(&self, req: AgentRequest) -> AgentReply {
        let budget = Duration::from_millis(req.timeout_ms).saturating_sub(ADD_MARGIN);
        let deadline = Instant::now() + budget.min(self.inner.options.ack_timeout);
        let pod_name = format!("{}/{}", req.pod_namespace, req.pod_name);
        let netns_path = PathBuf::from(&req.netns);
        let netns = match Netns::open(&netns_path) {
            Ok(netns) => Arc::new(netns),
            Err(e) => {
                self.inner.metrics.operation("enrol", Err("netns"));
                return AgentReply::error(code::ENROLMENT_FAILED, format!("pod {pod_name}: {e}"));
            }
        };
        let store = self.inner.registry.snapshot();
        let (pod, _) = lookup(&store, &req.pod_namespace, &req.pod_name);
        let uid = [
            req.pod_uid.clone(),
            pod.and_then(|p| p.metadata.uid.clone()).unwrap_or_default(),
            req.container_id.clone(),
        ]
        .into_iter()
        .find(|u| !u.is_empty())
        .unwrap_or_default();
        let _guard = self.lock_pod(&uid).await;
        let (pod, _) = lookup_uid(&store, &req.pod_namespace, &req.pod_name, &uid);
        let id = netns.id();
        let mut record = PodRecord {
            uid: uid.clone(),
            namespace: req.pod_namespace.clone(),
            name: req.pod_name.clone(),
            container_id: req.container_id.clone(),
            netns_path: netns_path.clone(),
            netns_dev: id.dev,
            netns_ino: id.ino,
            ips: req.ips.clone(),
            service_account: service_account(pod),
            enrolled: false,
            seen_in_registry: pod.is_some(),
        };
        let (decision, bypass) = self.decision(&store, &record);
        record.enrolled = decision.enrolled();
        let entry = PodEntry {
            record: record.clone(),
            netns: netns.clone(),
            last_error: None,
        };
        // A retried ADD, or a new sandbox of the same pod: the new netns wins.
        let previous = lock(&self.inner.pods).insert(uid.clone(), entry);
        if let Some(old) = previous
            && old.netns.id() != id
            && old.record.enrolled
        {
            let path = old.netns_path();
            if let Err(error) = self.inner.options.redirector.remove(&path).await {
                tracing::warn!(%error, pod = %pod_name, "removing rules from the pod's previous netns");
            }
        }
        self.write_record(&record);
        if !decision.enrolled() {
            tracing::info!(pod = %pod_name, %uid, ?decision, "pod not enrolled");
            return AgentReply::ok();
        }
        let held = crate::pods::held_netns_path(&netns);
        let families = families(&req.ips);
        if let Err(error) = self
            .inner
            .options
            .redirector
            .install(&held, &families, bypass)
            .await
        {
            self.undo_add(&uid, &held).await;
            self.inner.metrics.operation("enrol", Err("rules"));
            return AgentReply::error(
                code::ENROLMENT_FAILED,
                format!("pod {pod_name}: installing redirection rules: {error}"),
            );
        }
        let zds_pod = zds_pod(
            &PodEntry {
                record,
                netns,
                last_error: None,
            },
            &store,
        );
        match self.inner.zds.add(&zds_pod, deadline).await {
            Ok(()) => {
                self.inner.metrics.operation("enrol", Ok(()));
                self.update_gauge();
                tracing::info!(pod = %pod_name, %uid, "pod enrolled");
                AgentReply::ok()
            }
            Err(error) => {
                self.undo_add(&uid, &held).await;
                self.inner.metrics.operation("enrol", Err(error.reason()));
                let code = match error {
                    ZdsServerError::NoZtunnel(_) => code::TRY_AGAIN_LATER,
                    ZdsServerError::Nack { .. } => code::ENROLMENT_FAILED,
                };
                AgentReply::error(code, format!("pod {pod_name}: {error}"))
            }
        }
    }

    /// Leaves nothing of a failed ADD: no rules, no ztunnel proxy, no record.
    async fn undo_add(&self, uid: &str, held: &std::path::Path) {
        if let Err(error) = self.inner.options.redirector.remove(held).await {
            tracing::error!(%error, %uid, "removing the rules of a failed ADD");
        }
        self.inner.zds.del(uid).await;
        lock(&self.inner.pods).remove(uid);
        if let Err(error) = self.inner.records.remove(uid) {
            tracing::warn!(%error, "removing the record of a failed ADD");
        }
    }

    fn find_uid(&self, req: &AgentRequest) -> Option<String> {
        let pods = lock(&self.inner.pods);
        if !req.pod_uid.is_empty() && pods.contains_key(&req.pod_uid) {
            return Some(req.pod_uid.clone());
        }
        pods.values()
            .find(|e| {
                (!req.container_id.is_empty() && e.record.container_id == req.container_id)
                    || (e.record.namespace == req.pod_namespace && e.record.name == req.pod_name)
            })
            .map(|e| e.record.uid.clone())
    }

    async fn cni_del(&self, req: AgentRequest) -> AgentReply {
        let Some(uid) = self.find_uid(&req) else {
            return AgentReply::ok();
        };
        self.forget(&uid).await;
        AgentReply::ok()
    }

    /// Takes a pod out of the mesh and out of memory and disk.
    async fn forget(&self, uid: &str) {
        let guard = self.lock_pod(uid).await;
        let Some((enrolled, held)) = lock(&self.inner.pods)
            .get(uid)
            .map(|e| (e.record.enrolled, e.netns_path()))
        else {
            return;
        };
        if enrolled {
            self.inner.zds.del(uid).await;
        }
        // The netns is usually about to vanish; rules go with it, so a
        // failure here is only logged.
        if let Err(error) = self.inner.options.redirector.remove(&held).await {
            tracing::warn!(%error, %uid, "removing rules of a deleted pod");
        }
        lock(&self.inner.pods).remove(uid);
        if let Err(error) = self.inner.records.remove(uid) {
            tracing::warn!(%error, "removing a pod record");
        }
        if enrolled {
            self.inner.metrics.operation("unenrol", Ok(()));
        }
        self.update_gauge();
        drop(guard);
        self.forget_lock(uid);
        tracing::info!(%uid, "pod removed");
    }

    async fn cni_check(&self, req: AgentRequest) -> AgentReply {
        let store = self.inner.registry.snapshot();
        let pod_name = format!("{}/{}", req.pod_namespace, req.pod_name);
        let Some(uid) = self.find_uid(&req) else {
            let (pod, ns) = lookup(&store, &req.pod_namespace, &req.pod_name);
            let decision = decide_known(pod, false, ns, &self.inner.options.node);
            return if decision.enrolled() {
                AgentReply::error(
                    code::CHECK_FAILED,
                    format!(
                        "pod {pod_name} should be enrolled but the node agent does not know it"
                    ),
                )
            } else {
                AgentReply::ok()
            };
        };
        let _guard = self.lock_pod(&uid).await;
        let Some((record, held)) = lock(&self.inner.pods)
            .get(&uid)
            .map(|e| (e.record.clone(), e.netns_path()))
        else {
            return AgentReply::ok();
        };
        let (_, bypass) = self.decision(&store, &record);
        let (enrolled, ips) = (record.enrolled, record.ips);
        if !enrolled {
            return AgentReply::ok();
        }
        match self
            .inner
            .options
            .redirector
            .is_installed(&held, &families(&ips), bypass)
            .await
        {
            Ok(true) => AgentReply::ok(),
            Ok(false) => AgentReply::error(
                code::CHECK_FAILED,
                format!(
                    "pod {pod_name}: the redirection rules in its netns are missing or changed"
                ),
            ),
            Err(error) => AgentReply::error(
                code::CHECK_FAILED,
                format!("pod {pod_name}: cannot read its rules: {error}"),
            ),
        }
    }

    /// Reads the records of an earlier run: pods whose netns is gone (or is
    /// now another namespace) are dropped, the rest are known again with
    /// their netns open. Returns how many were restored.
    pub fn restore(&self) -> usize {
        let (records, errors) = self.inner.records.load_all();
        for error in errors {
            tracing::warn!(%error, "skipping an unreadable pod record");
        }
        let mut restored = 0;
        for record in records {
            let netns = match Netns::open(&record.netns_path) {
                Ok(netns)
                    if netns.id().dev == record.netns_dev && netns.id().ino == record.netns_ino =>
                {
                    netns
                }
                outcome => {
                    let why = match outcome {
                        Ok(_) => "its netns path now names another namespace".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::info!(uid = %record.uid, pod = %format!("{}/{}", record.namespace, record.name), %why, "dropping the record of a pod that is gone");
                    if let Err(error) = self.inner.records.remove(&record.uid) {
                        tracing::warn!(%error, "removing a stale pod record");
                    }
                    continue;
                }
            };
            lock(&self.inner.pods).insert(
                record.uid.clone(),
                PodEntry {
                    record,
                    netns: Arc::new(netns),
                    last_error: None,
                },
            );
            restored += 1;
        }
        self.update_gauge();
        restored
    }

    /// Brings every known pod to what the registry asks for. With `force`,
    /// rules are re-applied (or removed) even where the record says they
    /// already are: the start-up pass after a restart.
    pub async fn reconcile_all(&self, force: bool) {
        let uids: Vec<String> = lock(&self.inner.pods).keys().cloned().collect();
        futures::future::join_all(uids.iter().map(|uid| self.reconcile_pod(uid, force))).await;
    }

    /// `reconcile_all(false)` for pods whose enrolment is out of date, each
    /// in its own task, so a slow pod does not hold up the others.
    pub fn reconcile_changed(&self) {
        let store = self.inner.registry.snapshot();
        let mut newly_seen = Vec::new();
        let stale: Vec<String> = {
            let mut pods = lock(&self.inner.pods);
            for entry in pods.values_mut() {
                let r = &mut entry.record;
                if !r.seen_in_registry
                    && lookup_uid(&store, &r.namespace, &r.name, &r.uid)
                        .0
                        .is_some()
                {
                    r.seen_in_registry = true;
                    newly_seen.push(r.clone());
                }
            }
            pods.values()
                .filter(|e| {
                    !e.record.netns_path.exists()
                        || self.decision(&store, &e.record).0.enrolled() != e.record.enrolled
                        || e.last_error.is_some()
                })
                .map(|e| e.record.uid.clone())
                .collect()
        };
        for record in &newly_seen {
            self.write_record(record);
        }
        let mut tasks = lock(&self.inner.tasks);
        while tasks.try_join_next().is_some() {}
        for uid in stale {
            let agent = self.clone();
            tasks.spawn(async move { agent.reconcile_pod(&uid, false).await });
        }
    }

    /// Acts until the pod matches the registry: labels that change while an
    /// operation runs are seen by the next round, not left for the resync.
    async fn reconcile_pod(&self, uid: &str, force: bool) {
        let mut force = force;
        // Bounded, so labels flapping faster than the rules can be applied
        // do not hold one task forever; the resync picks up the rest.
        for _ in 0..4 {
            if !self.reconcile_pod_once(uid, force).await {
                return;
            }
            force = false;
        }
    }

    /// One step; whether it changed the pod's enrolment.
    async fn reconcile_pod_once(&self, uid: &str, force: bool) -> bool {
        let guard = self.lock_pod(uid).await;
        let Some((record, held, netns)) = lock(&self.inner.pods)
            .get(uid)
            .map(|e| (e.record.clone(), e.netns_path(), e.netns.clone()))
        else {
            return false;
        };
        if !record.netns_path.exists() {
            drop(guard);
            self.forget(uid).await;
            return false;
        }
        let store = self.inner.registry.snapshot();
        let (decision, bypass) = self.decision(&store, &record);
        let redirector = &self.inner.options.redirector;
        let pod_name = format!("{}/{}", record.namespace, record.name);
        let record_was_enrolled = record.enrolled;
        if decision.enrolled() && (force || !record.enrolled) {
            if let Err(error) = redirector
                .install(&held, &families(&record.ips), bypass)
                .await
            {
                tracing::warn!(%error, pod = %pod_name, "enrolment failed; retrying later");
                self.inner.metrics.operation("enrol", Err("rules"));
                self.set_error(uid, Some(error.to_string()));
                return false;
            }
            let mut record = record.clone();
            record.enrolled = true;
            record.service_account =
                service_account(lookup_uid(&store, &record.namespace, &record.name, uid).0);
            let entry = PodEntry {
                record: record.clone(),
                netns,
                last_error: None,
            };
            let zds_pod = zds_pod(&entry, &store);
            if let Some(e) = lock(&self.inner.pods).get_mut(uid) {
                *e = entry;
            }
            self.write_record(&record);
            match self.inner.zds.add_if_connected(&zds_pod).await {
                Ok(_) => self.inner.metrics.operation("enrol", Ok(())),
                // ztunnel keeps a refused pod pending and retries it.
                Err(error) => {
                    tracing::warn!(%error, pod = %pod_name, "ztunnel refused the pod");
                    self.inner.metrics.operation("enrol", Err(error.reason()));
                    self.set_error(uid, Some(error.to_string()));
                }
            }
            tracing::info!(pod = %pod_name, %uid, "pod enrolled");
            self.update_gauge();
            return !record_was_enrolled;
        } else if !decision.enrolled() && (force || record.enrolled) {
            if record.enrolled {
                self.inner.zds.del(uid).await;
            }
            if let Err(error) = redirector.remove(&held).await {
                tracing::warn!(%error, pod = %pod_name, "removing rules failed; retrying later");
                self.inner.metrics.operation("unenrol", Err("rules"));
                self.set_error(uid, Some(error.to_string()));
                return false;
            }
            let mut record = record;
            let changed = record.enrolled;
            record.enrolled = false;
            if let Some(e) = lock(&self.inner.pods).get_mut(uid) {
                e.record = record.clone();
                e.last_error = None;
            }
            self.write_record(&record);
            if changed {
                self.inner.metrics.operation("unenrol", Ok(()));
                tracing::info!(pod = %pod_name, %uid, ?decision, "pod removed from the mesh");
            }
            self.update_gauge();
            return changed;
        }
        self.set_error(uid, None);
        false
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
