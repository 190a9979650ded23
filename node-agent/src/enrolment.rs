//! Whether a pod belongs in the mesh: a pure decision over the pod's and its
//! namespace's labels, so every rule is one row of a table test.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The label that enrols (`ambient`) or opts out (`none`).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Present on pods that run an Istio sidecar: those are never captured twice.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Pod annotation: keep inbound traffic out of capture (ingress gateways).
pub const BYPASS_INBOUND: &str = "ambient.istio.io/bypass-inbound-capture";

/// What the decision looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts<'a> {
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub host_network: bool,
    pub node_name: Option<&'a str>,
}

impl<'a> PodFacts<'a> {
    pub fn of(pod: &'a Pod) -> PodFacts<'a> {
        let spec = pod.spec.as_ref();
        PodFacts {
            labels: pod.metadata.labels.as_ref(),
            annotations: pod.metadata.annotations.as_ref(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node_name: spec.and_then(|s| s.node_name.as_deref()),
        }
    }
}

/// The outcome, with the reason a pod stays out (shown in `/debug/pods`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Enrol,
    Skip(SkipReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the pod nor its namespace asks for ambient.
    NotLabelled,
    /// The pod's label says `none` (ztunnel's own pods are labelled so).
    PodOptOut,
    /// The pod shares the node's network namespace: nothing to redirect.
    HostNetwork,
    /// The pod runs a sidecar proxy.
    Sidecar,
    /// The pod is scheduled to another node.
    OtherNode,
    /// The registry had the pod and no longer has it: it is being deleted.
    Deleted,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotLabelled => "not labelled",
            SkipReason::PodOptOut => "pod opts out",
            SkipReason::HostNetwork => "host network",
            SkipReason::Sidecar => "sidecar",
            SkipReason::OtherNode => "other node",
            SkipReason::Deleted => "deleted",
        }
    }
}

impl Decision {
    pub fn enrolled(self) -> bool {
        self == Decision::Enrol
    }
}

/// Decides for a pod on `node`. The pod's own `istio.io/dataplane-mode`
/// wins over its namespace's; a value other than `ambient` or `none` counts
/// as unset, as Istio reads it.
pub fn decide(
    pod: &PodFacts<'_>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    node: &str,
) -> Decision {
    if pod.node_name.is_some_and(|n| !n.is_empty() && n != node) {
        return Decision::Skip(SkipReason::OtherNode);
    }
    if pod.host_network {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if pod
        .annotations
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS))
    {
        return Decision::Skip(SkipReason::Sidecar);
    }
    let mode = |labels: Option<&BTreeMap<String, String>>| match labels
        .and_then(|l| l.get(DATAPLANE_MODE))
        .map(String::as_str)
    {
        Some("ambient") => Some(true),
        Some("none") => Some(false),
        _ => None,
    };
    match mode(pod.labels).or_else(|| mode(namespace_labels).filter(|&on| on)) {
        Some(true) => Decision::Enrol,
        Some(false) => Decision::Skip(SkipReason::PodOptOut),
        None => Decision::Skip(SkipReason::NotLabelled),
    }
}

/// Decides for a pod from registry objects; a pod the registry does not know
/// yet is judged by its namespace alone.
pub fn decide_objects(pod: Option<&Pod>, namespace: Option<&Namespace>, node: &str) -> Decision {
    let facts = pod.map(PodFacts::of).unwrap_or_default();
    decide(
        &facts,
        namespace.and_then(|ns| ns.metadata.labels.as_ref()),
        node,
    )
}

/// Decides for a pod the agent knows from CNI: `pod` is the registry's
/// object of that name with the same uid, if any. A pod the registry showed
/// before and no longer shows is on its way out and leaves the mesh; one it
/// has not shown yet is judged by its namespace.
pub fn decide_known(
    pod: Option<&Pod>,
    seen_before: bool,
    namespace: Option<&Namespace>,
    node: &str,
) -> Decision {
    if pod.is_none() && seen_before {
        return Decision::Skip(SkipReason::Deleted);
    }
    decide_objects(pod, namespace, node)
}

/// Whether the pod keeps inbound traffic out of capture.
pub fn bypasses_inbound(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.metadata.annotations.as_ref())
        .and_then(|a| a.get(BYPASS_INBOUND))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(mode: Option<&str>) -> Option<BTreeMap<String, String>> {
        mode.map(|m| BTreeMap::from([(DATAPLANE_MODE.to_string(), m.to_string())]))
    }

    /// (pod label, namespace label, host network, sidecar, node, expected)
    type Row = (
        Option<&'static str>,
        Option<&'static str>,
        bool,
        bool,
        Option<&'static str>,
        Decision,
    );

    #[test]
    fn the_enrolment_table() {
        use Decision::*;
        use SkipReason::*;
        let sidecar = BTreeMap::from([(SIDECAR_STATUS.to_string(), "{}".to_string())]);
        // (pod label, namespace label, host network, sidecar, node, expected)
        let rows: &[Row] = &[
            (None, None, false, false, None, Skip(NotLabelled)),
            (None, Some("ambient"), false, false, None, Enrol),
            (Some("ambient"), None, false, false, None, Enrol),
            (
                Some("none"),
                Some("ambient"),
                false,
                false,
                None,
                Skip(PodOptOut),
            ),
            (Some("ambient"), Some("none"), false, false, None, Enrol),
            (None, Some("none"), false, false, None, Skip(NotLabelled)),
            (Some("sidecar"), Some("ambient"), false, false, None, Enrol),
            (Some("bogus"), None, false, false, None, Skip(NotLabelled)),
            (None, Some("ambient"), true, false, None, Skip(HostNetwork)),
            (Some("ambient"), None, true, false, None, Skip(HostNetwork)),
            (None, Some("ambient"), false, true, None, Skip(Sidecar)),
            (None, Some("ambient"), false, false, Some("node-a"), Enrol),
            (
                None,
                Some("ambient"),
                false,
                false,
                Some("node-b"),
                Skip(OtherNode),
            ),
            (None, Some("ambient"), false, false, Some(""), Enrol),
        ];
        for (i, (pod, ns, host, has_sidecar, node, want)) in rows.iter().enumerate() {
            let pod_labels = labels(*pod);
            let ns_labels = labels(*ns);
            let facts = PodFacts {
                labels: pod_labels.as_ref(),
                annotations: has_sidecar.then_some(&sidecar),
                host_network: *host,
                node_name: *node,
            };
            assert_eq!(
                decide(&facts, ns_labels.as_ref(), "node-a"),
                *want,
                "row {i}: pod {pod:?} namespace {ns:?} host network {host} sidecar {has_sidecar} node {node:?}"
            );
        }
    }

    #[test]
    fn a_pod_the_registry_does_not_know_follows_its_namespace() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {DATAPLANE_MODE: "ambient"}}
        }))
        .unwrap();
        assert_eq!(decide_objects(None, Some(&ns), "n"), Decision::Enrol);
        assert_eq!(
            decide_objects(None, None, "n"),
            Decision::Skip(SkipReason::NotLabelled)
        );
    }

    #[test]
    fn a_pod_gone_from_the_registry_leaves() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {DATAPLANE_MODE: "ambient"}}
        }))
        .unwrap();
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(
            decide_known(None, true, Some(&ns), "n"),
            Decision::Skip(SkipReason::Deleted)
        );
        assert_eq!(decide_known(None, false, Some(&ns), "n"), Decision::Enrol);
        assert_eq!(
            decide_known(Some(&pod), true, Some(&ns), "n"),
            Decision::Enrol
        );
    }

    #[test]
    fn the_bypass_annotation_is_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw", "annotations": {BYPASS_INBOUND: "true"}}
        }))
        .unwrap();
        assert!(bypasses_inbound(Some(&pod)));
        assert!(!bypasses_inbound(None));
    }
}
