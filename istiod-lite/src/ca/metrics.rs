//! The CA's counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::RefusalReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    pub signed: Counter,
    pub refused: Family<ReasonLabels, Counter>,
}

impl CaMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = CaMetrics::default();
        registry.register(
            "istiod_ca_certificates_signed",
            "Workload certificates signed",
            metrics.signed.clone(),
        );
        registry.register(
            "istiod_ca_certificates_refused",
            "Certificate requests refused, by reason",
            metrics.refused.clone(),
        );
        metrics
    }

    pub fn refused(&self, reason: RefusalReason) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// The refusals counted for `reason` so far.
    pub fn refused_count(&self, reason: RefusalReason) -> u64 {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_string(),
            })
            .get()
    }
}
