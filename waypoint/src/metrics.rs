//! Istio's request metrics as a waypoint reports them (`reporter="waypoint"`),
//! Istio's TCP metrics for opaque streams, and the waypoint's own counters of
//! rejected input and refused config.

use std::sync::{Arc, Mutex};

use http::HeaderValue;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::discovery::{Service, Workload};

/// The request labels, in Istio's order. Empty values render as `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The TCP labels: the request labels without the per-request parts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Why input was refused before (or instead of) reaching the pipeline.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Rejection {
    malformed,
    header_too_large,
    h2_protocol,
    slow_client,
    authz_denied,
    /// A JWT that no RequestAuthentication rule validates (401).
    jwt_invalid,
    bad_authority,
    bad_path,
    no_healthy_upstream,
    not_connect,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub reason: Rejection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// `namespace/name` of the policy that decided.
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigErrorLabels {
    pub kind: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration_ms: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub rejected: Family<RejectionLabels, Counter>,
    pub denied: Family<DenialLabels, Counter>,
    pub config_errors: Family<ConfigErrorLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // Istio's default buckets for request duration, in milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 8,
    ))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Metrics> {
        let m = Metrics {
            requests: Family::default(),
            duration_ms: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram as fn() -> Histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram as fn() -> Histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            rejected: Family::default(),
            denied: Family::default(),
            config_errors: Family::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "requests",
            "Requests the waypoint served",
            m.requests.clone(),
        );
        istio.register(
            "request_duration_milliseconds",
            "Request duration as the waypoint saw it",
            m.duration_ms.clone(),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        istio.register(
            "tcp_connections_opened",
            "Opaque TCP streams opened",
            m.tcp_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Opaque TCP streams closed",
            m.tcp_closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the caller on opaque TCP streams",
            m.tcp_sent.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the caller on opaque TCP streams",
            m.tcp_received.clone(),
        );
        let own = registry.sub_registry_with_prefix("waypoint");
        own.register(
            "rejected",
            "Connections, streams and requests refused for bad input or policy",
            m.rejected.clone(),
        );
        own.register(
            "authz_denied",
            "Requests denied by L7 authorization, by deciding policy",
            m.denied.clone(),
        );
        own.register(
            "config_errors",
            "Config the waypoint refused (NACKed), by kind",
            m.config_errors.clone(),
        );
        std::sync::Arc::new(m)
    }

    pub fn reject(&self, reason: Rejection) {
        self.rejected
            .get_or_create(&RejectionLabels { reason })
            .inc();
    }
}

pub(crate) fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

/// Who called and who answered, for the label sets.
#[derive(Debug, Default, Clone, Copy)]
pub struct Parties<'a> {
    pub source: Option<&'a Workload>,
    pub source_principal: &'a str,
    pub destination: Option<&'a Workload>,
    pub service: Option<&'a Service>,
}

impl TcpLabels {
    pub fn new(p: &Parties<'_>, response_flags: &'static str) -> Self {
        let w = |w: Option<&Workload>, f: fn(&Workload) -> &str| or_unknown(w.map(f).unwrap_or(""));
        TcpLabels {
            reporter: "waypoint",
            source_workload: w(p.source, |w| &w.workload_name),
            source_workload_namespace: w(p.source, |w| &w.namespace),
            source_principal: or_unknown(p.source_principal),
            destination_workload: w(p.destination, |w| &w.workload_name),
            destination_workload_namespace: w(p.destination, |w| &w.namespace),
            destination_principal: p
                .destination
                .map(|w| w.identity.to_string())
                .unwrap_or_else(|| "unknown".into()),
            destination_service: or_unknown(p.service.map(|s| s.hostname.as_str()).unwrap_or("")),
            destination_service_name: or_unknown(p.service.map(|s| s.name.as_str()).unwrap_or("")),
            destination_service_namespace: or_unknown(
                p.service.map(|s| s.namespace.as_str()).unwrap_or(""),
            ),
            response_flags,
            connection_security_policy: "mutual_tls",
        }
    }
}

impl RequestLabels {
    pub fn new(
        p: &Parties<'_>,
        request_protocol: &'static str,
        response_code: u16,
        grpc_status: Option<&str>,
        response_flags: &'static str,
    ) -> Self {
        let w = |w: Option<&Workload>, f: fn(&Workload) -> &str| or_unknown(w.map(f).unwrap_or(""));
        RequestLabels {
            reporter: "waypoint",
            source_workload: w(p.source, |w| &w.workload_name),
            source_workload_namespace: w(p.source, |w| &w.namespace),
            source_principal: or_unknown(p.source_principal),
            source_app: w(p.source, |w| &w.app),
            source_version: w(p.source, |w| &w.version),
            destination_workload: w(p.destination, |w| &w.workload_name),
            destination_workload_namespace: w(p.destination, |w| &w.namespace),
            destination_principal: p
                .destination
                .map(|w| w.identity.to_string())
                .unwrap_or_else(|| "unknown".into()),
            destination_app: w(p.destination, |w| &w.app),
            destination_version: w(p.destination, |w| &w.version),
            destination_service: or_unknown(p.service.map(|s| s.hostname.as_str()).unwrap_or("")),
            destination_service_name: or_unknown(p.service.map(|s| s.name.as_str()).unwrap_or("")),
            destination_service_namespace: or_unknown(
                p.service.map(|s| s.namespace.as_str()).unwrap_or(""),
            ),
            request_protocol,
            response_code,
            grpc_response_status: grpc_status.unwrap_or("").to_string(),
            response_flags,
            connection_security_policy: "mutual_tls",
        }
    }
}

/// One label set's four request metrics, looked up once and then kept, so a
/// request whose labels match an earlier one's costs no label building or
/// hashing.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Counter,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Metrics {
    pub fn request_metrics(&self, labels: &RequestLabels) -> RequestMetrics {
        RequestMetrics {
            requests: self.requests.get_or_create(labels).clone(),
            duration_ms: self.duration_ms.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

impl RequestMetrics {
    pub fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration_ms.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// What decides a request's labels besides its stream's caller, which every
/// request of a stream shares.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub destination: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<HeaderValue>,
    pub flags: &'static str,
}

impl RequestKey {
    /// Workloads and services compare by identity: a discovery update makes
    /// new ones, whose labels may differ.
    fn matches(&self, other: &RequestKey) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.status == other.status
            && self.grpc == other.grpc
            && self.flags == other.flags
            && self.grpc_status == other.grpc_status
            && same(&self.destination, &other.destination)
            && same(&self.service, &other.service)
    }
}

/// The label sets a stream used last; a connection mostly repeats a few.
#[derive(Debug, Default)]
pub struct RequestMetricsCache {
    entries: Mutex<Vec<(RequestKey, RequestMetrics)>>,
}

/// Label sets kept per stream.
const CACHED_LABEL_SETS: usize = 8;

impl RequestMetricsCache {
    /// The metrics for `key`, made by `make` the first time it is seen.
    pub fn get(&self, key: RequestKey, make: impl FnOnce() -> RequestMetrics) -> RequestMetrics {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = entries.iter().find(|(k, _)| k.matches(&key)) {
            return m.clone();
        }
        let m = make();
        if entries.len() >= CACHED_LABEL_SETS {
            entries.remove(0);
        }
        entries.push((key, m.clone()));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(version: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: "w".into(),
            name: "echo-1".into(),
            namespace: "default".into(),
            addresses: vec![],
            identity: mesh_core::Identity::new("cluster.local", "default", "echo").unwrap(),
            app: "echo".into(),
            version: version.into(),
            workload_name: "echo".into(),
            healthy: true,
            services: Default::default(),
            waypoint: None,
        })
    }

    fn key(w: &Arc<Workload>, status: u16) -> RequestKey {
        RequestKey {
            destination: Some(w.clone()),
            service: None,
            grpc: false,
            status,
            grpc_status: None,
            flags: "-",
        }
    }

    fn labels(w: &Workload, status: u16) -> RequestLabels {
        let parties = Parties {
            source: None,
            source_principal: "spiffe://cluster.local/ns/default/sa/client",
            destination: Some(w),
            service: None,
        };
        RequestLabels::new(&parties, "http", status, None, "-")
    }

    /// The label sets a cached handle counts in, read back from the families.
    fn count(m: &Metrics, w: &Workload, status: u16) -> u64 {
        m.requests.get_or_create(&labels(w, status)).get()
    }

    #[test]
    fn cached_handles_count_in_the_label_set_they_were_made_for() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let cache = RequestMetricsCache::default();
        let (v1, v2) = (workload("v1"), workload("v2"));
        let mut made = 0;
        for (w, status) in [(&v1, 200), (&v1, 200), (&v1, 503), (&v2, 200), (&v1, 200)] {
            cache
                .get(key(w, status), || {
                    made += 1;
                    m.request_metrics(&labels(w, status))
                })
                .record(1.0, 0, 10);
        }
        assert_eq!(made, 3, "one lookup per label set");
        assert_eq!(count(&m, &v1, 200), 3);
        assert_eq!(count(&m, &v1, 503), 1);
        assert_eq!(count(&m, &v2, 200), 1);
        // A workload replaced by discovery is a new label set, even when equal.
        let v1_again = workload("v1");
        cache
            .get(key(&v1_again, 200), || {
                made += 1;
                m.request_metrics(&labels(&v1_again, 200))
            })
            .record(1.0, 0, 10);
        assert_eq!(made, 4);
        assert_eq!(count(&m, &v1, 200), 4);
    }

    #[test]
    fn the_cache_keeps_the_last_label_sets_only() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let cache = RequestMetricsCache::default();
        let w = workload("v1");
        for status in 0..CACHED_LABEL_SETS as u16 + 1 {
            cache.get(key(&w, 200 + status), || {
                m.request_metrics(&labels(&w, 200 + status))
            });
        }
        let mut made = false;
        cache.get(key(&w, 200), || {
            made = true;
            m.request_metrics(&labels(&w, 200))
        });
        assert!(made, "the oldest entry was evicted");
        assert_eq!(cache.entries.lock().unwrap().len(), CACHED_LABEL_SETS);
    }
}
