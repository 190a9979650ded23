//! The registry: one typed `Store` of the watched Kubernetes kinds, shared by
//! the sources that fill it (a watched directory of YAML, or the Kubernetes
//! API) and the components that read it (istiod-lite's translation and CA, the
//! node agent's enrolment). Readers get immutable snapshots; a change bumps a
//! watch channel so consumers wake up.

pub mod dir;
pub mod kube;
pub mod model;

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::{Object, ObjectKey, Store};

/// One change a source reports.
#[derive(Clone, Debug)]
pub enum Change {
    Upsert(Object),
    Delete(ObjectKey),
}

/// Shared handle to the registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    tx: Arc<watch::Sender<Arc<Store>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Store::default()));
        Self { tx: Arc::new(tx) }
    }

    /// The current contents.
    pub fn snapshot(&self) -> Arc<Store> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot (coalesced: a slow reader sees
    /// the latest, never a backlog).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Store>> {
        self.tx.subscribe()
    }

    /// Applies a batch atomically; readers see all of it or none. Returns
    /// whether anything changed (a no-op batch wakes nobody).
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> bool {
        let mut changed = false;
        self.tx.send_if_modified(|current| {
            let store = Arc::make_mut(current);
            for change in changes {
                changed |= match change {
                    Change::Upsert(object) => store.upsert(object),
                    Change::Delete(key) => store.remove(&key),
                };
            }
            changed
        });
        changed
    }

    /// Replaces the whole contents (a source's full re-list).
    pub fn replace(&self, store: Store) -> bool {
        self.tx.send_if_modified(|current| {
            if **current == store {
                return false;
            }
            *current = Arc::new(store);
            true
        })
    }
}

/// Now, as Kubernetes writes times in status conditions: RFC 3339, UTC,
/// whole seconds. Both sources stamp `lastTransitionTime` with it.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use serde_json::json;

    fn namespace(name: &str) -> Object {
        Object::from_value(
            Kind::Namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_batch_wakes_subscribers_once_and_a_no_op_not_at_all() {
        let registry = Registry::new();
        let mut rx = registry.subscribe();
        rx.borrow_and_update();
        assert!(registry.apply([
            Change::Upsert(namespace("a")),
            Change::Upsert(namespace("b"))
        ]));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().namespaces.len(), 2);
        assert!(!registry.apply([Change::Upsert(namespace("a"))]));
        assert!(!rx.has_changed().unwrap());
        assert!(registry.apply([Change::Delete(namespace("a").key())]));
        assert_eq!(registry.snapshot().namespaces.len(), 1);
    }
}
