//! The HTTP client's per-response lines and closing summary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One request's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Response {
        status: u16,
        /// The `x-ambit-app` header of the response, `-` without one (e.g.
        /// a proxy's own 403 or 504).
        backend: String,
        latency: Duration,
        body: String,
    },
    Failed {
        why: String,
        latency: Duration,
    },
}

impl Outcome {
    /// `200 v1 1.2ms`, `403 - 0.8ms`, or `error <why> 5000.0ms`; with
    /// `body`, the response body follows on the same line.
    pub fn line(&self, body: bool) -> String {
        match self {
            Outcome::Response {
                status,
                backend,
                latency,
                body: text,
            } => {
                let ms = millis(*latency);
                if body {
                    format!("{status} {backend} {ms:.1}ms {}", text.trim_end())
                } else {
                    format!("{status} {backend} {ms:.1}ms")
                }
            }
            Outcome::Failed { why, latency } => {
                format!("error {why} {:.1}ms", millis(*latency))
            }
        }
    }
}

/// Counts per status and per backend, and latency percentiles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total: u64,
    /// Status code (or `error`) to count.
    pub statuses: BTreeMap<String, u64>,
    /// Backend name (from `x-ambit-app`, `-` for none) to count.
    pub backends: BTreeMap<String, u64>,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut summary = Summary::default();
        let mut latencies = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            summary.total += 1;
            match outcome {
                Outcome::Response {
                    status,
                    backend,
                    latency,
                    ..
                } => {
                    *summary.statuses.entry(status.to_string()).or_default() += 1;
                    *summary.backends.entry(backend.clone()).or_default() += 1;
                    latencies.push(millis(*latency));
                }
                Outcome::Failed { latency, .. } => {
                    *summary.statuses.entry("error".into()).or_default() += 1;
                    summary.errors += 1;
                    latencies.push(millis(*latency));
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        summary.p50_ms = percentile(&latencies, 0.50);
        summary.p99_ms = percentile(&latencies, 0.99);
        summary.max_ms = latencies.last().copied().unwrap_or(0.0);
        summary
    }

    /// `summary {...json...}`, the client's last line.
    pub fn line(&self) -> String {
        format!(
            "summary {}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    /// Parses the `summary` line from a client's output.
    pub fn from_output(output: &str) -> Option<Summary> {
        output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("summary "))
            .and_then(|json| serde_json::from_str(json).ok())
    }

    pub fn status(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }

    pub fn backend(&self, name: &str) -> u64 {
        self.backends.get(name).copied().unwrap_or(0)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(backend: &str, ms: u64) -> Outcome {
        Outcome::Response {
            status: 200,
            backend: backend.into(),
            latency: Duration::from_millis(ms),
            body: String::new(),
        }
    }

    #[test]
    fn counts_statuses_backends_and_errors() {
        let outcomes = vec![
            ok("v1", 1),
            ok("v1", 2),
            ok("v2", 3),
            Outcome::Response {
                status: 403,
                backend: "-".into(),
                latency: Duration::from_millis(1),
                body: String::new(),
            },
            Outcome::Failed {
                why: "reset".into(),
                latency: Duration::from_millis(9),
            },
        ];
        let summary = Summary::of(&outcomes);
        assert_eq!(summary.total, 5);
        assert_eq!(summary.status("200"), 3);
        assert_eq!(summary.status("403"), 1);
        assert_eq!(summary.status("error"), 1);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.backend("v1"), 2);
        assert_eq!(summary.backend("v2"), 1);
        assert_eq!(summary.backend("-"), 1);
        assert_eq!(summary.max_ms, 9.0);
        assert_eq!(summary.p50_ms, 2.0);
    }

    #[test]
    fn the_summary_line_parses_back() {
        let summary = Summary::of(&[ok("a", 1), ok("b", 2)]);
        let output = format!("200 a 1.0ms\n200 b 2.0ms\n{}\n", summary.line());
        assert_eq!(Summary::from_output(&output), Some(summary));
    }

    #[test]
    fn lines_name_status_backend_and_latency() {
        assert_eq!(ok("v1", 12).line(false), "200 v1 12.0ms");
        let failed = Outcome::Failed {
            why: "connection refused".into(),
            latency: Duration::from_micros(1500),
        };
        assert_eq!(failed.line(false), "error connection refused 1.5ms");
    }
}
