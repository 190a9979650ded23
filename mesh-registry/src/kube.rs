//! The Kubernetes source: one kube-runtime watcher per watched kind feeding
//! the registry, and status conditions written back through the status
//! subresource.
//!
//! Objects are watched as `DynamicObject`s and decoded into the typed model
//! one by one, so one malformed custom resource is reported by name and
//! skipped instead of failing its kind's whole list. A watcher's re-list
//! (first start, 410 Gone) is applied when complete: upserts for what it
//! listed, deletes for what the registry holds and the list did not. A kind
//! the server does not serve (CRD not installed) is retried with backoff
//! without holding up the other kinds.

pub mod backoff;
pub mod client;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use mesh_core::readiness::{BlockReady, Readiness};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Registry;
use crate::model::{Kind, ObjectCondition, ObjectKey};

pub use backoff::BackoffPolicy;
pub use client::{ClientError, ClientSource, build_client, client_from_config};
pub use metrics::KubeSourceMetrics;
pub use status::StatusError;

use status::Written;
use sync::{FailureLog, KindSync, WatchFailure};

/// What the source watches and how it retries.
#[derive(Clone, Debug)]
pub struct KubeSourceOptions {
    /// The kinds to watch; all of them unless a caller narrows it.
    pub kinds: Vec<Kind>,
    pub backoff: BackoffPolicy,
    /// Counters to update; register them with `KubeSourceMetrics::register`.
    pub metrics: KubeSourceMetrics,
    /// If set, each kind blocks readiness (as `kube watch {Kind}`) until its
    /// first list is applied.
    pub readiness: Option<Readiness>,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        Self {
            kinds: Kind::ALL.to_vec(),
            backoff: BackoffPolicy::default(),
            metrics: KubeSourceMetrics::default(),
            readiness: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("the Kubernetes watchers did not stop within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("{failed} of {attempted} status patches failed, the first: {first}")]
    StatusWrite {
        attempted: usize,
        failed: usize,
        #[source]
        first: StatusError,
    },
}

/// The running watchers. Dropping it stops them; `shutdown` stops them and
/// waits, bounded.
pub struct KubeSource {
    client: kube::Client,
    registry: Registry,
    kinds: Vec<Kind>,
    synced: watch::Receiver<BTreeSet<Kind>>,
    metrics: KubeSourceMetrics,
    /// What each object's status was last patched to.
    written: Mutex<HashMap<ObjectKey, Written>>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Builds the client from `client_source`, then `start`s.
    pub async fn connect(
        client_source: &ClientSource,
        registry: Registry,
        options: KubeSourceOptions,
    ) -> Result<Self, ClientError> {
        let client = build_client(client_source).await?;
        Ok(Self::start(client, registry, options))
    }

    /// Starts one watcher task per kind on the current tokio runtime.
    pub fn start(client: kube::Client, registry: Registry, options: KubeSourceOptions) -> Self {
        let (synced_tx, synced) = watch::channel(BTreeSet::new());
        let synced_tx = Arc::new(synced_tx);
        let tasks = options
            .kinds
            .iter()
            .map(|&kind| {
                tokio::spawn(watch_kind(KindWatch {
                    kind,
                    client: client.clone(),
                    registry: registry.clone(),
                    backoff: options.backoff,
                    synced: synced_tx.clone(),
                    metrics: options.metrics.clone(),
                    not_ready: options
                        .readiness
                        .as_ref()
                        .map(|readiness| readiness.register(format!("kube watch {kind}"))),
                }))
            })
            .collect();
        Self {
            client,
            registry,
            kinds: options.kinds,
            synced,
            metrics: options.metrics,
            written: Mutex::default(),
            tasks,
        }
    }

    /// Whether every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        let synced = self.synced.borrow();
        self.kinds.iter().all(|kind| synced.contains(kind))
    }

    /// The kinds that have completed their first list.
    pub fn synced_kinds(&self) -> BTreeSet<Kind> {
        self.synced.borrow().clone()
    }

    /// Resolves once `synced()` holds.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        // Err only if every watcher task is gone, which happens at shutdown.
        let _ = synced
            .wait_for(|synced| self.kinds.iter().all(|kind| synced.contains(kind)))
            .await;
    }

    /// The source's counters.
    pub fn metrics(&self) -> &KubeSourceMetrics {
        &self.metrics
    }

    /// Objects the API server sent that did not decode as their kind.
    pub fn rejected_objects(&self) -> u64 {
        self.metrics.rejected_total()
    }

    /// Patches `status.conditions` of every object named in `conditions`
    /// (merge patch on the status subresource), skipping objects whose
    /// conditions are unchanged since the last successful write. All patches
    /// are attempted; the first failure is returned.
    pub async fn write_status(
        &self,
        conditions: &[ObjectCondition],
    ) -> Result<(), KubeSourceError> {
        let snapshot = self.registry.snapshot();
        let patches = {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            // Deleted objects need no memory of their status.
            written.retain(|object, _| snapshot.get(object).is_some());
            status::plan(conditions, &written, &snapshot, &super::now_rfc3339())
        };
        let attempted = patches.len();
        let mut failures = Vec::new();
        for patch in patches {
            match status::write(&self.client, &patch).await {
                Ok(()) => {
                    let (object, written) = patch.into();
                    self.written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(object, written);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "status write failed");
                    failures.push(err);
                }
            }
        }
        let failed = failures.len();
        match failures.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(KubeSourceError::StatusWrite {
                attempted,
                failed,
                first,
            }),
        }
    }

    /// Stops every watcher and waits for them to finish, at most `deadline`.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<(), KubeSourceError> {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        tokio::time::timeout(deadline, futures::future::join_all(tasks))
            .await
            .map(drop)
            .map_err(|_| KubeSourceError::ShutdownTimeout(deadline))
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("kinds", &self.kinds)
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Everything one kind's watcher task needs.
struct KindWatch {
    kind: Kind,
    client: kube::Client,
    registry: Registry,
    backoff: BackoffPolicy,
    synced: Arc<watch::Sender<BTreeSet<Kind>>>,
    metrics: KubeSourceMetrics,
    /// Dropped once the kind's first list is applied.
    not_ready: Option<BlockReady>,
}

async fn watch_kind(mut task: KindWatch) {
    let kind = task.kind;
    let api: Api<DynamicObject> = Api::all_with(task.client, &resources::api_resource(kind));
    // Default config: list then watch, with bookmarks, so a reconnect resumes
    // from the latest bookmark instead of re-listing.
    let events = watcher(api, watcher::Config::default()).backoff(task.backoff.build());
    let mut events = std::pin::pin!(events);
    let mut sync = KindSync::new(kind);
    let mut failures = FailureLog::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                let failure = WatchFailure::of(&err);
                task.metrics.failed(kind, failure);
                log_failure(kind, failure, &err, &mut failures);
                if failure == WatchFailure::NotInstalled {
                    // A kind the server does not serve has no objects: readiness
                    // must not wait for a CRD that may never be installed. The
                    // watch keeps retrying and lists it if it appears.
                    task.not_ready = None;
                    task.synced.send_if_modified(|synced| synced.insert(kind));
                }
                continue;
            }
        };
        failures.on_success();
        let step = sync.on_event(event, &task.registry.snapshot());
        for rejected in &step.rejected {
            tracing::warn!(error = %rejected, "object rejected; its last good state is kept");
            task.metrics.rejected(kind);
        }
        task.registry.apply(step.changes);
        if step.listed {
            task.metrics.listed(kind);
            task.not_ready = None;
            task.synced.send_if_modified(|synced| synced.insert(kind));
        }
    }
}

fn log_failure(kind: Kind, failure: WatchFailure, err: &watcher::Error, failures: &mut FailureLog) {
    if !failures.on_failure(failure) {
        tracing::debug!(%kind, error = %err, "watch still failing; retrying with backoff");
        return;
    }
    match failure {
        WatchFailure::NotInstalled => tracing::warn!(
            %kind,
            "the API server does not serve this kind (CRD not installed?); retrying with backoff"
        ),
        WatchFailure::Gone => {
            tracing::info!(%kind, "watch history expired (410 Gone); re-listing")
        }
        WatchFailure::Forbidden | WatchFailure::Other => {
            tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff")
        }
    }
}
