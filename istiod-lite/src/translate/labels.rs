//! Istio's labels and the decisions read from them.

use std::collections::BTreeMap;

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

pub type Labels = BTreeMap<String, String>;

fn get<'a>(labels: Option<&'a Labels>, key: &str) -> Option<&'a str> {
    labels.and_then(|l| l.get(key)).map(String::as_str)
}

/// Whether a pod is captured by ztunnel: the pod's own label decides when
/// present (only `ambient` enrols), else its namespace's label.
pub fn enrolled(pod: Option<&Labels>, namespace: Option<&Labels>) -> bool {
    match get(pod, DATAPLANE_MODE) {
        Some(mode) => mode == "ambient",
        None => get(namespace, DATAPLANE_MODE) == Some("ambient"),
    }
}

/// Telemetry name: Istio's canonical-name label, then the usual app labels,
/// then the workload's name.
pub fn canonical_name(labels: Option<&Labels>, workload_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| get(labels, k))
    .unwrap_or(workload_name)
    .to_string()
}

pub fn canonical_revision(labels: Option<&Labels>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| get(labels, k))
    .unwrap_or("latest")
    .to_string()
}

/// A use-waypoint binding read from one object's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaypointLabel {
    /// No label: defer to the less specific object.
    Absent,
    /// `none`: no waypoint, even if the namespace names one.
    OptOut,
    /// A waypoint by namespace and name.
    Named { namespace: String, name: String },
}

pub fn waypoint_label(labels: Option<&Labels>, own_namespace: &str) -> WaypointLabel {
    match get(labels, USE_WAYPOINT) {
        None => WaypointLabel::Absent,
        Some("none" | "#none") => WaypointLabel::OptOut,
        Some(name) => WaypointLabel::Named {
            namespace: get(labels, USE_WAYPOINT_NAMESPACE)
                .unwrap_or(own_namespace)
                .to_string(),
            name: name.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_label_wins_over_namespace() {
        let ambient = labels(&[(DATAPLANE_MODE, "ambient")]);
        let none = labels(&[(DATAPLANE_MODE, "none")]);
        let other = labels(&[(DATAPLANE_MODE, "sidecar")]);
        assert!(enrolled(None, Some(&ambient)));
        assert!(!enrolled(Some(&none), Some(&ambient)));
        assert!(!enrolled(Some(&other), Some(&ambient)));
        assert!(enrolled(Some(&ambient), None));
        assert!(!enrolled(None, None));
    }

    #[test]
    fn canonical_names_fall_back_in_order() {
        let l = labels(&[
            ("app", "a"),
            ("app.kubernetes.io/name", "b"),
            ("version", "v1"),
        ]);
        assert_eq!(canonical_name(Some(&l), "w"), "b");
        assert_eq!(canonical_name(None, "w"), "w");
        assert_eq!(canonical_revision(Some(&l)), "v1");
        assert_eq!(canonical_revision(None), "latest");
    }

    #[test]
    fn waypoint_labels() {
        assert_eq!(waypoint_label(None, "ns"), WaypointLabel::Absent);
        let l = labels(&[(USE_WAYPOINT, "#none")]);
        assert_eq!(waypoint_label(Some(&l), "ns"), WaypointLabel::OptOut);
        let l = labels(&[(USE_WAYPOINT, "wp"), (USE_WAYPOINT_NAMESPACE, "other")]);
        assert_eq!(
            waypoint_label(Some(&l), "ns"),
            WaypointLabel::Named {
                namespace: "other".into(),
                name: "wp".into()
            }
        );
    }
}
