//! The quiet check: how busy the machine is while nothing of the benchmark runs.
//!
//! Before a scenario the harness samples `/proc/stat` over [`SAMPLE`] and repeats (up to
//! a bound) while the machine is busier than the threshold; after the scenario it takes
//! one sample. A scenario whose before-check never got quiet, or whose after-sample was
//! busy (load that likely overlapped the measurement), is flagged and left out of the
//! medians.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::{self, ProcError};

/// How long one busy sample lasts.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct QuietCheck {
    /// Busy percent (all CPUs, steal included) of each sample, in order.
    pub samples_busy_percent: Vec<f64>,
    /// Whether the last sample was at or below the threshold.
    pub quiet: bool,
}

impl QuietCheck {
    /// The last sample's busy percent.
    pub fn last(&self) -> f64 {
        self.samples_busy_percent
            .last()
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Busy percent of the whole machine over `interval`.
pub fn sample(interval: Duration) -> Result<f64, ProcError> {
    let before = procfs::read_cpu_times()?;
    std::thread::sleep(interval);
    let after = procfs::read_cpu_times()?;
    // No tick passed (impossible over a second): call it quiet rather than fail.
    Ok(procfs::busy_percent(before, after).unwrap_or(0.0))
}

/// Samples until one sample is at or below `threshold` percent, for at most
/// `max_wait` (at least one sample is always taken).
pub fn wait_quiet(threshold: f64, max_wait: Duration) -> Result<QuietCheck, ProcError> {
    let deadline = Instant::now() + max_wait;
    let mut samples = Vec::new();
    loop {
        let busy = sample(SAMPLE)?;
        samples.push(busy);
        if busy <= threshold {
            return Ok(QuietCheck {
                samples_busy_percent: samples,
                quiet: true,
            });
        }
        if Instant::now() >= deadline {
            return Ok(QuietCheck {
                samples_busy_percent: samples,
                quiet: false,
            });
        }
    }
}

/// One sample, judged against `threshold`.
pub fn check_once(threshold: f64) -> Result<QuietCheck, ProcError> {
    let busy = sample(SAMPLE)?;
    Ok(QuietCheck {
        samples_busy_percent: vec![busy],
        quiet: busy <= threshold,
    })
}
