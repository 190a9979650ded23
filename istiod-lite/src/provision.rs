//! Waypoint provisioning: for every Gateway of class `istio-waypoint`, the
//! objects that run its waypoint (a ServiceAccount and a Service named after
//! the Gateway, and a Deployment on Kubernetes or a Pod in directory mode),
//! the Gateway's status (`Accepted`, `Programmed`, `status.addresses`) and
//! the `istio.io/WaypointBound` condition of bound Services.
//!
//! What to create and what status to report are pure functions of the
//! registry (`objects`, `placement`, `status`); `dir` and `kube` write the
//! result, the former as one generated file in the watched directory, the
//! latter with server-side apply.

pub mod dir;
pub mod kube;
pub mod objects;
pub mod placement;
pub mod status;

#[cfg(test)]
mod tests;

use crate::model::{NamespacedName, Store};
use crate::translate::labels;
pub use crate::translate::waypoint::WAYPOINT_CLASS;

/// The waypoint's HBONE port, its Service's `mesh` port.
pub const HBONE_PORT: i32 = 15008;
/// The waypoint's readiness and status port.
pub const STATUS_PORT: i32 = 15021;
/// Field manager of server-side apply, and `app.kubernetes.io/managed-by`.
pub const FIELD_MANAGER: &str = "istiod-lite";
pub use labels::GATEWAY_NAME;

/// What the waypoint objects take from istiod-lite's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Container image of waypoint Deployments (Kubernetes).
    pub image: String,
    /// Where waypoints reach xDS and the CA, e.g. `https://istiod.istio-system.svc:15012`.
    pub xds_address: String,
    /// The name on istiod-lite's serving certificate.
    pub xds_server_name: String,
    pub trust_domain: String,
    /// ConfigMap (in the waypoint's namespace) holding `root-cert.pem`.
    pub root_cert_config_map: String,
    /// The CA root (PEM) written to that ConfigMap; none written when empty.
    pub root_cert_pem: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: default_image(),
            xds_address: "https://istiod.istio-system.svc:15012".into(),
            xds_server_name: "istiod.istio-system.svc".into(),
            trust_domain: "cluster.local".into(),
            root_cert_config_map: "istio-ca-root-cert".into(),
            root_cert_pem: String::new(),
        }
    }
}

/// `ghcr.io/ambit-mesh/waypoint:<this version>`.
pub fn default_image() -> String {
    format!("ghcr.io/ambit-mesh/waypoint:{}", env!("CARGO_PKG_VERSION"))
}

/// A Gateway of class `istio-waypoint`, as provisioning needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointGateway {
    pub key: NamespacedName,
    /// The Gateway's uid (owner references need it; the API server sets it).
    pub uid: Option<String>,
    /// The `istio.io/waypoint-for` label, `service` when absent.
    pub waypoint_for: String,
    /// `spec.infrastructure.labels`: Gateway API's labels for the objects
    /// an implementation generates for the Gateway.
    pub infrastructure_labels: std::collections::BTreeMap<String, String>,
}

/// Every Gateway of class `istio-waypoint`, by namespace/name.
pub fn waypoint_gateways(store: &Store) -> Vec<WaypointGateway> {
    store
        .gateways
        .iter()
        .filter(|(_, gw)| gw.spec.gateway_class_name == WAYPOINT_CLASS)
        .map(|(key, gw)| WaypointGateway {
            key: key.clone(),
            uid: gw.metadata.uid.clone(),
            waypoint_for: gw
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::WAYPOINT_FOR))
                .cloned()
                .unwrap_or_else(|| "service".into()),
            infrastructure_labels: gw
                .spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.labels.clone())
                .unwrap_or_default(),
        })
        .collect()
}
