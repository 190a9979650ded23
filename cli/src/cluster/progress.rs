//! A line per long step with its timing, and bounded waiting for a
//! condition (polled with growing pauses, never longer than its patience).

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Prints steps to stderr when enabled (the CLI), stays quiet otherwise
/// (tests and benches).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub enabled: bool,
}

impl Progress {
    pub fn quiet() -> Progress {
        Progress { enabled: false }
    }

    /// Runs `f`, then prints `label` with how long it took, or the error.
    pub fn step<T, E: Display>(
        &self,
        label: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let outcome = f();
        if self.enabled {
            let took = format_duration(start.elapsed());
            match &outcome {
                Ok(_) => eprintln!("  ok   {label} ({took})"),
                Err(e) => eprintln!("  FAIL {label} ({took}): {e}"),
            }
        }
        outcome
    }

    pub fn note(&self, text: &str) {
        if self.enabled {
            eprintln!("{text}");
        }
    }
}

pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Calls `check` until it succeeds or `patience` is spent; the error names
/// `what` and the last reason.
pub fn wait_until(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(20);
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("{what}: not reached within {patience:?}: {last}"));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
