//! The node agent's counters, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `enrol` or `unenrol`.
    pub operation: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
    /// Why it failed (`rules`, `no_ztunnel`, `nack`, `netns`...), empty on success.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    pub command: &'static str,
    /// `ok`, `failed`, or `invalid` (a request that could not be read).
    pub result: &'static str,
}

/// Cheap to clone; clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub pods_enrolled: Gauge,
    pub operations: Family<OperationLabels, Counter>,
    pub zds_connections: Gauge,
    pub zds_connections_total: Counter,
    pub cni_requests: Family<CniLabels, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_agent_pods_enrolled",
            "Pods of this node currently enrolled in the mesh",
            self.pods_enrolled.clone(),
        );
        registry.register(
            "node_agent_operations",
            "Enrol and unenrol operations by result and failure reason",
            self.operations.clone(),
        );
        registry.register(
            "node_agent_zds_connections",
            "ztunnels connected over ZDS (snapshot sent)",
            self.zds_connections.clone(),
        );
        registry.register(
            "node_agent_zds_connections_accepted",
            "ZDS connections accepted since start",
            self.zds_connections_total.clone(),
        );
        registry.register(
            "node_agent_cni_requests",
            "Requests from the CNI plugin by command and result",
            self.cni_requests.clone(),
        );
    }

    pub fn operation(&self, operation: &'static str, outcome: Result<(), &'static str>) {
        let (result, reason) = match outcome {
            Ok(()) => ("ok", ""),
            Err(reason) => ("failed", reason),
        };
        self.operations
            .get_or_create(&OperationLabels {
                operation,
                result,
                reason,
            })
            .inc();
    }

    pub fn cni(&self, command: &'static str, result: &'static str) {
        self.cni_requests
            .get_or_create(&CniLabels { command, result })
            .inc();
    }
}
