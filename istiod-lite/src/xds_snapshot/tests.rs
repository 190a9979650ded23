use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{Address, Workload, address};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SnapshotBuilder;
use crate::app::snapshot_of;
use crate::translate::{Touched, Translation};

fn workload(uid: &str, generation: u32) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_string(),
            name: format!("pod-{generation}"),
            addresses: vec![vec![10, 0, 0, (generation % 250) as u8]],
            ..Default::default()
        })),
    }
}

fn policy(name: &str, generation: u32) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: format!("ns-{generation}"),
        ..Default::default()
    }
}

fn translation(pods: &BTreeMap<u32, u32>, policies: &BTreeMap<u32, u32>) -> Translation {
    Translation {
        addresses: pods
            .iter()
            .map(|(id, generation)| {
                (
                    format!("uid-{id}"),
                    workload(&format!("uid-{id}"), *generation),
                )
            })
            .collect(),
        authorizations: policies
            .iter()
            .map(|(id, generation)| {
                (
                    format!("ns/p-{id}"),
                    policy(&format!("p-{id}"), *generation),
                )
            })
            .collect(),
        waypoints: BTreeMap::new(),
        conditions: Vec::new(),
    }
}

#[test]
fn empty_translation_declares_every_type() {
    let built = SnapshotBuilder::new().build(&Translation::default());
    assert_eq!(built, snapshot_of(&Translation::default()));
    assert!(built.resources(mesh_api::ADDRESS_TYPE_URL).is_some());
    assert!(built.resources(mesh_api::AUTHORIZATION_TYPE_URL).is_some());
    assert!(built.resources(mesh_api::WAYPOINT_TYPE_URL).is_some());
}

#[test]
fn random_edits_build_the_same_snapshot_as_from_scratch() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut builder = SnapshotBuilder::new();
    // Told which keys each round touched, instead of comparing them all.
    let mut patched = SnapshotBuilder::new();
    let mut pods: BTreeMap<u32, u32> = (0..200).map(|id| (id, 0)).collect();
    let mut policies: BTreeMap<u32, u32> = (0..30).map(|id| (id, 0)).collect();
    patched.build(&translation(&pods, &policies));
    for round in 1..=60u32 {
        let mut touched_pods = std::collections::BTreeSet::new();
        let mut touched_policies = std::collections::BTreeSet::new();
        for _ in 0..rng.random_range(0..6) {
            let id = rng.random_range(0..260);
            touched_pods.insert(format!("uid-{id}"));
            match rng.random_range(0..3) {
                0 => {
                    pods.remove(&id);
                }
                _ => {
                    pods.insert(id, round);
                }
            }
        }
        if rng.random_bool(0.3) {
            let id = rng.random_range(0..40);
            touched_policies.insert(format!("ns/p-{id}"));
            if rng.random_bool(0.5) {
                policies.remove(&id);
            } else {
                policies.insert(id, round);
            }
        }
        let current = translation(&pods, &policies);
        let expected = snapshot_of(&current);
        assert_eq!(builder.build(&current), expected, "round {round}");
        let touched = Touched::Keys {
            addresses: touched_pods,
            authorizations: touched_policies,
            waypoints: BTreeSet::new(),
        };
        assert_eq!(
            patched.update(&current, &touched),
            expected,
            "round {round}"
        );
    }
}

#[test]
fn unchanged_resources_are_shared_and_changed_ones_re_encoded() {
    let mut pods: BTreeMap<u32, u32> = (0..10).map(|id| (id, 0)).collect();
    let policies: BTreeMap<u32, u32> = (0..3).map(|id| (id, 0)).collect();
    let mut builder = SnapshotBuilder::new();
    let first = builder.build(&translation(&pods, &policies));
    pods.insert(4, 1);
    let second = builder.build(&translation(&pods, &policies));

    let before = first.resources(mesh_api::ADDRESS_TYPE_URL).unwrap();
    let after = second.resources(mesh_api::ADDRESS_TYPE_URL).unwrap();
    for (name, resource) in after {
        let shared = Arc::ptr_eq(resource, &before[name]);
        assert_eq!(shared, &**name != "uid-4", "{name}");
    }
    assert_ne!(after["uid-4"].version, before["uid-4"].version);
    let policies_before = first.resources(mesh_api::AUTHORIZATION_TYPE_URL).unwrap();
    let policies_after = second.resources(mesh_api::AUTHORIZATION_TYPE_URL).unwrap();
    assert!(
        policies_after
            .iter()
            .all(|(name, r)| Arc::ptr_eq(r, &policies_before[name]))
    );
}

#[test]
fn a_removed_then_restored_resource_is_encoded_again() {
    let policies = BTreeMap::new();
    let mut builder = SnapshotBuilder::new();
    let all: BTreeMap<u32, u32> = (0..3).map(|id| (id, 0)).collect();
    builder.build(&translation(&all, &policies));
    let mut fewer = all.clone();
    fewer.remove(&1);
    let without = builder.build(&translation(&fewer, &policies));
    assert!(
        !without
            .resources(mesh_api::ADDRESS_TYPE_URL)
            .unwrap()
            .contains_key("uid-1")
    );
    let restored = builder.build(&translation(&all, &policies));
    assert_eq!(restored, snapshot_of(&translation(&all, &policies)));
}

#[test]
fn waypoints_are_patched_by_name_like_the_other_types() {
    use mesh_api::ambit::waypoint::v1::{Policy, Waypoint};
    let waypoint = |name: &str, generation: u32| Waypoint {
        namespace: "ns".into(),
        name: name.into(),
        policies: vec![Policy {
            name: format!("p-{generation}"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut current = Translation::default();
    current.waypoints.insert("ns/a".into(), waypoint("a", 0));
    current.waypoints.insert("ns/b".into(), waypoint("b", 0));
    let mut builder = SnapshotBuilder::new();
    assert_eq!(builder.build(&current), snapshot_of(&current));

    current.waypoints.insert("ns/a".into(), waypoint("a", 1));
    current.waypoints.remove("ns/b");
    current.waypoints.insert("ns/c".into(), waypoint("c", 0));
    let touched = Touched::Keys {
        addresses: BTreeSet::new(),
        authorizations: BTreeSet::new(),
        waypoints: ["ns/a", "ns/b", "ns/c"].map(String::from).into(),
    };
    let patched = builder.update(&current, &touched);
    assert_eq!(patched, snapshot_of(&current));
    let names: Vec<&str> = patched
        .resources(mesh_api::WAYPOINT_TYPE_URL)
        .unwrap()
        .keys()
        .map(|k| &**k)
        .collect();
    assert_eq!(names, ["ns/a", "ns/c"]);
}
