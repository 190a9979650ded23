//! What a waypoint Gateway's status and a bound Service's status say, from
//! the registry alone: `Accepted` (a valid waypoint), `Programmed` (its
//! Service has an address and a ready pod behind it), `status.addresses`,
//! and `istio.io/WaypointBound` on Services bound to a waypoint.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::{GATEWAY_NAME, HBONE_PORT, WaypointGateway, waypoint_gateways};
use crate::model::{Kind, NamespacedName, ObjectCondition, ObjectKey, StatusAddress, Store};
use crate::translate::labels::{self, WaypointLabel};

/// Istio's condition type for a Service's waypoint binding.
pub const WAYPOINT_BOUND: &str = "istio.io/WaypointBound";

/// Conditions and addresses provisioning reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProvisionStatus {
    pub conditions: Vec<ObjectCondition>,
    pub addresses: BTreeMap<ObjectKey, Vec<StatusAddress>>,
}

fn condition(
    kind: Kind,
    name: &NamespacedName,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> ObjectCondition {
    ObjectCondition {
        object: ObjectKey {
            kind,
            name: name.clone(),
        },
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
    }
}

/// The status of every waypoint Gateway and of every Service bound to one.
pub fn status(store: &Store, cluster_domain: &str) -> ProvisionStatus {
    let mut out = ProvisionStatus::default();
    let waypoints = waypoint_gateways(store);
    for gw in &waypoints {
        gateway_status(store, gw, cluster_domain, &mut out);
    }
    out.conditions.extend(binding_conditions(store, &waypoints));
    out
}

/// Why a waypoint Gateway is not acceptable, if it is not.
pub fn invalid_reason(store: &Store, gw: &WaypointGateway) -> Option<(&'static str, String)> {
    if !matches!(
        gw.waypoint_for.as_str(),
        "service" | "workload" | "all" | "none"
    ) {
        return Some((
            "UnsupportedValue",
            format!(
                "label {} has value \"{}\"; expected service, workload, all or none",
                labels::WAYPOINT_FOR,
                gw.waypoint_for
            ),
        ));
    }
    let listeners = store
        .gateways
        .get(&gw.key)
        .map(|g| g.spec.listeners.as_slice())
        .unwrap_or_default();
    let hbone = listeners
        .iter()
        .any(|l| l.port == HBONE_PORT && l.protocol == "HBONE");
    if !hbone {
        let found = if listeners.is_empty() {
            "it has no listeners".to_string()
        } else {
            format!(
                "it has {}",
                listeners
                    .iter()
                    .map(|l| format!("{} (port {}, protocol {})", l.name, l.port, l.protocol))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Some((
            "ListenersNotValid",
            format!(
                "a waypoint needs a listener `mesh` on port {HBONE_PORT} with protocol HBONE; {found}"
            ),
        ));
    }
    None
}

fn gateway_status(
    store: &Store,
    gw: &WaypointGateway,
    cluster_domain: &str,
    out: &mut ProvisionStatus,
) {
    let key = &gw.key;
    if let Some((reason, message)) = invalid_reason(store, gw) {
        out.conditions.push(condition(
            Kind::Gateway,
            key,
            "Accepted",
            false,
            reason,
            message,
        ));
        out.conditions.push(condition(
            Kind::Gateway,
            key,
            "Programmed",
            false,
            "Invalid",
            "the Gateway is not accepted, so no waypoint serves it".into(),
        ));
        return;
    }
    out.conditions.push(condition(
        Kind::Gateway,
        key,
        "Accepted",
        true,
        "Accepted",
        format!("waypoint for {}", gw.waypoint_for),
    ));
    let service = store.services.get(key);
    let cluster_ip = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None");
    let address = match cluster_ip {
        Some(ip) => StatusAddress {
            type_: "IPAddress".into(),
            value: ip.to_string(),
        },
        None => StatusAddress {
            type_: "Hostname".into(),
            value: format!("{}.{}.svc.{cluster_domain}", key.name, key.namespace),
        },
    };
    if service.is_some() {
        out.addresses.insert(
            ObjectKey {
                kind: Kind::Gateway,
                name: key.clone(),
            },
            vec![address],
        );
    }
    let ready = ready_pod(store, key);
    let (programmed, reason, message) = match (service, cluster_ip, ready) {
        (None, _, _) => (
            false,
            "Pending",
            format!("waiting for the waypoint Service {key}"),
        ),
        (Some(_), None, _) => (
            false,
            "Pending",
            format!("the waypoint Service {key} has no ClusterIP yet"),
        ),
        (Some(_), Some(ip), None) => (
            false,
            "Pending",
            format!("the waypoint Service {key} has address {ip} but no ready waypoint pod yet"),
        ),
        (Some(_), Some(ip), Some((pod, pod_ip))) => (
            true,
            "Programmed",
            format!("waypoint at {ip}, served by pod {pod} ({pod_ip})"),
        ),
    };
    out.conditions.push(condition(
        Kind::Gateway,
        key,
        "Programmed",
        programmed,
        reason,
        message,
    ));
}

/// The first (by name) running, ready pod of a waypoint, with its IP.
fn ready_pod(store: &Store, gw: &NamespacedName) -> Option<(String, String)> {
    store
        .pods
        .iter()
        .filter(|(key, pod)| {
            key.namespace == gw.namespace
                && pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(GATEWAY_NAME))
                    .is_some_and(|name| *name == gw.name)
        })
        .find_map(|(key, pod)| Some((key.name.clone(), pod_ready_ip(pod)?)))
}

/// A pod's IP when it is running and not reported unready.
fn pod_ready_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let unready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status != "True");
    if unready {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// `istio.io/WaypointBound=True` on each Service whose traffic goes to a
/// waypoint (its own `istio.io/use-waypoint`, else its namespace's). The
/// broken bindings' `False` conditions come from translation, which is where
/// the decision not to use the waypoint is made.
pub fn binding_conditions(store: &Store, waypoints: &[WaypointGateway]) -> Vec<ObjectCondition> {
    let by_key: BTreeMap<&NamespacedName, &WaypointGateway> =
        waypoints.iter().map(|w| (&w.key, w)).collect();
    let mut out = Vec::new();
    for (key, service) in &store.services {
        if by_key.contains_key(key) {
            continue;
        }
        let own = labels::waypoint_label(service.metadata.labels.as_ref(), &key.namespace);
        let (label, via) = match own {
            WaypointLabel::Absent => {
                let ns_labels = store
                    .namespaces
                    .get(&NamespacedName::cluster(&key.namespace))
                    .and_then(|ns| ns.metadata.labels.as_ref());
                (
                    labels::waypoint_label(ns_labels, &key.namespace),
                    " (from its namespace's label)",
                )
            }
            label => (label, ""),
        };
        let WaypointLabel::Named { namespace, name } = label else {
            continue;
        };
        let wp_key = NamespacedName::new(namespace, name);
        let Some(waypoint) = by_key.get(&wp_key) else {
            continue;
        };
        if matches!(waypoint.waypoint_for.as_str(), "service" | "all")
            && invalid_reason(store, waypoint).is_none()
        {
            out.push(condition(
                Kind::Service,
                key,
                WAYPOINT_BOUND,
                true,
                "WaypointAccepted",
                format!("bound to waypoint {wp_key}{via}"),
            ));
        }
    }
    out
}

/// Translation's conditions with provisioning's: for the same object and
/// condition type, provisioning's wins (it also judges the Gateway's
/// listeners, translation only its label).
pub fn merge(
    translation: &[ObjectCondition],
    provision: &[ObjectCondition],
) -> Vec<ObjectCondition> {
    let ours: std::collections::BTreeSet<(&ObjectKey, &str)> = provision
        .iter()
        .map(|c| (&c.object, c.type_.as_str()))
        .collect();
    let mut merged: Vec<ObjectCondition> = translation
        .iter()
        .filter(|c| !ours.contains(&(&c.object, c.type_.as_str())))
        .cloned()
        .collect();
    merged.extend(provision.iter().cloned());
    merged.sort();
    merged
}
