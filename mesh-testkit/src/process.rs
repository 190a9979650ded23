//! Child processes started in a namespace ([`ChildGuard`]) and the root check.

use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::sys;

/// Panics with a clear message unless the process runs as root.
///
/// Namespace tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces and
/// links. Call this first in such a test so that, without root, it fails loudly instead
/// of passing without having tested anything.
pub fn require_root() {
    let euid = sys::euid();
    assert!(
        euid == 0,
        "this test needs root to create network namespaces and veth links \
         (effective uid is {euid}); run it as root, e.g. `sudo -E cargo test`. \
         It fails instead of being skipped so that it never passes without running"
    );
}

/// A child process started by [`Netns::spawn`](crate::Netns::spawn) and its variants.
///
/// Dropping the guard kills (SIGKILL) the child's whole process group and reaps it, so
/// nothing outlives the test, also on panic. The owning [`Netns`](crate::Netns) does the
/// same for children still running when it is dropped first.
///
/// All methods take `&self`; the guard can be shared between threads.
#[derive(Debug)]
pub struct ChildGuard {
    state: Arc<Mutex<ChildState>>,
    pid: u32,
    cmdline: String,
}

#[derive(Debug)]
pub(crate) struct ChildState {
    child: Child,
    /// Set once the child has been reaped; until then its pid (and process group id)
    /// cannot be reused, so signalling it is safe.
    exited: Option<ExitStatus>,
}

impl ChildState {
    pub(crate) fn new(child: Child) -> ChildState {
        ChildState {
            child,
            exited: None,
        }
    }

    fn poll(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// SIGKILLs the child's process group and reaps the child. Idempotent.
    pub(crate) fn kill_and_reap(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        // Not reaped yet, so the group id (the child was made a group leader) is still
        // ours. Kills grandchildren too; errors mean the group is already gone.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = sys::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }
}

pub(crate) fn lock(state: &Mutex<ChildState>) -> MutexGuard<'_, ChildState> {
    // A panic while holding the lock cannot leave ChildState inconsistent.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChildGuard {
    pub(crate) fn new(state: Arc<Mutex<ChildState>>, cmdline: String) -> ChildGuard {
        let pid = lock(&state).child.id();
        ChildGuard {
            state,
            pid,
            cmdline,
        }
    }

    /// The child's pid (the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line the child was started with, for messages.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Sends SIGTERM to the child (not to its process group). Does nothing if the child
    /// has already been reaped.
    pub fn sigterm(&self) -> Result<()> {
        let mut state = lock(&self.state);
        if state.poll()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        sys::kill(pid, libc::SIGTERM)
            .with_context(|| format!("SIGTERM to pid {} ({})", self.pid, self.cmdline))
    }

    /// Waits up to `patience` for the child to exit: `Some(status)` if it did, `None` if
    /// it is still running. Polls with short, growing intervals.
    pub fn wait_timeout(&self, patience: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = lock(&self.state)
                .poll()
                .with_context(|| format!("waiting for pid {} ({})", self.pid, self.cmdline))?
            {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether the child is still running (not yet exited).
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.state).poll(), Ok(None))
    }

    /// Kills (SIGKILL) the child's process group now and returns the child's exit status
    /// (or the status it had already exited with).
    pub fn kill(&self) -> Result<ExitStatus> {
        lock(&self.state)
            .kill_and_reap()
            .with_context(|| format!("killing pid {} ({})", self.pid, self.cmdline))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = lock(&self.state).kill_and_reap();
    }
}
