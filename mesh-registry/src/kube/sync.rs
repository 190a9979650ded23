//! Turns one kind's watcher events into registry changes. Plain data in,
//! plain data out, so the re-list rules are unit tested without a server.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::runtime::watcher;

use crate::Change;
use crate::model::{Kind, NamespacedName, Object, ObjectKey, Store};

use super::resources::names_of_kind;

/// An object the API server sent that does not decode as its kind. The
/// registry keeps that object's last good state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: invalid at `{path}`: {message}")]
pub struct RejectedObject {
    pub object: ObjectKey,
    pub path: String,
    pub message: String,
}

/// What one event means for the registry.
#[derive(Debug, Default)]
pub struct SyncStep {
    pub changes: Vec<Change>,
    pub rejected: Vec<RejectedObject>,
    /// A full list of the kind was just completed.
    pub listed: bool,
}

/// Per-kind state between events: the objects of a re-list in progress.
#[derive(Debug)]
pub struct KindSync {
    kind: Kind,
    relist: Option<Relist>,
}

#[derive(Debug, Default)]
struct Relist {
    objects: Vec<Object>,
    /// Every name listed, valid or not: an invalid object is not a deleted one.
    seen: BTreeSet<NamespacedName>,
}

impl KindSync {
    pub fn new(kind: Kind) -> Self {
        Self { kind, relist: None }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Applies one event. `current` is the registry as it is now; it is read
    /// only when a re-list completes, to find what the list no longer holds.
    pub fn on_event(&mut self, event: watcher::Event<DynamicObject>, current: &Store) -> SyncStep {
        let mut step = SyncStep::default();
        match event {
            watcher::Event::Apply(object) => match decode(self.kind, object) {
                Ok(object) => step.changes.push(Change::Upsert(object)),
                Err(rejected) => step.rejected.push(rejected),
            },
            watcher::Event::Delete(object) => step.changes.push(Change::Delete(ObjectKey {
                kind: self.kind,
                name: name_of(self.kind, &object.metadata),
            })),
            watcher::Event::Init => self.relist = Some(Relist::default()),
            watcher::Event::InitApply(object) => {
                let relist = self.relist.get_or_insert_with(Relist::default);
                relist.seen.insert(name_of(self.kind, &object.metadata));
                match decode(self.kind, object) {
                    Ok(object) => relist.objects.push(object),
                    Err(rejected) => step.rejected.push(rejected),
                }
            }
            watcher::Event::InitDone => {
                let relist = self.relist.take().unwrap_or_default();
                step.changes = relist.objects.into_iter().map(Change::Upsert).collect();
                step.changes.extend(
                    names_of_kind(current, self.kind)
                        .into_iter()
                        .filter(|name| !relist.seen.contains(name))
                        .map(|name| {
                            Change::Delete(ObjectKey {
                                kind: self.kind,
                                name,
                            })
                        }),
                );
                step.listed = true;
            }
        }
        step
    }
}

/// The registry key of an object of `kind`; cluster-scoped kinds have no
/// namespace whatever the metadata says.
fn name_of(kind: Kind, meta: &ObjectMeta) -> NamespacedName {
    let namespace = if kind.namespaced() {
        meta.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    NamespacedName::new(namespace, meta.name.clone().unwrap_or_default())
}

/// Decodes an API server object into the registry's typed model.
pub fn decode(kind: Kind, object: DynamicObject) -> Result<Object, RejectedObject> {
    let key = ObjectKey {
        kind,
        name: name_of(kind, &object.metadata),
    };
    let mut value = serde_json::to_value(&object).map_err(|err| RejectedObject {
        object: key.clone(),
        path: ".".to_string(),
        message: err.to_string(),
    })?;
    // Items of a list carry no apiVersion/kind; the typed model wants them.
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| kind.api_version().into());
        map.entry("kind").or_insert_with(|| kind.name().into());
    }
    Object::from_value(kind, value).map_err(|err| RejectedObject {
        object: key,
        path: err.path().to_string(),
        message: err.inner().to_string(),
    })
}

/// Why a watch failed, as far as logging and readiness care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFailure {
    /// 404 on list: the kind's CRD is not installed (yet).
    NotInstalled,
    /// 403: the service account may not list or watch the kind.
    Forbidden,
    /// 410 Gone: the watch fell too far behind; the watcher re-lists.
    Gone,
    /// Anything else: connection errors, server errors, undecodable lists.
    Other,
}

impl WatchFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchFailure::NotInstalled => "not_installed",
            WatchFailure::Forbidden => "forbidden",
            WatchFailure::Gone => "gone",
            WatchFailure::Other => "other",
        }
    }

    pub fn of(err: &watcher::Error) -> Self {
        let code = match err {
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code,
            watcher::Error::WatchError(status) => status.code,
            _ => return WatchFailure::Other,
        };
        match code {
            404 => WatchFailure::NotInstalled,
            403 => WatchFailure::Forbidden,
            410 => WatchFailure::Gone,
            _ => WatchFailure::Other,
        }
    }
}

/// Decides which watch failures are worth a warning: the first of its kind
/// in a row, so a missing CRD retried with backoff logs once, not forever.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<WatchFailure>,
}

impl FailureLog {
    /// Whether this failure should be logged loudly.
    pub fn on_failure(&mut self, failure: WatchFailure) -> bool {
        self.last.replace(failure) != Some(failure)
    }

    /// A successful event ends the run of failures.
    pub fn on_success(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn pod(namespace: &str, name: &str) -> DynamicObject {
        dynamic(json!({"metadata": {"name": name, "namespace": namespace},
                       "spec": {"containers": [{"name": "c"}]}}))
    }

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            name: NamespacedName::new(namespace, name),
        }
    }

    fn store_with(pods: &[(&str, &str)]) -> Store {
        let mut store = Store::default();
        for (namespace, name) in pods {
            store.upsert(decode(Kind::Pod, pod(namespace, name)).unwrap());
        }
        store
    }

    fn keys(changes: &[Change]) -> Vec<(char, String)> {
        changes
            .iter()
            .map(|change| match change {
                Change::Upsert(object) => ('+', object.key().to_string()),
                Change::Delete(key) => ('-', key.to_string()),
            })
            .collect()
    }

    #[test]
    fn apply_and_delete_pass_through_one_by_one() {
        let mut sync = KindSync::new(Kind::Pod);
        let store = Store::default();
        let step = sync.on_event(watcher::Event::Apply(pod("a", "p")), &store);
        assert_eq!(keys(&step.changes), [('+', "Pod a/p".to_string())]);
        let step = sync.on_event(watcher::Event::Delete(pod("a", "p")), &store);
        assert_eq!(keys(&step.changes), [('-', "Pod a/p".to_string())]);
        assert!(!step.listed);
    }

    #[test]
    fn a_relist_upserts_what_it_listed_and_deletes_what_it_did_not() {
        let mut sync = KindSync::new(Kind::Pod);
        let store = store_with(&[("a", "kept"), ("a", "gone")]);
        assert!(
            sync.on_event(watcher::Event::Init, &store)
                .changes
                .is_empty()
        );
        for name in ["kept", "new"] {
            let step = sync.on_event(watcher::Event::InitApply(pod("a", name)), &store);
            assert!(step.changes.is_empty(), "nothing applies before InitDone");
        }
        let step = sync.on_event(watcher::Event::InitDone, &store);
        assert!(step.listed);
        assert_eq!(
            keys(&step.changes),
            [
                ('+', "Pod a/kept".to_string()),
                ('+', "Pod a/new".to_string()),
                ('-', key("a", "gone").to_string()),
            ]
        );
    }

    #[test]
    fn an_init_during_a_relist_starts_it_over() {
        // A list page failing part way makes the watcher start again.
        let mut sync = KindSync::new(Kind::Pod);
        let store = store_with(&[("a", "x")]);
        sync.on_event(watcher::Event::Init, &store);
        sync.on_event(watcher::Event::InitApply(pod("a", "x")), &store);
        sync.on_event(watcher::Event::Init, &store);
        sync.on_event(watcher::Event::InitApply(pod("a", "y")), &store);
        let step = sync.on_event(watcher::Event::InitDone, &store);
        assert_eq!(
            keys(&step.changes),
            [('+', "Pod a/y".to_string()), ('-', "Pod a/x".to_string())]
        );
    }

    #[test]
    fn an_invalid_object_is_rejected_by_name_and_path_and_not_deleted_by_a_relist() {
        let mut sync = KindSync::new(Kind::Pod);
        let store = store_with(&[("a", "bad")]);
        sync.on_event(watcher::Event::Init, &store);
        let bad = dynamic(json!({"metadata": {"name": "bad", "namespace": "a"},
                                 "spec": {"containers": "not-a-list"}}));
        let step = sync.on_event(watcher::Event::InitApply(bad), &store);
        assert_eq!(step.rejected.len(), 1);
        assert_eq!(step.rejected[0].object, key("a", "bad"));
        assert_eq!(step.rejected[0].path, "spec.containers");
        assert!(
            step.rejected[0]
                .to_string()
                .starts_with("Pod a/bad: invalid at `spec.containers`")
        );
        let step = sync.on_event(watcher::Event::InitDone, &store);
        assert!(step.changes.is_empty(), "the last good state is kept");
    }

    #[test]
    fn cluster_scoped_kinds_are_keyed_without_namespace() {
        let ns = dynamic(json!({"metadata": {"name": "n1"}}));
        let object = decode(Kind::Namespace, ns).unwrap();
        assert_eq!(object.key().name, NamespacedName::cluster("n1"));
    }

    #[test]
    fn failures_are_classified_by_status_code() {
        let status = |code: u16| {
            Box::new(kube::core::Status {
                code,
                ..Default::default()
            })
        };
        let not_found = watcher::Error::InitialListFailed(kube::Error::Api(status(404)));
        assert_eq!(WatchFailure::of(&not_found), WatchFailure::NotInstalled);
        let gone = watcher::Error::WatchError(status(410));
        assert_eq!(WatchFailure::of(&gone), WatchFailure::Gone);
        let forbidden = watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        assert_eq!(WatchFailure::of(&forbidden), WatchFailure::Forbidden);
        assert_eq!(
            WatchFailure::of(&watcher::Error::NoResourceVersion),
            WatchFailure::Other
        );
    }

    #[test]
    fn a_repeated_failure_is_logged_once_until_a_success() {
        let mut log = FailureLog::default();
        assert!(log.on_failure(WatchFailure::NotInstalled));
        assert!(!log.on_failure(WatchFailure::NotInstalled));
        assert!(log.on_failure(WatchFailure::Other));
        log.on_success();
        assert!(log.on_failure(WatchFailure::Other));
    }
}
