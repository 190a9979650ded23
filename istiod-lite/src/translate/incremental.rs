//! Incremental translation: after a change, only the namespaces it touched
//! are translated again, and the result is exactly what a full translation
//! of the new store gives.
//!
//! Almost every resource depends only on objects of its own namespace, the
//! root namespace and a few cluster-wide inputs (nodes, waypoint Gateways
//! and their Services): Service selectors, policies, PeerAuthentications and
//! ServiceEntries act within their namespace. So the translation of the
//! namespaces a change touched is the full translation of a store holding
//! just those namespaces plus the root namespace and the cluster-wide
//! inputs, and the other namespaces' resources stay as they were. Changes
//! whose effects cross namespaces are translated in full:
//! - anything in the root namespace (mesh-wide policies), any Node or
//!   Gateway, a Service that is a waypoint's (its address);
//! - the first PeerAuthentication added or the last removed (the shared
//!   static STRICT policy);
//! - while a root-namespace DENY policy with L7 rules selects workloads (it
//!   depends on every selected pod's waypoint);
//! - an EndpointSlice of a selector-less Service listing the IP of a pod in
//!   another namespace, when either namespace is touched (endpoints are
//!   matched to pods by IP, across namespaces).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_api::istio::workload::{Address, address};

use super::{
    MeshConfig, Translation, authorization, in_namespace, l7, merge_conditions, translate_workloads,
};
use crate::jwks::JwksCache;
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

/// Which resources of the translation may differ from the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    /// Translated in full: any resource may have changed.
    All,
    /// Only these keys may have changed (been added, changed or removed).
    Keys {
        addresses: BTreeSet<String>,
        authorizations: BTreeSet<String>,
        waypoints: BTreeSet<String>,
    },
}

/// Keeps the last store and its translation, and translates each new store
/// from them.
#[derive(Debug)]
pub struct Translator {
    mesh: MeshConfig,
    last: Option<Arc<Store>>,
    translation: Translation,
    /// The conditions of the workload part and of the L7 part, kept apart
    /// because each is brought up to date on its own.
    workload_conditions: Vec<ObjectCondition>,
    l7_conditions: BTreeSet<ObjectCondition>,
    /// Key sets fetched so far, an input of the L7 part only.
    keys: Arc<JwksCache>,
    keys_changed: bool,
}

impl Translator {
    pub fn new(mesh: MeshConfig) -> Self {
        Translator {
            mesh,
            last: None,
            translation: Translation::default(),
            workload_conditions: Vec::new(),
            l7_conditions: BTreeSet::new(),
            keys: Arc::default(),
            keys_changed: false,
        }
    }

    /// The translation of the last store given to `update`.
    pub fn translation(&self) -> &Translation {
        &self.translation
    }

    /// Sets the key sets the next `update` translates with; a change makes
    /// it translate the waypoints' L7 part again.
    pub fn set_keys(&mut self, keys: &Arc<JwksCache>) {
        if !Arc::ptr_eq(&self.keys, keys) && *self.keys != **keys {
            self.keys = keys.clone();
            self.keys_changed = true;
        }
    }

    /// Translates `store`, equal to `translate_with_keys(store, mesh, keys)`
    /// with the keys last set, and says which resources may have changed
    /// since the previous call.
    pub fn update(&mut self, store: &Arc<Store>) -> Touched {
        let scope = self
            .last
            .as_deref()
            .and_then(|last| changed_namespaces(last, store, &self.mesh));
        let l7_changed = std::mem::take(&mut self.keys_changed)
            || self
                .last
                .as_deref()
                .is_none_or(|last| l7_inputs_changed(last, store));
        self.last = Some(store.clone());
        self.translation.conditions = std::mem::take(&mut self.workload_conditions);
        let mut touched = match scope {
            None => {
                let waypoints = std::mem::take(&mut self.translation.waypoints);
                self.translation = translate_workloads(store, &self.mesh);
                self.translation.waypoints = waypoints;
                Touched::All
            }
            Some(namespaces) if namespaces.is_empty() => Touched::Keys {
                addresses: BTreeSet::new(),
                authorizations: BTreeSet::new(),
                waypoints: BTreeSet::new(),
            },
            Some(namespaces) => {
                let part =
                    translate_workloads(&scoped_store(store, &namespaces, &self.mesh), &self.mesh);
                merge(&mut self.translation, part, &namespaces)
            }
        };
        self.workload_conditions = std::mem::take(&mut self.translation.conditions);
        if l7_changed {
            // The L7 part is small: translated in full whenever its inputs
            // change, rather than tracked by namespace.
            let l7 = l7::translate_waypoints(store, &self.mesh, &self.keys);
            if let Touched::Keys { waypoints, .. } = &mut touched {
                *waypoints = changed_keys(&self.translation.waypoints, &l7.waypoints);
            }
            self.translation.waypoints = l7.waypoints;
            self.l7_conditions = l7.conditions;
        }
        self.translation.conditions =
            merge_conditions(&self.workload_conditions, &self.l7_conditions);
        touched
    }
}

/// Whether a change reaches the waypoints' L7 resources: they read
/// Gateways, Services, Namespaces (bindings), routes, policies and
/// RequestAuthentications only.
fn l7_inputs_changed(old: &Store, new: &Store) -> bool {
    changed(&old.gateways, &new.gateways).next().is_some()
        || changed(&old.http_routes, &new.http_routes).next().is_some()
        || changed(&old.grpc_routes, &new.grpc_routes).next().is_some()
        || changed(&old.authorization_policies, &new.authorization_policies)
            .next()
            .is_some()
        || changed(&old.services, &new.services).next().is_some()
        || changed(&old.namespaces, &new.namespaces).next().is_some()
        || changed(&old.request_authentications, &new.request_authentications)
            .next()
            .is_some()
}

/// Keys added, removed or changed between two maps.
fn changed_keys<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    for (key, value) in new {
        if old.get(key) != Some(value) {
            keys.insert(key.clone());
        }
    }
    keys
}

/// The namespaces with a changed object, when translating only them (with
/// the root namespace and the cluster-wide inputs) is exact; None when the
/// whole store must be translated.
fn changed_namespaces(old: &Store, new: &Store, mesh: &MeshConfig) -> Option<BTreeSet<String>> {
    // Destructured so that a kind added to the store is a compile error here
    // until its dependencies are thought through.
    let Store {
        namespaces,
        pods,
        services,
        endpoint_slices,
        service_accounts,
        nodes,
        gateways,
        http_routes,
        grpc_routes,
        authorization_policies,
        peer_authentications,
        service_entries,
        // Read by the L7 part only, which is translated in full.
        request_authentications: _,
    } = new;
    if changed(&old.nodes, nodes).next().is_some()
        || changed(&old.gateways, gateways).next().is_some()
    {
        return None;
    }
    if old.peer_authentications.is_empty() != peer_authentications.is_empty() {
        return None;
    }
    let mut touched = BTreeSet::new();
    for key in changed(&old.namespaces, namespaces) {
        touched.insert(key.name.clone());
    }
    for key in changed(&old.services, services) {
        if gateways.contains_key(key) {
            return None;
        }
        touched.insert(key.namespace.clone());
    }
    let namespaced = changed(&old.pods, pods)
        .chain(changed(&old.endpoint_slices, endpoint_slices))
        .chain(changed(&old.service_accounts, service_accounts))
        .chain(changed(&old.http_routes, http_routes))
        .chain(changed(&old.grpc_routes, grpc_routes))
        .chain(changed(&old.authorization_policies, authorization_policies))
        .chain(changed(&old.peer_authentications, peer_authentications))
        .chain(changed(&old.service_entries, service_entries));
    for key in namespaced {
        touched.insert(key.namespace.clone());
    }
    if touched.is_empty() {
        return Some(touched);
    }
    if touched.contains(&mesh.root_namespace) {
        return None;
    }
    let root_depends_on_all_pods = in_namespace(authorization_policies, &mesh.root_namespace)
        .any(|(_, policy)| authorization::depends_on_selected_pods(&policy.spec));
    if root_depends_on_all_pods {
        return None;
    }
    if slices_cross_namespaces(old, new, &touched) {
        return None;
    }
    Some(touched)
}

/// Keys added, removed, or whose object changed, in one walk over both
/// maps in key order. Objects the source did not change keep their
/// allocation, so most are told apart by pointer.
fn changed<'a, T: PartialEq>(
    old: &'a BTreeMap<NamespacedName, Arc<T>>,
    new: &'a BTreeMap<NamespacedName, Arc<T>>,
) -> impl Iterator<Item = &'a NamespacedName> + 'a {
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            match (old.peek().copied(), new.peek().copied()) {
                (None, None) => return None,
                (Some((removed, _)), None) => {
                    old.next();
                    return Some(removed);
                }
                (None, Some((added, _))) => {
                    new.next();
                    return Some(added);
                }
                (Some((a, was)), Some((b, is))) => match a.cmp(b) {
                    Ordering::Less => {
                        old.next();
                        return Some(a);
                    }
                    Ordering::Greater => {
                        new.next();
                        return Some(b);
                    }
                    Ordering::Equal => {
                        old.next();
                        new.next();
                        if !(Arc::ptr_eq(was, is) || **was == **is) {
                            return Some(b);
                        }
                    }
                },
            }
        }
    })
}

/// Whether an endpoint of a selector-less Service's EndpointSlice is the IP
/// of a pod in another namespace, with either namespace touched, in either
/// store: such an endpoint adds the Service to that pod's Workload.
fn slices_cross_namespaces(old: &Store, new: &Store, touched: &BTreeSet<String>) -> bool {
    let links = [SliceEndpoints::of(old), SliceEndpoints::of(new)];
    if links.iter().all(|l| l.by_namespace.is_empty()) {
        return false;
    }
    for store in [old, new] {
        for ns in touched {
            // A touched namespace's pods, listed by another's slice.
            let listed_elsewhere = in_namespace(&store.pods, ns).any(|(_, pod)| {
                pod_ips(pod).any(|ip| links.iter().any(|l| l.lists_outside(ns, &ip)))
            });
            if listed_elsewhere {
                return true;
            }
        }
        // A touched namespace's slices, listing another's pods.
        let own: BTreeSet<(&str, IpAddr)> = links
            .iter()
            .flat_map(|l| &l.by_namespace)
            .filter(|(ns, _)| touched.contains(*ns))
            .flat_map(|(ns, ips)| ips.iter().map(move |ip| (ns.as_str(), *ip)))
            .collect();
        if own.is_empty() {
            continue;
        }
        let lists_other = store.pods.iter().any(|(key, pod)| {
            pod_ips(pod).any(|ip| {
                own.iter()
                    .any(|(ns, listed)| *listed == ip && *ns != key.namespace)
            })
        });
        if lists_other {
            return true;
        }
    }
    false
}

/// Endpoint IPs of selector-less Services' EndpointSlices, by namespace.
struct SliceEndpoints {
    by_namespace: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl SliceEndpoints {
    fn of(store: &Store) -> Self {
        let mut by_namespace: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (key, slice) in &store.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(super::labels::SERVICE_NAME))
                .and_then(|name| {
                    store
                        .services
                        .get(&NamespacedName::new(&key.namespace, name))
                });
            let selector_less = service
                .and_then(|s| s.spec.as_ref())
                .is_some_and(|spec| spec.selector.as_ref().is_none_or(|s| s.is_empty()));
            if !selector_less {
                continue;
            }
            let addresses = slice.endpoints.iter().flatten().flat_map(|e| &e.addresses);
            by_namespace
                .entry(key.namespace.clone())
                .or_default()
                .extend(addresses.filter_map(|a| a.parse::<IpAddr>().ok()));
        }
        SliceEndpoints { by_namespace }
    }

    /// Whether a slice outside `namespace` lists `ip`.
    fn lists_outside(&self, namespace: &str, ip: &IpAddr) -> bool {
        self.by_namespace
            .iter()
            .any(|(ns, ips)| ns != namespace && ips.contains(ip))
    }
}

fn pod_ips(pod: &k8s_openapi::api::core::v1::Pod) -> impl Iterator<Item = IpAddr> + '_ {
    let status = pod.status.as_ref();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten();
    listed
        .map(|p| p.ip.as_str())
        .chain(status.and_then(|s| s.pod_ip.as_deref()))
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
}

/// The objects a translation of `namespaces` reads: theirs, the root
/// namespace's, the cluster-wide ones, and waypoints' Services.
fn scoped_store(store: &Store, namespaces: &BTreeSet<String>, mesh: &MeshConfig) -> Store {
    let mut scope: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    scope.push(&mesh.root_namespace);
    let mut services = of_namespaces(&store.services, &scope);
    for key in store.gateways.keys() {
        if let Some(svc) = store.services.get(key) {
            services.insert(key.clone(), svc.clone());
        }
    }
    Store {
        namespaces: scope
            .iter()
            .filter_map(|ns| {
                store
                    .namespaces
                    .get_key_value(&NamespacedName::cluster(*ns))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pods: of_namespaces(&store.pods, &scope),
        services,
        endpoint_slices: of_namespaces(&store.endpoint_slices, &scope),
        service_accounts: of_namespaces(&store.service_accounts, &scope),
        nodes: store.nodes.clone(),
        gateways: store.gateways.clone(),
        http_routes: of_namespaces(&store.http_routes, &scope),
        grpc_routes: of_namespaces(&store.grpc_routes, &scope),
        authorization_policies: of_namespaces(&store.authorization_policies, &scope),
        peer_authentications: of_namespaces(&store.peer_authentications, &scope),
        service_entries: of_namespaces(&store.service_entries, &scope),
        // The workload part does not read them.
        request_authentications: Default::default(),
    }
}

fn of_namespaces<T>(
    map: &BTreeMap<NamespacedName, Arc<T>>,
    namespaces: &[&str],
) -> BTreeMap<NamespacedName, Arc<T>> {
    namespaces
        .iter()
        .flat_map(|ns| in_namespace(map, ns))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Replaces the resources and conditions of `namespaces` in `into` by those
/// of `part`.
fn merge(into: &mut Translation, part: Translation, namespaces: &BTreeSet<String>) -> Touched {
    let mut addresses = BTreeSet::new();
    into.addresses.retain(|key, address| {
        let stale = address_namespace(address).is_some_and(|ns| namespaces.contains(ns));
        if stale {
            addresses.insert(key.clone());
        }
        !stale
    });
    for (key, address) in part.addresses {
        if address_namespace(&address).is_some_and(|ns| namespaces.contains(ns)) {
            addresses.insert(key.clone());
            into.addresses.insert(key, address);
        }
    }

    let mut authorizations = BTreeSet::new();
    into.authorizations.retain(|key, policy| {
        let stale = namespaces.contains(&policy.namespace);
        if stale {
            authorizations.insert(key.clone());
        }
        !stale
    });
    for (key, policy) in part.authorizations {
        if namespaces.contains(&policy.namespace) {
            authorizations.insert(key.clone());
            into.authorizations.insert(key, policy);
        }
    }

    let in_scope = |c: &ObjectCondition| namespaces.contains(condition_namespace(c));
    into.conditions.retain(|c| !in_scope(c));
    into.conditions
        .extend(part.conditions.into_iter().filter(|c| in_scope(c)));
    into.conditions.sort();
    into.conditions.dedup();

    Touched::Keys {
        addresses,
        authorizations,
        waypoints: BTreeSet::new(),
    }
}

fn address_namespace(address: &Address) -> Option<&str> {
    match address.r#type.as_ref()? {
        address::Type::Workload(w) => Some(&w.namespace),
        address::Type::Service(s) => Some(&s.namespace),
    }
}

/// The namespace a condition's object belongs to; a Namespace's is itself.
fn condition_namespace(c: &ObjectCondition) -> &str {
    if c.object.kind == Kind::Namespace {
        &c.object.name.name
    } else {
        &c.object.name.namespace
    }
}

#[cfg(test)]
mod tests;
