//! xDS client metrics (spec 7.2): stream terminations by reason, messages and
//! bytes received by type URL, and the resources refused by type URL.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UrlLabel {
    pub url: String,
}

/// Why a stream ended, as Istio names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// The stream could not be opened.
    ConnectionError,
    /// An open stream failed.
    Error,
    /// The server ended the stream cleanly.
    Complete,
}

impl Termination {
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::ConnectionError => "ConnectionError",
            Termination::Error => "Error",
            Termination::Complete => "Complete",
        }
    }
}

/// Counters of one client; unregistered (counting into nothing) by default.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    pub terminations: Family<ReasonLabel, Counter>,
    pub messages: Family<UrlLabel, Counter>,
    pub message_bytes: Family<UrlLabel, Counter>,
    pub rejected: Family<UrlLabel, Counter>,
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<XdsMetrics> {
        let m = XdsMetrics::default();
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "xds_connection_terminations",
            "xDS streams ended, by reason",
            m.terminations.clone(),
        );
        istio.register(
            "xds_message",
            "xDS responses received, by type URL",
            m.messages.clone(),
        );
        istio.register(
            "xds_message_bytes",
            "Bytes of xDS responses received, by type URL",
            m.message_bytes.clone(),
        );
        registry.sub_registry_with_prefix("ambit").register(
            "xds_rejected_resources",
            "xDS resources refused (NACKed), by type URL",
            m.rejected.clone(),
        );
        std::sync::Arc::new(m)
    }

    pub fn terminated(&self, why: Termination) {
        self.terminations
            .get_or_create(&ReasonLabel {
                reason: why.as_str().into(),
            })
            .inc();
    }

    pub fn received(&self, url: &str, bytes: usize, rejected: usize) {
        let label = UrlLabel { url: url.into() };
        self.messages.get_or_create(&label).inc();
        self.message_bytes
            .get_or_create(&label)
            .inc_by(bytes as u64);
        if rejected > 0 {
            self.rejected.get_or_create(&label).inc_by(rejected as u64);
        }
    }
}
