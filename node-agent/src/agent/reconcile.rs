//! Bringing known pods to what the registry asks for: after a restart (from
//! the records on disk), on every registry change, and on a periodic resync.

use std::sync::Arc;

use mesh_core::netns::Netns;

use super::{Agent, families, lock, lookup_uid, service_account, zds_pod};
use crate::pods::PodEntry;

impl Agent {
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
            // ztunnel first: the running app's connections are redirected
            // only once the pod's listeners are there to take them (the other
            // order refuses its connections until ztunnel's Ack).
            let added = self.inner.zds.add_if_connected(&zds_pod).await;
            if let Err(error) = redirector
                .install(&held, &families(&record.ips), bypass)
                .await
            {
                tracing::warn!(%error, pod = %pod_name, "enrolment failed; retrying later");
                self.inner.metrics.operation("enrol", Err("rules"));
                if !record_was_enrolled {
                    self.set_enrolled(uid, false);
                    self.inner.zds.del(uid).await;
                }
                self.set_error(uid, Some(error.to_string()));
                return false;
            }
            self.write_record(&record);
            match added {
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
            self.sync_probe_snat().await;
            return !record_was_enrolled;
        } else if !decision.enrolled() && (force || record.enrolled) {
            // Out of the table's enrolled set first, so a ztunnel connecting
            // meanwhile is not offered the pod in its snapshot.
            self.set_enrolled(uid, false);
            // Three steps (docs/node-agent.md, "Leaving the mesh"): new
            // connections stop being redirected, so they go direct rather
            // than to listeners being closed; ztunnel finishes or resets the
            // connections it has while their address translation still
            // holds; only then the rest of the rules go, which ends that
            // translation.
            let removed = async {
                if record.enrolled {
                    redirector.stop_redirecting(&held).await?;
                    self.inner.zds.del(uid).await;
                }
                redirector.remove(&held).await
            };
            if let Err(error) = removed.await {
                tracing::warn!(%error, pod = %pod_name, "removing rules failed; retrying later");
                self.inner.metrics.operation("unenrol", Err("rules"));
                // Still counted as enrolled, so the resync tries again.
                self.set_enrolled(uid, true);
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
            self.sync_probe_snat().await;
            return changed;
        }
        self.set_error(uid, None);
        false
    }
}
