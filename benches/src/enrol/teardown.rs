//! Taking the benchmark's cluster down whatever happens: after a scenario,
//! on an error (a guard's drop), and on SIGINT/SIGTERM (the binary's signal
//! path, while the measuring thread may be anywhere).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ambit::cluster::Cluster;
use ambit::cluster::journal::Journal;
use ambit::cluster::progress::Progress;

/// The cluster (its state dir) and the files currently made; cheap to clone
/// and shared with the signal path.
#[derive(Clone, Debug, Default)]
pub struct Teardown {
    made: Arc<Mutex<Made>>,
}

#[derive(Debug, Default)]
struct Made {
    state_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
}

impl Teardown {
    /// From now on a teardown takes down the cluster whose state is in
    /// `state_dir` (before `up` starts, so a half-made cluster goes too).
    pub fn cluster(&self, state_dir: PathBuf) {
        self.lock().state_dir = Some(state_dir);
    }

    /// A teardown also removes `dir` (the generated cluster directory).
    pub fn work_dir(&self, dir: PathBuf) {
        self.lock().work_dir = Some(dir);
    }

    /// Takes down the cluster and removes the work dir, if any; returns what
    /// went wrong (each step is tried regardless).
    pub fn run(&self) -> Vec<String> {
        let mut made = self.lock();
        let mut problems = Vec::new();
        if let Some(state_dir) = made.state_dir.take() {
            problems.extend(down(&state_dir));
            // `up` may still have been making things when a signal came:
            // whatever it journalled after the first pass goes now.
            if Journal::new(&state_dir).exists() {
                std::thread::sleep(Duration::from_millis(500));
                problems.extend(down(&state_dir));
            }
        }
        if let Some(dir) = made.work_dir.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", dir.display()));
        }
        problems
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Made> {
        self.made.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn down(state_dir: &std::path::Path) -> Vec<String> {
    if !Journal::new(state_dir).exists() {
        return Vec::new();
    }
    match Cluster::down(state_dir, &Progress::quiet()) {
        Ok(warnings) => warnings,
        Err(e) => vec![format!(
            "ambit down ({}): {e}; run `ambit down --state-dir {}` by hand",
            state_dir.display(),
            state_dir.display()
        )],
    }
}

/// Runs the teardown when dropped: the measuring code's early returns and
/// panics leave nothing behind.
pub struct Guard(pub Teardown);

impl Drop for Guard {
    fn drop(&mut self) {
        for problem in self.0.run() {
            eprintln!("ambit-enrol-bench: cleanup: {problem}");
        }
    }
}
