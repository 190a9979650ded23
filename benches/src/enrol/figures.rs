//! The arithmetic of the enrolment report: per run, the time to the first
//! pod's and to the last pod's first mTLS connection; over runs, median, p90
//! and max; and ztunnel's resident memory per enrolled pod.

use std::collections::BTreeMap;

use serde::Serialize;

use super::detect::FirstMtls;
use crate::stats::{median, percentile};

/// What one run (label at t0, until every pod made an mTLS connection) gave.
#[derive(Debug, Clone, Serialize)]
pub struct RunTimes {
    /// When the first pod's first mTLS connection was seen (ms after t0).
    pub first_pod_ms: f64,
    /// When the last pod's first mTLS connection was seen (ms after t0).
    pub all_pods_ms: f64,
    /// The widest detection window of this run's pods (see `detect`).
    pub widest_window_ms: f64,
}

/// First and all-pods times of one run; `None` without pods.
pub fn run_times(first: &BTreeMap<String, FirstMtls>) -> Option<RunTimes> {
    let seen: Vec<f64> = first.values().map(|f| f.seen_ms).collect();
    let first_pod_ms = seen.iter().copied().reduce(f64::min)?;
    let all_pods_ms = seen.iter().copied().reduce(f64::max)?;
    let widest_window_ms = first
        .values()
        .map(|f| f.seen_ms - f.not_before_ms)
        .fold(0.0, f64::max);
    Some(RunTimes {
        first_pod_ms,
        all_pods_ms,
        widest_window_ms,
    })
}

/// Median, p90 (nearest rank) and max of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

/// `None` for no values; NaNs are left out.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    Some(Spread {
        median: median(&sorted)?,
        p90: percentile(&sorted, 90)?,
        max: *sorted.last()?,
    })
}

/// Resident memory ztunnel gained per enrolled pod, in KiB: `(after -
/// before) / pods`. Negative when it shrank (the allocator gave memory back).
pub fn rss_per_pod_kib(before_kib: u64, after_kib: u64, pods: usize) -> Option<f64> {
    if pods == 0 {
        return None;
    }
    Some((after_kib as f64 - before_kib as f64) / pods as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(seen: &[(f64, f64)]) -> BTreeMap<String, FirstMtls> {
        seen.iter()
            .enumerate()
            .map(|(i, (not_before_ms, seen_ms))| {
                (
                    format!("client-{i}"),
                    FirstMtls {
                        not_before_ms: *not_before_ms,
                        seen_ms: *seen_ms,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_run_is_its_earliest_and_latest_pod() {
        let times = run_times(&first(&[(90.0, 110.0), (40.0, 55.0), (300.0, 312.0)])).unwrap();
        assert_eq!(times.first_pod_ms, 55.0);
        assert_eq!(times.all_pods_ms, 312.0);
        assert_eq!(times.widest_window_ms, 20.0);
        assert!(run_times(&BTreeMap::new()).is_none());
    }

    #[test]
    fn spread_over_runs_by_nearest_rank() {
        let s = spread(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 3.0,
                p90: 5.0,
                max: 5.0
            }
        );
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = spread(&ten).unwrap();
        assert_eq!((s.median, s.p90, s.max), (5.5, 9.0, 10.0));
        assert!(spread(&[]).is_none());
        assert!(spread(&[f64::NAN]).is_none());
    }

    #[test]
    fn memory_per_pod() {
        assert_eq!(rss_per_pod_kib(20_000, 21_000, 10), Some(100.0));
        assert_eq!(rss_per_pod_kib(20_000, 19_500, 50), Some(-10.0));
        assert_eq!(rss_per_pod_kib(1, 2, 0), None);
    }
}
