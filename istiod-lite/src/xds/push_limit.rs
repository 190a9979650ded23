//! A bound on large responses in flight across all streams.
//!
//! A client's first response carries every resource (megabytes in a large
//! cluster), and once encoded it stays in memory until the client has read
//! all of it. When many clients connect at once (a control-plane restart)
//! those buffers add up to the peak memory of the process. A large response
//! therefore takes a slot before it is written, and keeps it until the
//! client answers it (ACK or NACK), the stream ends, or `PERMIT_HOLD_MAX`
//! passes, so a client that never answers cannot starve the others. Small
//! responses (changes) never wait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Encoded size from which a response needs a slot.
pub const LARGE_PUSH_BYTES: usize = 256 * 1024;
/// Large responses in flight at once.
pub const DEFAULT_LARGE_PUSHES: usize = 8;
/// Longest a slot is held waiting for the client's answer.
pub const PERMIT_HOLD_MAX: Duration = Duration::from_secs(5);

/// The slots, shared by every stream. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PushLimit {
    slots: Arc<Semaphore>,
    hold_max: Duration,
}

impl PushLimit {
    pub fn new(slots: usize, hold_max: Duration) -> Self {
        PushLimit {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            hold_max,
        }
    }

    /// Whether a response of `bytes` needs a slot.
    pub fn needs_slot(bytes: usize) -> bool {
        bytes >= LARGE_PUSH_BYTES
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Slot {
            _permit: permit,
            expires: Instant::now() + self.hold_max,
        }
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            expires: Instant::now() + self.hold_max,
        })
    }

    /// Slots free now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// A slot, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    expires: Instant,
}

/// The slots one stream holds, one per type at most (one response per type
/// is in flight).
#[derive(Debug, Default)]
pub struct HeldSlots {
    by_type: BTreeMap<String, Slot>,
}

impl HeldSlots {
    pub fn hold(&mut self, type_url: &str, slot: Slot) {
        self.by_type.insert(type_url.to_string(), slot);
    }

    /// The response of `type_url` was answered.
    pub fn release(&mut self, type_url: &str) {
        self.by_type.remove(type_url);
    }

    /// When the next slot expires, if any is held.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_type.values().map(|s| s.expires).min()
    }

    /// Frees the slots held past their time.
    pub fn release_expired(&mut self, now: Instant) {
        self.by_type.retain(|_, s| s.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_freed_by_the_answer_or_by_its_deadline() {
        let limit = PushLimit::new(1, Duration::from_secs(5));
        let mut held = HeldSlots::default();
        held.hold("a", limit.acquire().await);
        assert_eq!(limit.available(), 0);

        // A second large push waits until the first is answered.
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        held.release("b");
        assert_eq!(limit.available(), 0, "another type's answer frees nothing");
        held.release("a");
        let slot = waiter.await.unwrap();
        assert_eq!(limit.available(), 0);

        // A client that never answers holds its slot only until the deadline.
        held.hold("a", slot);
        let expiry = held.next_expiry().expect("a slot is held");
        held.release_expired(expiry - Duration::from_millis(1));
        assert_eq!(limit.available(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(expiry, Instant::now());
        held.release_expired(Instant::now());
        assert_eq!(limit.available(), 1);
        assert!(held.next_expiry().is_none());
    }

    #[test]
    fn only_large_responses_need_a_slot() {
        assert!(!PushLimit::needs_slot(LARGE_PUSH_BYTES - 1));
        assert!(PushLimit::needs_slot(LARGE_PUSH_BYTES));
    }
}
