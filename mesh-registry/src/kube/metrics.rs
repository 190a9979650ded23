//! Counters of the Kubernetes source, per kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::model::Kind;

use super::sync::WatchFailure;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub reason: String,
}

/// Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct KubeSourceMetrics {
    pub rejected_objects: Family<KindLabels, Counter>,
    pub watch_failures: Family<FailureLabels, Counter>,
    pub relists: Family<KindLabels, Counter>,
}

impl KubeSourceMetrics {
    /// Registers the counters (`kube_rejected_objects_total`,
    /// `kube_watch_failures_total`, `kube_relists_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_rejected_objects",
            "Objects from the API server that did not decode as their kind",
            self.rejected_objects.clone(),
        );
        registry.register(
            "kube_watch_failures",
            "Failed lists and watches, by kind and reason",
            self.watch_failures.clone(),
        );
        registry.register(
            "kube_relists",
            "Completed full lists (the first one and every re-list), by kind",
            self.relists.clone(),
        );
    }

    pub fn rejected(&self, kind: Kind) {
        self.rejected_objects
            .get_or_create(&kind_labels(kind))
            .inc();
    }

    pub fn failed(&self, kind: Kind, failure: WatchFailure) {
        self.watch_failures
            .get_or_create(&FailureLabels {
                kind: kind.name().to_string(),
                reason: failure.as_str().to_string(),
            })
            .inc();
    }

    pub fn listed(&self, kind: Kind) {
        self.relists.get_or_create(&kind_labels(kind)).inc();
    }

    /// Rejected objects of every kind.
    pub fn rejected_total(&self) -> u64 {
        Kind::ALL
            .iter()
            .map(|&kind| {
                self.rejected_objects
                    .get_or_create(&kind_labels(kind))
                    .get()
            })
            .sum()
    }

    /// Completed lists of one kind.
    pub fn lists_of(&self, kind: Kind) -> u64 {
        self.relists.get_or_create(&kind_labels(kind)).get()
    }
}

fn kind_labels(kind: Kind) -> KindLabels {
    KindLabels {
        kind: kind.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_with_kind_labels() {
        let metrics = KubeSourceMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.rejected(Kind::AuthorizationPolicy);
        metrics.failed(Kind::ServiceEntry, WatchFailure::NotInstalled);
        metrics.listed(Kind::Pod);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kube_rejected_objects_total{kind=\"AuthorizationPolicy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kube_watch_failures_total{kind=\"ServiceEntry\",reason=\"not_installed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kube_relists_total{kind=\"Pod\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.rejected_total(), 1);
    }
}
