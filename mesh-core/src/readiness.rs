//! Readiness by tokens: each start-up task holds a token and the process is
//! ready once every token is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// Blocks readiness until dropped.
#[derive(Debug)]
pub struct BlockReady {
    id: u64,
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, task: impl Into<String>) -> BlockReady {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.pending).insert(id, task.into());
        BlockReady {
            id,
            pending: self.pending.clone(),
        }
    }

    /// The tasks still blocking readiness; empty when ready.
    pub fn pending(&self) -> Vec<String> {
        lock(&self.pending).values().cloned().collect()
    }

    pub fn is_ready(&self) -> bool {
        lock(&self.pending).is_empty()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_token_is_dropped() {
        let r = Readiness::new();
        let a = r.register("certificates");
        let b = r.register("listeners");
        assert_eq!(r.pending(), vec!["certificates", "listeners"]);
        drop(a);
        assert!(!r.is_ready());
        drop(b);
        assert!(r.is_ready());
    }
}
