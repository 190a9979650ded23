//! Turning a stream of source changes into published snapshots: a burst of
//! changes becomes one build, so clients see one push per burst.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatcher;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Snapshot;

/// Quiet time after a change before building.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest wait after the first change of a burst, however busy the source.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(100);

/// Builds a snapshot from the source now, then after every burst of changes:
/// once `debounce` has passed without another change, but never later than
/// `max_delay` after the first change of the burst. A snapshot is sent only
/// when its content differs from the last one, stamped with the instant of
/// publication and carrying its changes since the last one. Returns when the source is dropped (after building its last
/// state) or when `shutdown` starts draining.
pub async fn publish<S>(
    mut source: watch::Receiver<S>,
    build: impl Fn(&S) -> Snapshot,
    debounce: Duration,
    max_delay: Duration,
    out: watch::Sender<Arc<Snapshot>>,
    shutdown: DrainWatcher,
) {
    let draining = shutdown.draining();
    tokio::pin!(draining);
    let mut source_open = true;
    loop {
        let snapshot = build(&source.borrow_and_update());
        send_if_changed(&out, snapshot);
        if !source_open {
            return;
        }
        tokio::select! {
            _ = &mut draining => return,
            changed = source.changed() => if changed.is_err() { return },
        }
        let deadline = Instant::now() + max_delay;
        loop {
            let until = deadline.min(Instant::now() + debounce);
            tokio::select! {
                _ = &mut draining => return,
                _ = tokio::time::sleep_until(until) => break,
                changed = source.changed() => if changed.is_err() {
                    source_open = false;
                    break;
                },
            }
        }
    }
}

/// Feeds `publish` from two sources: `out` holds the latest value of each
/// and changes whenever either does, so a change to a secondary input
/// (fetched key sets) rebuilds the snapshot like a store change, debounced
/// with it. Returns when either source is dropped or `shutdown` starts
/// draining; dropping `out` then ends the publisher after its last build.
pub async fn join<A: Clone, B: Clone>(
    mut a: watch::Receiver<A>,
    mut b: watch::Receiver<B>,
    out: watch::Sender<(A, B)>,
    shutdown: DrainWatcher,
) {
    let draining = shutdown.draining();
    tokio::pin!(draining);
    loop {
        let latest = (a.borrow_and_update().clone(), b.borrow_and_update().clone());
        out.send_replace(latest);
        tokio::select! {
            _ = &mut draining => return,
            changed = a.changed() => if changed.is_err() { return },
            changed = b.changed() => if changed.is_err() { return },
        }
    }
}

fn send_if_changed(out: &watch::Sender<Arc<Snapshot>>, snapshot: Snapshot) {
    out.send_if_modified(|current| match snapshot.published_after(current) {
        Some(published) => {
            *current = Arc::new(published);
            true
        }
        None => false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "type.googleapis.com/test.Counter";

    fn build(n: &u32) -> Snapshot {
        let mut s = Snapshot::default();
        s.insert(T, "n", &n.to_string());
        s
    }

    fn value(s: &Snapshot) -> String {
        let any = s.types[T]["n"].body();
        <String as prost::Message>::decode(any.value.as_slice()).unwrap()
    }

    struct Harness {
        source: watch::Sender<u32>,
        out: watch::Receiver<Arc<Snapshot>>,
        trigger: mesh_core::drain::DrainTrigger,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(debounce: Duration, max_delay: Duration) -> Harness {
        let (source, source_rx) = watch::channel(0u32);
        let (out_tx, out) = watch::channel(Arc::new(Snapshot::default()));
        let (trigger, watcher) = mesh_core::drain::channel();
        let task = tokio::spawn(publish(
            source_rx, build, debounce, max_delay, out_tx, watcher,
        ));
        Harness {
            source,
            out,
            trigger,
            task,
        }
    }

    /// Lets spawned tasks run without advancing paused time.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_the_initial_state_then_one_snapshot_per_burst() {
        let mut h = start(Duration::from_millis(10), Duration::from_millis(100));
        h.out.changed().await.unwrap();
        assert_eq!(value(&h.out.borrow_and_update()), "0");

        // A burst of changes 5 ms apart: nothing until 10 ms of quiet.
        for n in 1..=3 {
            h.source.send(n).unwrap();
            settle().await;
            tokio::time::advance(Duration::from_millis(5)).await;
            settle().await;
            assert!(!h.out.has_changed().unwrap(), "published mid-burst at {n}");
        }
        tokio::time::advance(Duration::from_millis(6)).await;
        settle().await;
        assert!(h.out.has_changed().unwrap());
        let published = h.out.borrow_and_update().clone();
        assert_eq!(value(&published), "3");
        assert!(published.published_at.is_some());
        h.trigger.drain(Duration::from_secs(1)).await;
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_never_rests_is_published_by_the_max_delay() {
        let mut h = start(Duration::from_millis(10), Duration::from_millis(100));
        h.out.changed().await.unwrap();
        h.out.borrow_and_update();
        let started = Instant::now();
        let mut n = 0;
        while !h.out.has_changed().unwrap() {
            n += 1;
            h.source.send(n).unwrap();
            settle().await;
            tokio::time::advance(Duration::from_millis(5)).await;
            settle().await;
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited <= Duration::from_millis(110),
            "published after {waited:?}"
        );
        h.trigger.drain(Duration::from_secs(1)).await;
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_build_is_not_sent() {
        let mut h = start(Duration::from_millis(10), Duration::from_millis(100));
        h.out.changed().await.unwrap();
        h.out.borrow_and_update();
        h.source.send(0).unwrap(); // same value: the same snapshot
        settle().await;
        tokio::time::advance(Duration::from_millis(20)).await;
        settle().await;
        assert!(!h.out.has_changed().unwrap());
        // The source going away ends the publisher after its last build.
        drop(h.source);
        tokio::time::timeout(Duration::from_secs(1), h.task)
            .await
            .expect("publisher ends when the source is dropped")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_to_either_joined_source_is_seen_with_the_other_latest() {
        let (a_tx, a_rx) = watch::channel(1u32);
        let (b_tx, b_rx) = watch::channel("x");
        let (out_tx, mut out) = watch::channel((0u32, ""));
        let (trigger, watcher) = mesh_core::drain::channel();
        let task = tokio::spawn(join(a_rx, b_rx, out_tx, watcher));
        out.changed().await.unwrap();
        assert_eq!(*out.borrow_and_update(), (1, "x"));
        b_tx.send("y").unwrap();
        out.changed().await.unwrap();
        assert_eq!(*out.borrow_and_update(), (1, "y"));
        a_tx.send(2).unwrap();
        out.changed().await.unwrap();
        assert_eq!(*out.borrow_and_update(), (2, "y"));
        // A source going away ends the join, which closes its output.
        drop(b_tx);
        task.await.unwrap();
        assert!(out.changed().await.is_err());
        drop(trigger);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_publisher_mid_burst() {
        let h = start(Duration::from_secs(10), Duration::from_secs(100));
        settle().await;
        h.source.send(1).unwrap();
        settle().await;
        let outcome = h.trigger.drain(Duration::from_secs(1)).await;
        assert_eq!(outcome, mesh_core::drain::DrainOutcome::Complete);
        h.task.await.unwrap();
    }
}
