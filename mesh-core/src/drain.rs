//! Graceful shutdown as a protocol with a deadline: stop accepting, let open
//! work finish, then force-close what is left. One mechanism for every listener.

use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Forced,
}

/// Held by whoever starts the shutdown.
#[derive(Debug)]
pub struct DrainTrigger {
    phase: watch::Sender<Phase>,
    done: mpsc::Receiver<()>,
}

/// Held by every listener and connection task; shutdown waits until all are dropped.
#[derive(Clone, Debug)]
pub struct DrainWatcher {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher finished within the deadline.
    Complete,
    /// The deadline passed; remaining work was told to close at once.
    Forced,
}

pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (
        DrainTrigger {
            phase: phase_tx,
            done: alive_rx,
        },
        DrainWatcher {
            phase: phase_rx,
            _alive: alive_tx,
        },
    )
}

impl DrainTrigger {
    /// Starts draining, waits up to `deadline` for every watcher to be dropped,
    /// then forces the rest and waits (briefly) for them to let go.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        let _ = self.phase.send(Phase::Draining);
        if tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_ok()
        {
            return DrainOutcome::Complete;
        }
        let _ = self.phase.send(Phase::Forced);
        // Forced tasks close their sockets without waiting for peers.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.done.recv()).await;
        DrainOutcome::Forced
    }

    /// A watcher that does not hold shutdown open: for code that only needs to
    /// observe the phase.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }
}

impl DrainWatcher {
    /// Resolves once shutdown has started: stop accepting new work.
    pub async fn draining(&self) {
        let mut rx = self.phase.clone();
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves once the deadline has passed: close what is still open.
    pub async fn forced(&self) {
        let mut rx = self.phase.clone();
        let _ = rx.wait_for(|p| *p >= Phase::Forced).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }
}

/// Waits for SIGTERM or SIGINT and names it: the binaries' cue to drain (and,
/// called again, to give up draining). Never resolves if the handlers cannot
/// be installed.
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn completes_when_watchers_finish_in_time() {
        let (trigger, watcher) = channel();
        let task = tokio::spawn(async move {
            watcher.draining().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(watcher);
        });
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Complete
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forces_after_the_deadline() {
        let (trigger, watcher) = channel();
        let task = tokio::spawn(async move {
            watcher.draining().await;
            // Work that would take longer than the deadline stops when forced.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => false,
                _ = watcher.forced() => true,
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Forced
        );
        assert!(task.await.unwrap(), "the task saw the forced phase");
        assert!(started.elapsed() < Duration::from_secs(7));
    }
}
