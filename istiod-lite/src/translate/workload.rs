//! Pods to Workloads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use mesh_api::istio::workload::{Locality, TunnelProtocol, Workload, WorkloadStatus, WorkloadType};

use super::labels::{self, Labels};
use super::service::SelectorIndex;
use super::waypoint::{BindingSource, TrafficKind, Waypoints};
use super::{MeshConfig, condition, in_namespace, ip_bytes};
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

/// A Workload for every running pod with an IP, keyed by the pod, without
/// `authorization_policies` (filled in once policies are translated).
pub fn pod_workloads(
    store: &Store,
    mesh: &MeshConfig,
    waypoints: &Waypoints,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> BTreeMap<NamespacedName, Workload> {
    let mut out = BTreeMap::new();
    let namespaces: BTreeSet<&str> = store.pods.keys().map(|k| k.namespace.as_str()).collect();
    for ns in namespaces {
        let ns_key = NamespacedName::cluster(ns);
        let ns_labels = store
            .namespaces
            .get(&ns_key)
            .and_then(|n| n.metadata.labels.as_ref());
        let services = SelectorIndex::build(store, ns);
        for (key, pod) in in_namespace(&store.pods, ns) {
            let Some(mut w) = pod_workload(key, pod, ns_labels, mesh, conditions) else {
                continue;
            };
            w.services = services.services_of(pod, mesh);
            w.locality = store
                .nodes
                .get(&NamespacedName::cluster(&w.node))
                .and_then(|n| n.metadata.labels.as_ref())
                .and_then(locality);
            let own_labels = pod.metadata.labels.as_ref();
            // A waypoint's own pods never send their traffic to a waypoint.
            if !own_labels.is_some_and(|l| l.contains_key(labels::GATEWAY_NAME)) {
                w.waypoint = waypoints.resolve(
                    TrafficKind::Workload,
                    BindingSource {
                        kind: Kind::Pod,
                        key,
                        labels: own_labels,
                    },
                    BindingSource {
                        kind: Kind::Namespace,
                        key: &ns_key,
                        labels: ns_labels,
                    },
                    conditions,
                );
            }
            out.insert(key.clone(), w);
        }
    }
    out
}

/// The pod's own fields; None for pods ztunnel never sees: no IP yet,
/// finished, or on the host network.
pub fn pod_workload(
    key: &NamespacedName,
    pod: &Pod,
    namespace_labels: Option<&Labels>,
    mesh: &MeshConfig,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> Option<Workload> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref()?;
    if spec.and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut raw_ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw_ips.is_empty() {
        raw_ips.extend(status.pod_ip.as_deref());
    }
    let mut addresses = Vec::new();
    for raw in raw_ips {
        match raw.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip_bytes(ip)),
            Err(_) => {
                conditions.insert(condition(
                    Kind::Pod,
                    key,
                    "Accepted",
                    false,
                    "InvalidPodIP",
                    format!(
                        "status.podIPs has \"{raw}\", which is not an IP address; it is left out"
                    ),
                ));
            }
        }
    }
    if addresses.is_empty() {
        return None;
    }
    addresses.dedup();

    let pod_labels = pod.metadata.labels.as_ref();
    let (workload_type, workload_name) = owner(pod, &key.name);
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let healthy = ready && pod.metadata.deletion_timestamp.is_none();
    let tunnel = if labels::enrolled(pod_labels, namespace_labels) {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };

    Some(Workload {
        uid: format!("{}//Pod/{}/{}", mesh.cluster_id, key.namespace, key.name),
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        addresses,
        network: mesh.network.clone(),
        tunnel_protocol: tunnel as i32,
        trust_domain: mesh.trust_domain.clone(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        canonical_name: labels::canonical_name(pod_labels, &workload_name),
        canonical_revision: labels::canonical_revision(pod_labels),
        workload_type: workload_type as i32,
        workload_name,
        status: if healthy {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: mesh.cluster_id.clone(),
        ..Default::default()
    })
}

/// Workload type and name from the controlling owner: a ReplicaSet
/// `name-<hash>` is Deployment `name`; a Job `name-<digits>` was made by
/// CronJob `name`.
pub fn owner(pod: &Pod, pod_name: &str) -> (WorkloadType, String) {
    let owners = pod.metadata.owner_references.iter().flatten();
    let controller = owners
        .clone()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.clone().next());
    let Some(o) = controller else {
        return (WorkloadType::Pod, pod_name.to_string());
    };
    match o.kind.as_str() {
        "ReplicaSet" => match o.name.rsplit_once('-') {
            Some((base, _hash)) if !base.is_empty() => (WorkloadType::Deployment, base.to_string()),
            _ => (WorkloadType::Pod, pod_name.to_string()),
        },
        "Job" => match o.name.rsplit_once('-') {
            Some((base, suffix))
                if !base.is_empty()
                    && !suffix.is_empty()
                    && suffix.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (WorkloadType::Cronjob, base.to_string())
            }
            _ => (WorkloadType::Job, o.name.clone()),
        },
        _ => (WorkloadType::Pod, pod_name.to_string()),
    }
}

/// The pod's locality from its node's topology labels, if any is set.
fn locality(node_labels: &Labels) -> Option<Locality> {
    let get = |k: &str| node_labels.get(k).cloned().unwrap_or_default();
    let locality = Locality {
        region: get("topology.kubernetes.io/region"),
        zone: get("topology.kubernetes.io/zone"),
        subzone: get("topology.istio.io/subzone"),
    };
    (locality != Locality::default()).then_some(locality)
}
