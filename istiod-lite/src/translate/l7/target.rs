//! Resolving `targetRef`/`targetRefs` of waypoint-attached objects
//! (AuthorizationPolicy, RequestAuthentication) to a waypoint Gateway or a
//! Service bound to a waypoint. Both kinds attach by the same rules, so the
//! rules and the words that explain a refusal live here once.

use std::collections::{BTreeMap, BTreeSet};

use super::Notes;
use crate::model::istio::{PolicyTargetReference, WorkloadSelector};
use crate::model::{NamespacedName, ObjectKey, Store};
use crate::translate::waypoint::Waypoints;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What an object attaches to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Gateway(NamespacedName),
    Service(NamespacedName),
}

/// Attached objects by the waypoint Gateway or the Service they name.
#[derive(Debug)]
pub struct Attached<T> {
    pub gateways: BTreeMap<NamespacedName, Vec<T>>,
    pub services: BTreeMap<NamespacedName, Vec<T>>,
}

impl<T> Default for Attached<T> {
    fn default() -> Self {
        Attached {
            gateways: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

impl<T: Clone> Attached<T> {
    pub fn insert(&mut self, targets: &BTreeSet<Target>, item: &T) {
        for target in targets {
            let (into, key) = match target {
                Target::Gateway(key) => (&mut self.gateways, key),
                Target::Service(key) => (&mut self.services, key),
            };
            into.entry(key.clone()).or_default().push(item.clone());
        }
    }
}

/// What the resolution reads besides the object itself.
pub struct Scope<'a> {
    pub store: &'a Store,
    pub waypoints: &'a Waypoints,
    pub bound: &'a BTreeSet<NamespacedName>,
}

/// The targets of an object with `refs`, each listed once; every ref that
/// cannot attach is noted as `Accepted`=False `TargetNotFound`. `None`, with
/// `Accepted`=False `InvalidTarget`, when a selector is set as well, which
/// Istio does not allow.
pub fn resolve(
    object: &ObjectKey,
    selector: Option<&WorkloadSelector>,
    refs: &[&PolicyTargetReference],
    scope: &Scope<'_>,
    notes: &mut Notes,
) -> Option<BTreeSet<Target>> {
    if selector.is_some_and(|s| !s.match_labels.is_empty()) {
        notes.add(object, "Accepted", false, "InvalidTarget", format!(
            "the {} has both a selector and targetRef(s), which Istio does not allow; it is not applied",
            noun(object)
        ));
        return None;
    }
    let own_namespace = &object.name.namespace;
    let mut targets = BTreeSet::new();
    for (i, r) in refs.iter().enumerate() {
        let at = format!("targetRefs[{i}]");
        let target = NamespacedName::new(
            r.namespace.clone().unwrap_or_else(|| own_namespace.clone()),
            &r.name,
        );
        if &target.namespace != own_namespace {
            notes.add(object, "Accepted", false, "TargetNotFound", format!(
                "{at} names {} {target} in another namespace; a {} attaches only within its own namespace",
                r.kind,
                noun(object)
            ));
            continue;
        }
        let store = scope.store;
        let problem = match (r.group.as_str(), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") if scope.waypoints.is_waypoint(&target) => {
                targets.insert(Target::Gateway(target));
                continue;
            }
            (GATEWAY_GROUP, "Gateway") if store.gateways.contains_key(&target) => {
                format!("{at} names Gateway {target}, which is not of class istio-waypoint")
            }
            (GATEWAY_GROUP, "Gateway") => {
                format!("{at} names Gateway {target}, which does not exist")
            }
            ("" | "core", "Service") if scope.bound.contains(&target) => {
                targets.insert(Target::Service(target));
                continue;
            }
            ("" | "core", "Service") if store.services.contains_key(&target) => format!(
                "{at} names Service {target}, which is not bound to a waypoint; label it or its namespace istio.io/use-waypoint"
            ),
            ("" | "core", "Service") => {
                format!("{at} names Service {target}, which does not exist")
            }
            (group, kind) => format!(
                "{at} names kind {kind} of group \"{group}\"; a waypoint {} targets a Gateway ({GATEWAY_GROUP}) or a Service",
                noun(object)
            ),
        };
        notes.add(object, "Accepted", false, "TargetNotFound", problem);
    }
    Some(targets)
}

/// How messages call the object: AuthorizationPolicies are "policies".
fn noun(object: &ObjectKey) -> &'static str {
    match object.kind {
        crate::model::Kind::AuthorizationPolicy => "policy",
        _ => "RequestAuthentication",
    }
}
