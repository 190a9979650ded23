use mesh_api::istio::security as xsec;
use mesh_api::istio::workload as xw;
use mesh_core::xds::Resource;
use prost::Message;

use super::*;

fn any(type_url: &str, m: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn workload_res(name: &str, ip: Vec<u8>) -> Resource {
    let w = xw::Workload {
        uid: name.into(),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![ip],
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        services: [(
            "default/echo.default.svc.cluster.local".to_string(),
            xw::PortList {
                ports: vec![xw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    Resource {
        name: name.into(),
        version: "1".into(),
        body: any(
            ADDRESS_TYPE_URL,
            &xw::Address {
                r#type: Some(xw::address::Type::Workload(w)),
            },
        ),
    }
}

fn service_res() -> Resource {
    let s = xw::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![xw::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![xw::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    Resource {
        name: "default/echo.default.svc.cluster.local".into(),
        version: "1".into(),
        body: any(
            ADDRESS_TYPE_URL,
            &xw::Address {
                r#type: Some(xw::address::Type::Service(s)),
            },
        ),
    }
}

#[test]
fn a_bad_resource_is_rejected_by_name_and_the_rest_builds_the_state() {
    let store = Arc::new(StateStore::new(State::default()));
    let model = XdsModel::new(store.clone());
    let updates = model.updates();
    let rejected = model.apply(
        &Update {
            resources: vec![
                workload_res("w1", vec![10, 0, 0, 1]),
                workload_res("w2", vec![10, 0, 0]),
                service_res(),
            ],
            removed: vec![],
        },
        Resources::apply_addresses,
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "w2");
    assert!(
        rejected[0].reason.starts_with("addresses[0]: 3 bytes"),
        "{:?}",
        rejected[0]
    );
    assert!(updates.has_changed().unwrap());
    let state = store.load();
    let w1 = state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    assert_eq!(
        w1.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    let svc = state
        .service_by_vip("10.96.0.1".parse().unwrap(), "default")
        .unwrap();
    // The workload's `services` entry made it an endpoint of the service.
    let endpoints = state.endpoints(svc);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].workload.spec.uid, "w1");
    assert!(state.peer_authentications().is_empty());

    // Removal by resource name.
    let rejected = model.apply(
        &Update {
            resources: vec![],
            removed: vec!["w1".into()],
        },
        Resources::apply_addresses,
    );
    assert!(rejected.is_empty());
    let state = store.load();
    assert!(state.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
    assert!(
        state
            .service_by_hostname("echo.default.svc.cluster.local")
            .is_some()
    );
}

#[test]
fn a_rejected_update_keeps_the_previous_good_version() {
    let store = Arc::new(StateStore::new(State::default()));
    let model = XdsModel::new(store.clone());
    model.apply(
        &Update {
            resources: vec![workload_res("w1", vec![10, 0, 0, 1])],
            removed: vec![],
        },
        Resources::apply_addresses,
    );
    let rejected = model.apply(
        &Update {
            resources: vec![workload_res("w1", vec![1])],
            removed: vec![],
        },
        Resources::apply_addresses,
    );
    assert_eq!(rejected[0].name, "w1");
    assert!(
        store
            .load()
            .workload_by_ip("10.0.0.1".parse().unwrap())
            .is_some()
    );
}

#[test]
fn policies_are_kept_by_name_and_removed() {
    let store = Arc::new(StateStore::new(State::default()));
    let model = XdsModel::new(store.clone());
    let policy = |name: &str, scope: i32| Resource {
        name: format!("istio-system/{name}"),
        version: "1".into(),
        body: any(
            AUTHORIZATION_TYPE_URL,
            &xsec::Authorization {
                name: name.into(),
                namespace: "istio-system".into(),
                scope,
                action: xsec::Action::Deny as i32,
                ..Default::default()
            },
        ),
    };
    let rejected = model.apply(
        &Update {
            resources: vec![
                policy("istio_converted_static_strict", 2),
                policy("broken", 17),
            ],
            removed: vec![],
        },
        Resources::apply_authorizations,
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "istio-system/broken");
    assert!(rejected[0].reason.contains("scope: unknown enum value 17"));
    assert!(
        store
            .load()
            .policy("istio-system/istio_converted_static_strict")
            .is_some()
    );
    model.apply(
        &Update {
            resources: vec![],
            removed: vec!["istio-system/istio_converted_static_strict".into()],
        },
        Resources::apply_authorizations,
    );
    assert_eq!(store.load().policies().count(), 0);
}

/// The invariants of the `xds_resources` fuzz target, over byte-mutated valid
/// bodies: nothing panics, a refusal names the resource and is not kept, and
/// what is accepted builds a state.
#[test]
fn mutated_bodies_never_panic_and_accepted_ones_build() {
    use rand::{Rng, SeedableRng};
    let policy = xsec::Authorization {
        name: "p".into(),
        namespace: "default".into(),
        scope: 2,
        action: 1,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause {
                matches: vec![xsec::Match {
                    principals: vec![xsec::StringMatch {
                        match_type: Some(xsec::string_match::MatchType::Prefix("a".into())),
                    }],
                    source_ips: vec![xsec::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![80],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let seeds = [
        (true, workload_res("w", vec![10, 0, 0, 1]).body.value),
        (true, service_res().body.value),
        (false, policy.encode_to_vec()),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..3000 {
        let (address, seed) = &seeds[i % seeds.len()];
        let mut body = seed.clone();
        for _ in 0..rng.random_range(1..4) {
            if body.is_empty() {
                break;
            }
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[at] = rng.random(),
                1 => body.truncate(at),
                _ => body.insert(at, rng.random()),
            }
        }
        let type_url = if *address {
            ADDRESS_TYPE_URL
        } else {
            AUTHORIZATION_TYPE_URL
        };
        let update = Update {
            resources: vec![Resource {
                name: "m".into(),
                version: "1".into(),
                body: prost_types::Any {
                    type_url: type_url.into(),
                    value: body,
                },
            }],
            removed: vec![],
        };
        let mut resources = Resources::default();
        let rejected = if *address {
            resources.apply_addresses(&update)
        } else {
            resources.apply_authorizations(&update)
        };
        let kept = resources.workloads.len() + resources.services.len() + resources.policies.len();
        match rejected.as_slice() {
            [] => {
                assert_eq!(kept, 1);
                accepted += 1;
            }
            [r] => {
                assert_eq!(r.name, "m");
                assert!(!r.reason.trim().is_empty());
                assert_eq!(kept, 0);
                refused += 1;
            }
            more => panic!("{} rejections for one resource", more.len()),
        }
        if let Err(e) = resources.build_state() {
            panic!("accepted resources do not build a state: {e}");
        }
    }
    // Both paths were exercised.
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
