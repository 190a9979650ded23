//! When each client pod made its first mTLS connection, from successive
//! scrapes of the server node's ztunnel metrics.
//!
//! "First mTLS connection" of a pod: the first connection the server node's
//! ztunnel accepted over HBONE from that pod with its verified SPIFFE
//! identity, i.e. the first increase, after the label was written, of
//! `istio_tcp_connections_opened_total{reporter="destination",
//! source_workload=<pod>, source_workload_namespace=<ns>,
//! connection_security_policy="mutual_tls"}`. A scrape only shows that it
//! happened since the previous scrape began, so each pod gets a window: not
//! before the previous scrape started (or the label, for the first scrape),
//! at the latest when the scrape that showed it ended. The later end is the
//! figure reported; the window's width is how exact it is.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::prom::{self, Sample};

pub const OPENED: &str = "istio_tcp_connections_opened_total";

/// mTLS connections counted so far per client pod of `namespace`.
pub fn mtls_counts(samples: &[Sample], namespace: &str, pods: &[String]) -> BTreeMap<String, f64> {
    counts(samples, namespace, pods, Some("mutual_tls"))
}

/// Connections of any kind (plaintext before enrolment) counted so far per
/// client pod: shows the pods call, and that the server node's ztunnel knows
/// them by address, which the mTLS counts rely on.
pub fn any_counts(samples: &[Sample], namespace: &str, pods: &[String]) -> BTreeMap<String, f64> {
    counts(samples, namespace, pods, None)
}

fn counts(
    samples: &[Sample],
    namespace: &str,
    pods: &[String],
    security: Option<&str>,
) -> BTreeMap<String, f64> {
    pods.iter()
        .map(|pod| {
            let mut filters = vec![
                ("reporter", "destination"),
                ("source_workload", pod.as_str()),
                ("source_workload_namespace", namespace),
            ];
            if let Some(security) = security {
                filters.push(("connection_security_policy", security));
            }
            (pod.clone(), prom::sum(samples, OPENED, &filters))
        })
        .collect()
}

/// Only the lines of `OPENED` from a metrics page: the rest is not needed and
/// parsing it at every scrape would load the machine being measured.
pub fn opened_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with(OPENED) && l[OPENED.len()..].starts_with(['{', ' ']))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One scrape: when it started and ended (milliseconds after the label was
/// written) and the counts it read.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub started_ms: f64,
    pub ended_ms: f64,
    pub counts: BTreeMap<String, f64>,
}

/// A pod's first mTLS connection: it happened within
/// `[not_before_ms, seen_ms]` after the label was written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstMtls {
    pub not_before_ms: f64,
    pub seen_ms: f64,
}

/// Follows scrapes until every pod has shown an mTLS connection.
#[derive(Debug)]
pub struct Watch {
    baseline: BTreeMap<String, f64>,
    /// When the latest scrape started; the label itself before any scrape.
    last_started_ms: f64,
    first: BTreeMap<String, FirstMtls>,
}

impl Watch {
    /// `baseline`: the counts just before the label was written (earlier
    /// runs leave their connections in the counters).
    pub fn new(baseline: BTreeMap<String, f64>) -> Watch {
        Watch {
            baseline,
            last_started_ms: 0.0,
            first: BTreeMap::new(),
        }
    }

    pub fn observe(&mut self, scrape: &Scrape) {
        for (pod, before) in &self.baseline {
            if self.first.contains_key(pod) {
                continue;
            }
            if scrape.counts.get(pod).copied().unwrap_or(0.0) > *before {
                self.first.insert(
                    pod.clone(),
                    FirstMtls {
                        not_before_ms: self.last_started_ms.max(0.0),
                        seen_ms: scrape.ended_ms,
                    },
                );
            }
        }
        self.last_started_ms = scrape.started_ms;
    }

    /// Pods with no mTLS connection yet.
    pub fn missing(&self) -> Vec<String> {
        self.baseline
            .keys()
            .filter(|p| !self.first.contains_key(*p))
            .cloned()
            .collect()
    }

    pub fn done(&self) -> bool {
        self.first.len() == self.baseline.len()
    }

    pub fn first(&self) -> &BTreeMap<String, FirstMtls> {
        &self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(p, c)| (p.to_string(), *c)).collect()
    }

    #[test]
    fn counts_only_mtls_connections_the_server_side_saw_from_each_pod() {
        let text = r#"istio_tcp_connections_opened_total{reporter="destination",source_workload="client-0",source_workload_namespace="enrol",connection_security_policy="mutual_tls"} 3
istio_tcp_connections_opened_total{reporter="destination",source_workload="client-0",source_workload_namespace="enrol",connection_security_policy="unknown"} 40
istio_tcp_connections_opened_total{reporter="source",source_workload="client-1",source_workload_namespace="enrol",connection_security_policy="mutual_tls"} 5
istio_tcp_connections_opened_total{reporter="destination",source_workload="client-1",source_workload_namespace="other",connection_security_policy="mutual_tls"} 7
"#;
        let samples = prom::parse(text).unwrap();
        let pods = vec!["client-0".to_string(), "client-1".to_string()];
        assert_eq!(
            mtls_counts(&samples, "enrol", &pods),
            counts(&[("client-0", 3.0), ("client-1", 0.0)])
        );
        assert_eq!(
            any_counts(&samples, "enrol", &pods),
            counts(&[("client-0", 43.0), ("client-1", 0.0)])
        );
    }

    #[test]
    fn only_the_opened_counter_is_kept() {
        let page = "# TYPE istio_tcp_connections_opened counter\n\
                    istio_tcp_connections_opened_total{a=\"1\"} 2\n\
                    istio_tcp_connections_opened_totally{a=\"1\"} 9\n\
                    istio_tcp_connections_closed_total{a=\"1\"} 2\n\
                    istio_tcp_connections_opened_total 4\n";
        assert_eq!(
            opened_lines(page),
            "istio_tcp_connections_opened_total{a=\"1\"} 2\nistio_tcp_connections_opened_total 4"
        );
    }

    #[test]
    fn each_pod_gets_the_window_between_the_previous_scrape_and_the_one_that_showed_it() {
        let mut watch = Watch::new(counts(&[("a", 5.0), ("b", 0.0)]));
        let scrape = |started_ms, ended_ms, c: &[(&str, f64)]| Scrape {
            started_ms,
            ended_ms,
            counts: counts(c),
        };
        // A count at its baseline is an earlier run's connection, not a new one.
        watch.observe(&scrape(2.0, 4.0, &[("a", 5.0), ("b", 0.0)]));
        assert!(watch.first().is_empty());
        assert_eq!(watch.missing(), ["a", "b"]);
        watch.observe(&scrape(14.0, 17.0, &[("a", 6.0), ("b", 0.0)]));
        assert_eq!(
            watch.first()["a"],
            FirstMtls {
                not_before_ms: 2.0,
                seen_ms: 17.0
            }
        );
        assert!(!watch.done());
        watch.observe(&scrape(25.0, 30.0, &[("a", 9.0), ("b", 1.0)]));
        // a keeps its first window; b's starts where the previous scrape did.
        assert_eq!(watch.first()["a"].seen_ms, 17.0);
        assert_eq!(
            watch.first()["b"],
            FirstMtls {
                not_before_ms: 14.0,
                seen_ms: 30.0
            }
        );
        assert!(watch.done());
        assert!(watch.missing().is_empty());
    }

    #[test]
    fn a_pod_seen_in_the_first_scrape_is_bounded_by_the_label() {
        let mut watch = Watch::new(counts(&[("a", 0.0)]));
        watch.observe(&Scrape {
            started_ms: 1.0,
            ended_ms: 3.0,
            counts: counts(&[("a", 1.0)]),
        });
        assert_eq!(
            watch.first()["a"],
            FirstMtls {
                not_before_ms: 0.0,
                seen_ms: 3.0
            }
        );
    }
}
