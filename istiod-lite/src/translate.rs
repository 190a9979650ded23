//! Translation: a pure function from the registry's `Store` to the workload xDS
//! resources ztunnel consumes (`Address` = Workload or Service, `Authorization`),
//! the L7 configuration waypoints consume (`ambit.waypoint.v1.Waypoint`, see
//! `l7`), plus the status conditions that explain where the output differs
//! from what the user wrote.
//!
//! The output is deterministic: every map is a `BTreeMap`, every list built here
//! is sorted, and nothing depends on time or iteration counters, so resource
//! versions (digests of the encoded bytes) change only when content changes, and
//! a change to one pod changes only that pod's Workload.
//!
//! Conditions (`type` / `reason`), one per object and reason:
//! - AuthorizationPolicy `PartiallyEnforced`: `L7RuleDroppedAtL4` (an ALLOW
//!   rule using L7 attributes matches nothing), `L7DenyEnforcedAtL4` (a DENY
//!   rule denies everything its L4 part matches), `L7DenyLeftToWaypoint`;
//!   `InvalidValues`/`InvalidRuleValue`; `ZtunnelEnforced`=False for
//!   waypoint-targeted policies and AUDIT/CUSTOM actions.
//! - Pod / Service / ServiceEntry / Namespace `WaypointBound`=False:
//!   `WaypointNotFound`, `WaypointNotForThisKind`.
//! - PeerAuthentication `PortLevelMtlsIgnored`; ServiceEntry parts not covered;
//!   invalid cluster or pod IPs; Gateway `InvalidWaypointFor`.
//! - HTTPRoute / GRPCRoute `Accepted`, `ResolvedRefs`, `PartiallyInvalid`;
//!   targetRef AuthorizationPolicy `Accepted`, `PartiallyEnforced`;
//!   RequestAuthentication `Accepted`, `PartiallyInvalid`, `KeysResolved`
//!   (see `l7`).
//!
//! Not covered: ServiceEntry DNS resolution and hostname endpoints, wildcard
//! ServiceEntry hosts, `waypoint-for` on a GatewayClass, load balancing settings,
//! WorkloadEntry, multi-network gateways.

mod authorization;
mod incremental;
mod l7;
pub(crate) mod labels;
mod peer_authentication;
mod service;
mod service_entry;
pub(crate) mod waypoint;
mod workload;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_api::ambit::waypoint::v1::Waypoint;
use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{Address, Workload, address};

use crate::jwks::JwksCache;
use crate::model::{Kind, NamespacedName, ObjectCondition, ObjectKey, Store};

pub use incremental::{Touched, Translator};

/// Mesh-wide settings translation depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Cluster id written into workload uids and `cluster_id`.
    pub cluster_id: String,
    /// Policies here without a selector apply mesh-wide.
    pub root_namespace: String,
    /// DNS suffix of Service hostnames.
    pub cluster_domain: String,
    /// Network of every address; "" is the default network.
    pub network: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            cluster_id: "Kubernetes".to_string(),
            root_namespace: "istio-system".to_string(),
            cluster_domain: "cluster.local".to_string(),
            network: String::new(),
        }
    }
}

/// Everything translation produces from one `Store`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    /// Key = xDS resource name: a Workload's uid, a Service's `ns/hostname`.
    pub addresses: BTreeMap<String, Address>,
    /// Key = `ns/name`.
    pub authorizations: BTreeMap<String, Authorization>,
    /// L7 configuration per waypoint; key = the Gateway's `ns/name`.
    pub waypoints: BTreeMap<String, Waypoint>,
    /// Sorted and free of duplicates.
    pub conditions: Vec<ObjectCondition>,
}

/// Translates the whole store, before any key set is fetched (rules with a
/// `jwksUri` or none get no keys).
pub fn translate(store: &Store, mesh: &MeshConfig) -> Translation {
    translate_with_keys(store, mesh, &JwksCache::default())
}

/// Translates the whole store with the key sets fetched so far.
pub fn translate_with_keys(store: &Store, mesh: &MeshConfig, keys: &JwksCache) -> Translation {
    let mut out = translate_workloads(store, mesh);
    let l7 = l7::translate_waypoints(store, mesh, keys);
    out.waypoints = l7.waypoints;
    out.conditions = merge_conditions(&out.conditions, &l7.conditions);
    out
}

/// Sorted and free of duplicates: a condition both parts report once.
pub(crate) fn merge_conditions(
    workloads: &[ObjectCondition],
    l7: &BTreeSet<ObjectCondition>,
) -> Vec<ObjectCondition> {
    let mut all: BTreeSet<ObjectCondition> = workloads.iter().cloned().collect();
    all.extend(l7.iter().cloned());
    all.into_iter().collect()
}

/// Workload discovery and L4 policy: everything but the waypoints' L7
/// resources (`waypoints` is empty, `conditions` are this part's).
pub(crate) fn translate_workloads(store: &Store, mesh: &MeshConfig) -> Translation {
    let mut conditions = BTreeSet::new();
    let waypoints = waypoint::Waypoints::build(store, mesh, &mut conditions);

    let mut addresses = BTreeMap::new();
    for svc in store.services.values() {
        if let Some(resource) =
            service::service_resource(svc, store, mesh, &waypoints, &mut conditions)
        {
            addresses.insert(
                service_key(&resource.namespace, &resource.hostname),
                address_of_service(resource),
            );
        }
    }

    let mut pods = workload::pod_workloads(store, mesh, &waypoints, &mut conditions);
    let pods_by_ip = index_by_ip(&pods);
    let mut extra_workloads =
        service::endpoint_slice_workloads(store, mesh, &mut pods, &pods_by_ip);
    let entries = service_entry::translate_service_entries(
        store,
        mesh,
        &waypoints,
        &mut pods,
        &mut conditions,
    );
    extra_workloads.extend(entries.workloads);
    for svc in entries.services {
        let key = service_key(&svc.namespace, &svc.hostname);
        if addresses.contains_key(&key) {
            conditions.insert(condition(
                Kind::ServiceEntry,
                &NamespacedName::new(&svc.namespace, &svc.name),
                "Accepted",
                false,
                "HostConflict",
                format!(
                    "host {} is also a Kubernetes Service hostname in this namespace; the Service is used and this host is ignored",
                    svc.hostname
                ),
            ));
            continue;
        }
        addresses.insert(key, address_of_service(svc));
    }

    let mut policies = authorization::translate_policies(store, mesh, &pods, &mut conditions);
    let peer = peer_authentication::translate_peer_authentications(store, mesh, &mut conditions);
    let mut authorizations = std::mem::take(&mut policies.authorizations);

    for (key, workload) in pods.iter_mut() {
        let mut keys: BTreeSet<String> = policies.selected_keys(key, store);
        keys.extend(peer.keys_for(key, store));
        workload.authorization_policies = keys.into_iter().collect();
    }

    authorizations.extend(peer.authorizations);

    for w in pods.into_values().chain(extra_workloads) {
        addresses.insert(
            w.uid.clone(),
            Address {
                r#type: Some(address::Type::Workload(w)),
            },
        );
    }

    Translation {
        addresses,
        authorizations,
        waypoints: BTreeMap::new(),
        conditions: conditions.into_iter().collect(),
    }
}

/// The xDS name of a Service resource.
pub(crate) fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

fn address_of_service(svc: mesh_api::istio::workload::Service) -> Address {
    Address {
        r#type: Some(address::Type::Service(svc)),
    }
}

/// Pod workloads by each of their IPs, for EndpointSlice addresses.
fn index_by_ip(pods: &BTreeMap<NamespacedName, Workload>) -> BTreeMap<IpAddr, NamespacedName> {
    let mut by_ip = BTreeMap::new();
    for (key, w) in pods {
        for raw in &w.addresses {
            if let Some(ip) = ip_from_bytes(raw) {
                by_ip.entry(ip).or_insert_with(|| key.clone());
            }
        }
    }
    by_ip
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub(crate) use mesh_core::xds::ip_from_bytes;

/// Objects of one namespace in a store map (keys sort by namespace first).
pub(crate) fn in_namespace<'a, T>(
    map: &'a BTreeMap<NamespacedName, T>,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a NamespacedName, &'a T)> + 'a {
    map.range(NamespacedName::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
}

/// `selector` is non-empty and every entry is among `labels`.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty()
        && labels.is_some_and(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

pub(crate) fn condition(
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
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
    }
}
