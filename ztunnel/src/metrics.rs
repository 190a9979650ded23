//! Istio's L4 traffic metrics (spec 7.1) with their labels, and ztunnel's
//! own counters.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Service;
use crate::state::WorkloadEntry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

/// The traffic labels, in Istio's order. Empty values render as `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// What the labels are built from.
#[derive(Debug, Default)]
pub struct Endpoints<'a> {
    pub source: Option<&'a WorkloadEntry>,
    /// The peer's identity as proven by TLS (inbound) or our own (outbound).
    pub source_principal: Option<String>,
    pub destination: Option<&'a WorkloadEntry>,
    pub service: Option<&'a Service>,
    pub mtls: bool,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

impl TrafficLabels {
    pub fn new(reporter: Reporter, e: &Endpoints<'_>) -> Self {
        let src = e.source;
        let dst = e.destination;
        let field = |w: Option<&WorkloadEntry>, f: fn(&WorkloadEntry) -> &str| {
            or_unknown(w.map(f).unwrap_or(""))
        };
        TrafficLabels {
            reporter,
            source_workload: field(src, |w| w.workload_name()),
            source_canonical_service: field(src, |w| w.canonical_service()),
            source_canonical_revision: field(src, |w| w.canonical_revision()),
            source_workload_namespace: field(src, |w| &w.spec.namespace),
            source_principal: or_unknown(e.source_principal.as_deref().unwrap_or("")),
            source_app: field(src, |w| w.canonical_service()),
            source_version: field(src, |w| w.canonical_revision()),
            source_cluster: field(src, |w| &w.spec.cluster_id),
            destination_service: or_unknown(e.service.map(|s| s.hostname.as_str()).unwrap_or("")),
            destination_service_namespace: or_unknown(
                e.service.map(|s| s.namespace.as_str()).unwrap_or(""),
            ),
            destination_service_name: or_unknown(e.service.map(|s| s.name.as_str()).unwrap_or("")),
            destination_workload: field(dst, |w| w.workload_name()),
            destination_canonical_service: field(dst, |w| w.canonical_service()),
            destination_canonical_revision: field(dst, |w| w.canonical_revision()),
            destination_workload_namespace: field(dst, |w| &w.spec.namespace),
            destination_principal: or_unknown(
                &dst.map(|w| w.identity.to_string()).unwrap_or_default(),
            ),
            destination_app: field(dst, |w| w.canonical_service()),
            destination_version: field(dst, |w| w.canonical_revision()),
            destination_cluster: field(dst, |w| &w.spec.cluster_id),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: if e.mtls { "mutual_tls" } else { "unknown" }.into(),
        }
    }

    pub fn with_flag(mut self, flag: &str) -> Self {
        self.response_flags = flag.to_string();
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// A waypoint by name and what happened (a direction or a refusal reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaypointLabels {
    pub waypoint: String,
    pub reason: String,
}

impl WaypointLabels {
    pub fn new(waypoint: &str, reason: &str) -> Self {
        WaypointLabels {
            waypoint: waypoint.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub opened: Family<TrafficLabels, Counter>,
    pub closed: Family<TrafficLabels, Counter>,
    pub received_bytes: Family<TrafficLabels, Counter>,
    pub sent_bytes: Family<TrafficLabels, Counter>,
    pub failed: Family<TrafficLabels, Counter>,
    /// Inbound HBONE connections refused before any stream (TLS, ALPN, HTTP/2).
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Streams refused for their shape (method, authority, unknown target),
    /// and inbound connections to a pod xDS did not describe in time
    /// (`local_workload_unknown`, plaintext included).
    pub malformed_requests: Family<ReasonLabels, Counter>,
    pub sockets_open: Gauge,
    /// Outbound connections sent to a waypoint (`reason` = "outbound").
    pub via_waypoint: Family<WaypointLabels, Counter>,
    /// Outbound connections that failed because their waypoint could not be
    /// resolved (they are never sent around it).
    pub waypoint_unreachable: Family<WaypointLabels, Counter>,
    /// Inbound connections to a waypoint-bound pod refused because they did
    /// not come from its waypoint.
    pub waypoint_bypass_refused: Family<WaypointLabels, Counter>,
    /// In-pod mode: pods served, pods whose proxy failed to start, and proxies
    /// started and stopped (Istio's `workload_manager_*`).
    pub pods_active: Gauge,
    pub pods_pending: Gauge,
    pub pods_started: Counter,
    pub pods_stopped: Counter,
    /// In-pod mode: 1 while connected to the node agent.
    pub zds_connected: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Metrics> {
        let m = Metrics::default();
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "Connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client (client to server)",
            m.received_bytes.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the client (server to client)",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_connections_failed",
            "Connections that failed or were denied",
            m.failed.clone(),
        );
        istio.register(
            "tcp_sockets_open",
            "Proxied connections open now",
            m.sockets_open.clone(),
        );
        let ambit = registry.sub_registry_with_prefix("ambit");
        ambit.register(
            "hbone_handshake_failures",
            "Inbound HBONE connections refused during TLS or HTTP/2 set-up",
            m.handshake_failures.clone(),
        );
        ambit.register(
            "hbone_malformed_requests",
            "HBONE streams refused for a bad method, authority or target",
            m.malformed_requests.clone(),
        );
        ambit.register(
            "waypoint_connections",
            "Outbound connections sent to a waypoint",
            m.via_waypoint.clone(),
        );
        ambit.register(
            "waypoint_unreachable",
            "Outbound connections failed because the destination's waypoint has no usable pod",
            m.waypoint_unreachable.clone(),
        );
        ambit.register(
            "waypoint_bypass_refused",
            "Inbound connections to a waypoint-bound pod refused for not coming from its waypoint",
            m.waypoint_bypass_refused.clone(),
        );
        ambit.register(
            "zds_connected",
            "1 while connected to the node agent's ZDS socket (in-pod mode)",
            m.zds_connected.clone(),
        );
        registry.register(
            "workload_manager_active_proxy_count",
            "Pods served (in-pod mode)",
            m.pods_active.clone(),
        );
        registry.register(
            "workload_manager_pending_proxy_count",
            "Pods whose proxy failed to start and is retried (in-pod mode)",
            m.pods_pending.clone(),
        );
        registry.register(
            "workload_manager_proxies_started",
            "Pod proxies started (in-pod mode)",
            m.pods_started.clone(),
        );
        registry.register(
            "workload_manager_proxies_stopped",
            "Pod proxies stopped (in-pod mode)",
            m.pods_stopped.clone(),
        );
        std::sync::Arc::new(m)
    }

    pub fn count_reason(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}
