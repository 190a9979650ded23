//! The incremental path must give exactly the full translation of the new
//! store. Every fixture is put through every edit of every object: deleted,
//! copied under a new name, each label removed or changed, a label added,
//! and for pods a new IP and a finished phase; each result is compared with
//! a full translation, and every resource that differs must be among the
//! keys reported as touched.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::model::{Object, ObjectKey};
use crate::translate::tests::{FIXTURES, all_fixtures, fixture_store};
use crate::translate::translate;

fn to_value(object: &Object) -> Value {
    let value = match object {
        Object::Namespace(o) => serde_json::to_value(&**o),
        Object::Pod(o) => serde_json::to_value(&**o),
        Object::Service(o) => serde_json::to_value(&**o),
        Object::EndpointSlice(o) => serde_json::to_value(&**o),
        Object::ServiceAccount(o) => serde_json::to_value(&**o),
        Object::Node(o) => serde_json::to_value(&**o),
        Object::Gateway(o) => serde_json::to_value(&**o),
        Object::HTTPRoute(o) => serde_json::to_value(&**o),
        Object::GRPCRoute(o) => serde_json::to_value(&**o),
        Object::AuthorizationPolicy(o) => serde_json::to_value(&**o),
        Object::PeerAuthentication(o) => serde_json::to_value(&**o),
        Object::ServiceEntry(o) => serde_json::to_value(&**o),
        Object::RequestAuthentication(o) => serde_json::to_value(&**o),
    };
    value.expect("objects serialize")
}

fn keys(store: &Store) -> Vec<ObjectKey> {
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
        request_authentications,
    } = store;
    let of = |kind: Kind, names: Vec<&NamespacedName>| {
        names
            .into_iter()
            .map(move |name| ObjectKey {
                kind,
                name: name.clone(),
            })
            .collect::<Vec<_>>()
    };
    [
        of(Kind::Namespace, namespaces.keys().collect()),
        of(Kind::Pod, pods.keys().collect()),
        of(Kind::Service, services.keys().collect()),
        of(Kind::EndpointSlice, endpoint_slices.keys().collect()),
        of(Kind::ServiceAccount, service_accounts.keys().collect()),
        of(Kind::Node, nodes.keys().collect()),
        of(Kind::Gateway, gateways.keys().collect()),
        of(Kind::HTTPRoute, http_routes.keys().collect()),
        of(Kind::GRPCRoute, grpc_routes.keys().collect()),
        of(
            Kind::AuthorizationPolicy,
            authorization_policies.keys().collect(),
        ),
        of(
            Kind::PeerAuthentication,
            peer_authentications.keys().collect(),
        ),
        of(Kind::ServiceEntry, service_entries.keys().collect()),
        of(
            Kind::RequestAuthentication,
            request_authentications.keys().collect(),
        ),
    ]
    .concat()
}

/// Every edit of one object, as (description, the store after it).
fn edits(store: &Store, key: &ObjectKey) -> Vec<(String, Store)> {
    let object = store.get(key).expect("listed");
    let value = to_value(&object);
    let mut out = Vec::new();
    let mut with = |what: &str, edit: &dyn Fn(&mut Value)| {
        let mut v = value.clone();
        edit(&mut v);
        // An edit that does not apply to this object is no edit.
        if v == value {
            return;
        }
        let edited = Object::from_value(key.kind, v).expect("edited object reads back");
        let mut after = store.clone();
        after.remove(key);
        after.upsert(edited);
        out.push((format!("{key:?}: {what}"), after));
    };
    with("label added", &|v| {
        v["metadata"]["labels"]["incremental-test"] = json!("x");
    });
    with("copied", &|v| {
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        v["metadata"]["name"] = json!(format!("{name}-copy"));
    });
    let labels: Vec<String> = object
        .metadata()
        .labels
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    for label in &labels {
        with(&format!("label {label} removed"), &|v| {
            v["metadata"]["labels"]
                .as_object_mut()
                .expect("has labels")
                .remove(label);
        });
        with(&format!("label {label} changed"), &|v| {
            v["metadata"]["labels"][label] = json!("changed");
        });
    }
    if key.kind == Kind::Pod {
        with("new IP", &|v| {
            v["status"]["podIP"] = json!("10.250.0.1");
            v["status"]["podIPs"] = json!([{"ip": "10.250.0.1"}]);
        });
        with("finished", &|v| {
            v["status"]["phase"] = json!("Succeeded");
        });
    }
    if matches!(key.kind, Kind::HTTPRoute | Kind::GRPCRoute) {
        with("first backend reweighted", &|v| {
            if let Some(backend) = v.pointer_mut("/spec/rules/0/backendRefs/0") {
                backend["weight"] = json!(7);
            }
        });
        with("parents removed", &|v| {
            v["spec"]["parentRefs"] = json!([]);
        });
        with("annotation added", &|v| {
            v["metadata"]["annotations"]["waypoint.ambit.dev/retry-attempts"] = json!("4");
        });
    }
    if key.kind == Kind::AuthorizationPolicy {
        with("action changed", &|v| {
            let deny = v["spec"]["action"] == json!("DENY");
            v["spec"]["action"] = json!(if deny { "ALLOW" } else { "DENY" });
        });
        with("targetRefs removed", &|v| {
            let spec = v["spec"].as_object_mut().expect("has a spec");
            spec.remove("targetRef");
            spec.remove("targetRefs");
        });
    }
    if key.kind == Kind::Service {
        with("port renamed", &|v| {
            if let Some(port) = v.pointer_mut("/spec/ports/0") {
                port["name"] = json!("grpc-renamed");
            }
        });
    }
    // The copy edit's store still holds the original; this one does not.
    let mut deleted = store.clone();
    deleted.remove(key);
    out.push((format!("{key:?}: deleted"), deleted));
    out
}

/// Checks one step from `before` to `after`; returns whether it was
/// translated incrementally.
fn check_step(translator: &mut Translator, after: Store, what: &str) -> bool {
    let mesh = MeshConfig::default();
    let previous = translator.translation().clone();
    let touched = translator.update(&Arc::new(after.clone()));
    let full = translate(&after, &mesh);
    assert_eq!(*translator.translation(), full, "{what}");
    match touched {
        Touched::All => false,
        Touched::Keys {
            addresses,
            authorizations,
            waypoints,
        } => {
            for (key, waypoint) in &full.waypoints {
                if previous.waypoints.get(key) != Some(waypoint) {
                    assert!(waypoints.contains(key), "{what}: waypoint {key} changed");
                }
            }
            for key in previous.waypoints.keys() {
                if !full.waypoints.contains_key(key) {
                    assert!(waypoints.contains(key), "{what}: waypoint {key} removed");
                }
            }
            for (key, address) in &full.addresses {
                if previous.addresses.get(key) != Some(address) {
                    assert!(addresses.contains(key), "{what}: {key} changed");
                }
            }
            for key in previous.addresses.keys() {
                if !full.addresses.contains_key(key) {
                    assert!(addresses.contains(key), "{what}: {key} removed");
                }
            }
            for (key, policy) in &full.authorizations {
                if previous.authorizations.get(key) != Some(policy) {
                    assert!(authorizations.contains(key), "{what}: {key} changed");
                }
            }
            for key in previous.authorizations.keys() {
                if !full.authorizations.contains_key(key) {
                    assert!(authorizations.contains(key), "{what}: {key} removed");
                }
            }
            true
        }
    }
}

/// Every edit of every object of `store`, each from `store`.
fn check_every_edit(store: &Store) -> (usize, usize) {
    let (mut incremental, mut full) = (0, 0);
    let base = Arc::new(store.clone());
    for key in keys(store) {
        for (what, after) in edits(store, &key) {
            let mut translator = Translator::new(MeshConfig::default());
            assert_eq!(translator.update(&base), Touched::All);
            if check_step(&mut translator, after, &what) {
                incremental += 1;
            } else {
                full += 1;
            }
        }
    }
    (incremental, full)
}

#[test]
fn every_edit_of_every_fixture_matches_a_full_translation() {
    for case in FIXTURES {
        let (incremental, full) = check_every_edit(&fixture_store(case));
        assert!(
            incremental > 0,
            "{case}: no edit was incremental ({full} full)"
        );
    }
}

#[test]
fn every_edit_of_all_fixtures_together_matches_a_full_translation() {
    let (incremental, full) = check_every_edit(&all_fixtures());
    assert!(incremental > full, "{incremental} incremental, {full} full");
}

#[test]
fn a_chain_of_edits_stays_equal_to_full_translations() {
    let mut store = all_fixtures();
    let mut translator = Translator::new(MeshConfig::default());
    translator.update(&Arc::new(store.clone()));
    let mut incremental = 0;
    for (i, key) in keys(&all_fixtures()).into_iter().enumerate() {
        if store.get(&key).is_none() {
            continue;
        }
        let mut edits = edits(&store, &key);
        // Alternate edits, so the chain both adds and removes.
        let (what, after) = edits.swap_remove(i % edits.len());
        if check_step(&mut translator, after.clone(), &what) {
            incremental += 1;
        }
        store = after;
    }
    assert!(incremental > 0);
}

fn pod_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::Pod,
        name: NamespacedName::new(namespace, name),
    }
}

#[test]
fn a_pod_change_translates_only_its_namespace() {
    let store = fixture_store("services");
    let mut translator = Translator::new(MeshConfig::default());
    translator.update(&Arc::new(store.clone()));
    let (_, after) = edits(&store, &pod_key("apps", "web-1"))
        .into_iter()
        .find(|(what, _)| what.ends_with("label added"))
        .expect("the edit exists");
    let touched = translator.update(&Arc::new(after));
    let Touched::Keys { addresses, .. } = touched else {
        panic!("a pod label is translated incrementally");
    };
    assert!(addresses.contains("Kubernetes//Pod/apps/web-1"));
    assert!(
        addresses
            .iter()
            .all(|k| k.contains("/apps/") || k.starts_with("apps/")),
        "only apps is translated again: {addresses:?}"
    );
}

#[test]
fn an_unchanged_store_touches_nothing() {
    let store = Arc::new(all_fixtures());
    let mut translator = Translator::new(MeshConfig::default());
    assert_eq!(translator.update(&store), Touched::All);
    let copy = Arc::new((*store).clone());
    assert_eq!(
        translator.update(&copy),
        Touched::Keys {
            addresses: BTreeSet::new(),
            authorizations: BTreeSet::new(),
            waypoints: BTreeSet::new(),
        }
    );
}

#[test]
fn a_route_change_touches_only_its_waypoint_and_a_pod_change_none() {
    let store = fixture_store("waypoint_l7");
    let mut translator = Translator::new(MeshConfig::default());
    translator.update(&Arc::new(store.clone()));
    let route = ObjectKey {
        kind: Kind::HTTPRoute,
        name: NamespacedName::new("bookinfo", "reviews"),
    };
    let (_, after) = edits(&store, &route)
        .into_iter()
        .find(|(what, _)| what.ends_with("first backend reweighted"))
        .expect("the edit exists");
    let Touched::Keys { waypoints, .. } = translator.update(&Arc::new(after.clone())) else {
        panic!("a route change is translated incrementally")
    };
    assert_eq!(waypoints, BTreeSet::from(["bookinfo/waypoint".to_string()]));

    let mut with_pod = after;
    let pod = Object::from_value(
        Kind::Pod,
        json!({"metadata": {"name": "p", "namespace": "bookinfo"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .expect("a pod");
    with_pod.upsert(pod);
    let Touched::Keys { waypoints, .. } = translator.update(&Arc::new(with_pod)) else {
        panic!("a pod change is translated incrementally")
    };
    assert!(waypoints.is_empty(), "{waypoints:?}");
}

#[test]
fn cross_namespace_inputs_are_translated_in_full() {
    let store = all_fixtures();
    let mesh = MeshConfig::default();
    let root_objects: Vec<ObjectKey> = keys(&store)
        .into_iter()
        .filter(|k| {
            k.name.namespace == mesh.root_namespace || matches!(k.kind, Kind::Node | Kind::Gateway)
        })
        .collect();
    assert!(!root_objects.is_empty());
    for key in root_objects {
        for (what, after) in edits(&store, &key) {
            let mut translator = Translator::new(mesh.clone());
            translator.update(&Arc::new(store.clone()));
            assert!(!check_step(&mut translator, after, &what), "{what}");
        }
    }
}

#[test]
fn changed_keys_are_found_in_one_walk() {
    let key = |n: &str| NamespacedName::new("ns", n);
    let shared = Arc::new(1);
    let old: BTreeMap<NamespacedName, Arc<i32>> = [
        (key("a"), shared.clone()),
        (key("b"), Arc::new(2)),
        (key("c"), Arc::new(3)),
        (key("e"), Arc::new(5)),
    ]
    .into();
    let new: BTreeMap<NamespacedName, Arc<i32>> = [
        (key("a"), shared),
        // Another allocation with the same value is unchanged.
        (key("b"), Arc::new(2)),
        (key("c"), Arc::new(30)),
        (key("d"), Arc::new(4)),
    ]
    .into();
    let found: Vec<&str> = changed(&old, &new).map(|k| k.name.as_str()).collect();
    assert_eq!(found, ["c", "d", "e"]);
}
