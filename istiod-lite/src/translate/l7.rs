//! L7 configuration for waypoints: one `ambit.waypoint.v1.Waypoint` per
//! Gateway of class `istio-waypoint`, named `<namespace>/<name>`, holding the
//! Services bound to it (the same binding workload discovery uses) with their
//! ports, HTTPRoutes, GRPCRoutes and targetRef AuthorizationPolicies and
//! RequestAuthentications, and those attached to the Gateway itself.
//!
//! A pure function of the store and the fetched key sets. Routes and policies are copied, not
//! ordered or evaluated: the waypoint applies Gateway API precedence and
//! Istio's policy semantics (see the proto). Every list is sorted so equal
//! stores give byte-identical resources.
//!
//! Conditions (`type` / `reason`):
//! - HTTPRoute / GRPCRoute `Accepted`: True `Accepted`, or False
//!   `NoWaypoint` (parent Service not bound to a waypoint),
//!   `ConsumerRouteNotSupported`, `NoMatchingParent` (no such Service or
//!   port), `UnsupportedValue` (an unreadable match);
//!   `ResolvedRefs`: True, or False `BackendNotFound`, `InvalidKind`,
//!   `RefNotPermitted`; `PartiallyInvalid`=True `UnsupportedValue` (a filter
//!   or timeout left out) and `InvalidAnnotation` (retry or fault
//!   annotations left out).
//! - AuthorizationPolicy `Accepted`=False `TargetNotFound`, `InvalidTarget`
//!   (selector and targetRef together); `PartiallyEnforced`=True
//!   `CustomEnforcedAsDeny`.
//! - RequestAuthentication `Accepted`=False `TargetNotFound`,
//!   `InvalidTarget`, `NoTargetRefs`; `PartiallyInvalid`=True
//!   `MissingIssuer`, `ConflictingJwks` (rule left out), `InvalidJwks`
//!   (sent with no keys), `InvalidTimeout`; `KeysResolved`=False
//!   `Resolving`, `JwksFetchFailed` (sent with no keys until fetched).
//!
//! Not covered: ServiceEntries bound to a waypoint, consumer routes,
//! cross-namespace backends (ReferenceGrant), policies on workload traffic
//! beyond the Gateway-wide ones.

mod annotations;
mod authentication;
mod duration;
mod policy;
mod protocol;
mod route;
mod target;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_api::ambit::waypoint::v1 as wp;

use super::labels;
use super::waypoint::{BindingSource, TrafficKind, Waypoints};
use super::{MeshConfig, condition};
use crate::jwks::JwksCache;
use crate::model::{Kind, NamespacedName, ObjectCondition, ObjectKey, Store};

/// The waypoints' resources and the conditions their translation reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct L7 {
    /// Key = `<gateway namespace>/<gateway name>`.
    pub waypoints: BTreeMap<String, wp::Waypoint>,
    pub conditions: BTreeSet<ObjectCondition>,
}

/// `keys` holds the key sets fetched for `jwksUri`s and issuers; a rule whose
/// set is missing there is sent with no keys.
pub fn translate_waypoints(store: &Store, mesh: &MeshConfig, keys: &JwksCache) -> L7 {
    // Binding conditions are workload discovery's to report.
    let mut binding_conditions = BTreeSet::new();
    let waypoints = Waypoints::build(store, mesh, &mut binding_conditions);
    let bound = bound_services(store, &waypoints, &mut binding_conditions);
    let bound_keys: BTreeSet<NamespacedName> = bound.keys().cloned().collect();
    let mut notes = Notes::default();

    let cx = route::Context {
        store,
        mesh,
        bound: &bound_keys,
    };
    let mut routes: BTreeMap<NamespacedName, Vec<wp::Route>> = BTreeMap::new();
    for r in store.http_routes.values() {
        if let Ok(spec) = serde_json::to_value(&r.spec) {
            route::attach(
                wp::route::Kind::Http,
                &r.metadata,
                spec,
                &cx,
                &mut routes,
                &mut notes,
            );
        }
    }
    for r in store.grpc_routes.values() {
        if let Ok(spec) = serde_json::to_value(&r.spec) {
            route::attach(
                wp::route::Kind::Grpc,
                &r.metadata,
                spec,
                &cx,
                &mut routes,
                &mut notes,
            );
        }
    }
    let mut policies = policy::attach(store, mesh, &waypoints, &bound_keys, &mut notes);
    let mut authentications =
        authentication::attach(store, &waypoints, &bound_keys, keys, &mut notes);

    let mut out: BTreeMap<String, wp::Waypoint> = waypoints
        .names()
        .map(|key| {
            let resource = wp::Waypoint {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                services: Vec::new(),
                policies: policies.gateways.remove(key).unwrap_or_default(),
                authentications: authentications.gateways.remove(key).unwrap_or_default(),
            };
            (key.to_string(), resource)
        })
        .collect();
    for (svc_key, wp_key) in bound {
        let Some(waypoint) = out.get_mut(&wp_key.to_string()) else {
            continue;
        };
        let mut service = service(&svc_key, store, mesh);
        let mut svc_routes = routes.remove(&svc_key).unwrap_or_default();
        svc_routes
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        service.routes = svc_routes;
        service.policies = policies.services.remove(&svc_key).unwrap_or_default();
        service.authentications = authentications
            .services
            .remove(&svc_key)
            .unwrap_or_default();
        waypoint.services.push(service);
    }
    L7 {
        waypoints: out,
        conditions: notes.into_conditions(),
    }
}

/// Services whose traffic goes to a waypoint, with that waypoint's key.
fn bound_services(
    store: &Store,
    waypoints: &Waypoints,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> BTreeMap<NamespacedName, NamespacedName> {
    let mut bound = BTreeMap::new();
    for (key, svc) in &store.services {
        let own_labels = svc.metadata.labels.as_ref();
        // The waypoint's own Service never goes through a waypoint.
        if waypoints.is_waypoint(key)
            || own_labels.is_some_and(|l| l.contains_key(labels::GATEWAY_NAME))
        {
            continue;
        }
        let ns_key = NamespacedName::cluster(&key.namespace);
        let ns_labels = store
            .namespaces
            .get(&ns_key)
            .and_then(|n| n.metadata.labels.as_ref());
        let binding = waypoints.binding(
            TrafficKind::Service,
            BindingSource {
                kind: Kind::Service,
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
        if let Some((wp_key, _)) = binding {
            bound.insert(key.clone(), wp_key.clone());
        }
    }
    bound
}

/// A bound Service without its routes, policies and authentications.
fn service(key: &NamespacedName, store: &Store, mesh: &MeshConfig) -> wp::Service {
    let spec = store.services.get(key).and_then(|s| s.spec.as_ref());
    let listed = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
    let single = spec.and_then(|s| s.cluster_ip.clone());
    let raw = if listed.is_empty() {
        single.into_iter().collect()
    } else {
        listed
    };
    // Headless ("None") and invalid addresses have no VIP to select by.
    let addresses = raw
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
        .collect();
    let mut ports: Vec<wp::Port> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(protocol::port)
        .collect();
    ports.sort_by_key(|p| p.port);
    wp::Service {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        hostname: format!("{}.{}.svc.{}", key.name, key.namespace, mesh.cluster_domain),
        addresses,
        ports,
        routes: Vec::new(),
        policies: Vec::new(),
        authentications: Vec::new(),
    }
}

/// Conditions collected while translating, one per object, type and reason:
/// the messages of several findings with the same reason are joined.
#[derive(Default)]
pub struct Notes {
    by_reason: BTreeMap<(ObjectKey, String, String), (bool, BTreeSet<String>)>,
}

impl Notes {
    pub fn add(
        &mut self,
        object: &ObjectKey,
        type_: &str,
        status: bool,
        reason: &str,
        message: String,
    ) {
        self.by_reason
            .entry((object.clone(), type_.to_string(), reason.to_string()))
            .or_insert_with(|| (status, BTreeSet::new()))
            .1
            .insert(message);
    }

    /// Whether a False condition of `type_` was noted on `object`.
    pub fn has_false(&self, object: &ObjectKey, type_: &str) -> bool {
        let from = (object.clone(), type_.to_string(), String::new());
        self.by_reason
            .range(from..)
            .take_while(|((o, t, _), _)| o == object && t == type_)
            .any(|(_, (status, _))| !status)
    }

    fn into_conditions(self) -> BTreeSet<ObjectCondition> {
        self.by_reason
            .into_iter()
            .map(|((object, type_, reason), (status, messages))| {
                let message = messages.into_iter().collect::<Vec<_>>().join("; ");
                condition(object.kind, &object.name, &type_, status, &reason, message)
            })
            .collect()
    }
}
