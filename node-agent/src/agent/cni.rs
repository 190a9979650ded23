//! The CNI plugin's requests: ADD (enrol a new pod, or fail leaving
//! nothing), DEL (forget a pod) and CHECK (its rules still in place).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::netns::Netns;
use tokio::time::Instant;

use super::{Agent, families, lock, lookup, lookup_uid, service_account, zds_pod};
use crate::cni::{AgentReply, AgentRequest, Command, code};
use crate::enrolment::decide_known;
use crate::pods::{PodEntry, PodRecord};
use crate::zds::ZdsServerError;

/// Time kept back from the plugin's timeout so the agent can undo a failed
/// ADD and answer before the plugin gives up.
const ADD_MARGIN: Duration = Duration::from_millis(500);

impl Agent {
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
                // Before the answer: the kubelet probes once the ADD is done.
                self.sync_probe_snat().await;
                tracing::info!(pod = %pod_name, %uid, "pod enrolled");
                AgentReply::ok()
            }
            Err(error) => {
                self.undo_add(&uid, &held).await;
                self.inner.metrics.operation("enrol", Err(error.reason()));
                let code = match error {
                    ZdsServerError::NoZtunnel(_) | ZdsServerError::ShuttingDown => {
                        code::TRY_AGAIN_LATER
                    }
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
        self.sync_probe_snat().await;
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
    pub(super) async fn forget(&self, uid: &str) {
        let guard = self.lock_pod(uid).await;
        let Some((enrolled, held)) = lock(&self.inner.pods)
            .get(uid)
            .map(|e| (e.record.enrolled, e.netns_path()))
        else {
            return;
        };
        self.set_enrolled(uid, false);
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
        self.sync_probe_snat().await;
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
}
