//! The xDS server's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The type label. Types the server does not serve are counted as `other`,
/// so a client cannot grow the label set with made-up type URLs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub type_url: String,
}

#[derive(Debug)]
pub struct XdsMetrics {
    /// Connected streams.
    pub clients: Gauge,
    pub pushes: Family<TypeLabels, Counter>,
    pub push_resources: Family<TypeLabels, Counter>,
    pub push_bytes: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    /// From a snapshot's publication to the client's ACK of the response
    /// that carried it.
    pub push_latency: Histogram,
    /// Large responses waiting for one of the large-push slots.
    pub pushes_waiting: Gauge,
}

impl XdsMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = XdsMetrics {
            clients: Gauge::default(),
            pushes: Family::default(),
            push_resources: Family::default(),
            push_bytes: Family::default(),
            nacks: Family::default(),
            // 1 ms .. ~16 s.
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            pushes_waiting: Gauge::default(),
        };
        registry.register(
            "istiod_xds_clients",
            "Connected delta ADS streams",
            m.clients.clone(),
        );
        registry.register(
            "istiod_xds_pushes",
            "Delta ADS responses sent",
            m.pushes.clone(),
        );
        registry.register(
            "istiod_xds_push_resources",
            "Resources sent in delta ADS responses",
            m.push_resources.clone(),
        );
        registry.register(
            "istiod_xds_push_bytes",
            "Encoded bytes of delta ADS responses sent",
            m.push_bytes.clone(),
        );
        registry.register(
            "istiod_xds_nacks",
            "Delta ADS responses rejected by clients",
            m.nacks.clone(),
        );
        registry.register(
            "istiod_xds_push_latency_seconds",
            "Time from a snapshot's publication to a client's ACK of it",
            m.push_latency.clone(),
        );
        registry.register(
            "istiod_xds_pushes_waiting",
            "Large delta ADS responses waiting for a slot (at most a few are in flight at once)",
            m.pushes_waiting.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exposed_under_their_names() {
        let mut registry = Registry::default();
        let m = XdsMetrics::new(&mut registry);
        let labels = TypeLabels {
            type_url: "t".into(),
        };
        m.pushes.get_or_create(&labels).inc();
        m.push_resources.get_or_create(&labels).inc();
        m.push_bytes.get_or_create(&labels).inc();
        m.nacks.get_or_create(&labels).inc();
        m.push_latency.observe(0.002);
        m.clients.inc();
        m.pushes_waiting.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "istiod_xds_clients 1",
            "istiod_xds_pushes_total{type_url=\"t\"} 1",
            "istiod_xds_push_resources_total{type_url=\"t\"} 1",
            "istiod_xds_push_bytes_total{type_url=\"t\"} 1",
            "istiod_xds_nacks_total{type_url=\"t\"} 1",
            "istiod_xds_push_latency_seconds_count 1",
            "istiod_xds_pushes_waiting 1",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
