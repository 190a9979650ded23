use rand::SeedableRng;

use super::*;
use crate::config::Config;
use crate::proxy::route::{self, Plan, RouteError};

/// `reviews` is bound to the `waypoint` Gateway's Service; `ratings-0` is bound
/// by its workload record; `details` has none. `waypoint-0` is the waypoint pod.
const MESH: &str = "
proxy:
  workload: default/client
  certificates: {ca: {cert: r, key: k}}
workloads:
- {name: client, namespace: default, serviceAccount: client, addresses: [10.0.0.1, 'fd00::1']}
- name: waypoint-0
  namespace: default
  serviceAccount: waypoint
  addresses: [10.0.0.10, 'fd00::10']
  services: {default/waypoint.default.svc.cluster.local: [{servicePort: 15008, targetPort: 15008}]}
- name: waypoint-1
  namespace: default
  serviceAccount: waypoint
  addresses: [10.0.0.11]
  status: UNHEALTHY
  services: {default/waypoint.default.svc.cluster.local: [{servicePort: 15008, targetPort: 15008}]}
- name: reviews-0
  namespace: default
  serviceAccount: reviews
  addresses: [10.0.0.2]
  services: {default/reviews.default.svc.cluster.local: [{servicePort: 9080, targetPort: 9080}]}
- name: ratings-0
  namespace: default
  serviceAccount: ratings
  addresses: [10.0.0.3]
  waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}}
- name: details-0
  namespace: default
  serviceAccount: details
  addresses: [10.0.0.4]
  services: {default/details.default.svc.cluster.local: [{servicePort: 9080, targetPort: 9080}]}
- name: legacy-0
  namespace: default
  serviceAccount: legacy
  addresses: [10.0.0.5]
  waypoint: {address: {address: 10.0.0.20}, hboneMtlsPort: 15009}
- {name: gateway-vm, namespace: infra, serviceAccount: edge, addresses: [10.0.0.20]}
services:
- name: waypoint
  namespace: default
  addresses: [10.96.0.10]
  ports: [{servicePort: 15008, targetPort: 15008}, {servicePort: 15021, targetPort: 15021}]
  subjectAltNames: ['spiffe://cluster.local/ns/default/sa/waypoint-san']
- name: reviews
  namespace: default
  addresses: [10.96.0.2, 'fd00:96::2']
  ports: [{servicePort: 9080, targetPort: 9080}]
  waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}, hboneMtlsPort: 15008}
- {name: details, namespace: default, addresses: [10.96.0.4], ports: [{servicePort: 9080, targetPort: 9080}]}
";

fn state(text: &str) -> State {
    State::from_config(&Config::parse(text).unwrap()).unwrap()
}

fn named(s: &State, name: &str) -> Arc<WorkloadEntry> {
    s.workload_named(
        if name == "gateway-vm" {
            "infra"
        } else {
            "default"
        },
        name,
    )
    .unwrap()
    .clone()
}

fn plan_from(s: &State, source: &str, dst: &str) -> Result<Plan, RouteError> {
    route::plan(
        s,
        &named(s, source),
        dst.parse().unwrap(),
        &mut rand::rngs::StdRng::seed_from_u64(3),
    )
}

fn id(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

#[test]
fn a_service_with_a_waypoint_goes_to_a_healthy_waypoint_pod_with_the_vip_as_authority() {
    let s = state(MESH);
    let Ok(Plan::Waypoint {
        hop,
        authority,
        destination,
        service,
    }) = plan_from(&s, "client", "10.96.0.2:9080")
    else {
        panic!("expected the waypoint")
    };
    assert_eq!(hop.name, "default/waypoint");
    // waypoint-1 is unhealthy: always waypoint-0.
    assert_eq!(hop.peer, "10.0.0.10:15008".parse().unwrap());
    assert_eq!(authority, "10.96.0.2:9080".parse().unwrap());
    assert_eq!(hop.expected, vec![id("waypoint"), id("waypoint-san")]);
    assert_eq!(hop.workload.unwrap().spec.name, "waypoint-0");
    assert!(destination.is_none());
    assert_eq!(service.unwrap().name, "reviews");
    // The same over IPv6 picks the waypoint's IPv6 address.
    let Ok(Plan::Waypoint { hop, .. }) = plan_from(&s, "client", "[fd00:96::2]:9080") else {
        panic!()
    };
    assert_eq!(hop.peer, "[fd00::10]:15008".parse().unwrap());
}

#[test]
fn a_service_waypoint_does_not_capture_traffic_addressed_to_the_pod_ip() {
    // waypoint-for=service: only the Service carries the field, so pod-IP
    // traffic to reviews-0 goes straight to it.
    let s = state(MESH);
    let Ok(Plan::Hbone {
        peer, authority, ..
    }) = plan_from(&s, "client", "10.0.0.2:9080")
    else {
        panic!("expected direct HBONE")
    };
    assert_eq!(peer, "10.0.0.2:15008".parse().unwrap());
    assert_eq!(authority, "10.0.0.2:9080".parse().unwrap());
}

#[test]
fn a_workload_with_a_waypoint_addressed_by_ip_goes_to_the_waypoint_with_the_pod_ip_as_authority() {
    let s = state(MESH);
    let Ok(Plan::Waypoint {
        hop,
        authority,
        destination,
        service,
    }) = plan_from(&s, "client", "10.0.0.3:8080")
    else {
        panic!("expected the waypoint")
    };
    assert_eq!(hop.peer, "10.0.0.10:15008".parse().unwrap());
    assert_eq!(authority, "10.0.0.3:8080".parse().unwrap());
    assert_eq!(destination.unwrap().spec.name, "ratings-0");
    assert!(service.is_none());
}

#[test]
fn service_traffic_to_a_pod_bound_by_its_workload_goes_to_that_waypoint_with_the_pod_authority() {
    // The pod admits only its waypoint, so going straight to it would fail.
    let text = MESH.replace(
        "  addresses: [10.0.0.3]\n",
        "  addresses: [10.0.0.3]\n  services: {default/details.default.svc.cluster.local: [{servicePort: 9080, targetPort: 9080}]}\n",
    ).replace("  addresses: [10.0.0.4]\n  services: {default/details", "  addresses: [10.0.0.4]\n  services: {default/other");
    let s = state(&text);
    let Ok(Plan::Waypoint {
        hop,
        authority,
        destination,
        service,
    }) = plan_from(&s, "client", "10.96.0.4:9080")
    else {
        panic!("expected the workload's waypoint")
    };
    assert_eq!(hop.name, "default/waypoint");
    assert_eq!(authority, "10.0.0.3:9080".parse().unwrap());
    assert_eq!(destination.unwrap().spec.name, "ratings-0");
    assert_eq!(service.unwrap().name, "details");
    // From the waypoint itself: direct.
    assert!(matches!(
        plan_from(&s, "waypoint-0", "10.96.0.4:9080"),
        Ok(Plan::Hbone { .. })
    ));
}

#[test]
fn the_waypoint_itself_goes_direct_so_traffic_does_not_loop() {
    let s = state(MESH);
    let Ok(Plan::Hbone {
        peer, authority, ..
    }) = plan_from(&s, "waypoint-0", "10.0.0.3:8080")
    else {
        panic!("expected direct HBONE from the waypoint")
    };
    assert_eq!(peer, "10.0.0.3:15008".parse().unwrap());
    assert_eq!(authority, "10.0.0.3:8080".parse().unwrap());
    let Ok(Plan::Hbone { destination, .. }) = plan_from(&s, "waypoint-0", "10.96.0.2:9080") else {
        panic!("expected the service endpoint from the waypoint")
    };
    assert_eq!(destination.spec.name, "reviews-0");
}

#[test]
fn the_address_form_goes_to_that_address_and_port() {
    let s = state(MESH);
    let Ok(Plan::Waypoint { hop, authority, .. }) = plan_from(&s, "client", "10.0.0.5:7000") else {
        panic!("expected the waypoint")
    };
    assert_eq!(hop.name, "10.0.0.20:15009");
    assert_eq!(hop.peer, "10.0.0.20:15009".parse().unwrap());
    assert_eq!(authority, "10.0.0.5:7000".parse().unwrap());
    assert_eq!(
        hop.expected,
        vec!["spiffe://cluster.local/ns/infra/sa/edge".parse().unwrap()]
    );
    // The workload at that address is the waypoint: it goes direct.
    assert!(matches!(
        plan_from(&s, "gateway-vm", "10.0.0.5:7000"),
        Ok(Plan::Hbone { .. })
    ));
}

#[test]
fn an_unusable_waypoint_fails_the_connection_instead_of_going_around_it() {
    // No healthy waypoint pod.
    let s = state(&MESH.replace(
        "addresses: [10.0.0.10, 'fd00::10']",
        "addresses: [10.0.0.10, 'fd00::10']\n  status: UNHEALTHY",
    ));
    let e = plan_from(&s, "client", "10.96.0.2:9080").unwrap_err();
    assert_eq!(
        e,
        RouteError::Waypoint(WaypointError::NoEndpoint {
            waypoint: "default/waypoint".into(),
            port: 15008
        })
    );
    assert_eq!(
        e.to_string(),
        "waypoint default/waypoint: no healthy waypoint pod serves port 15008"
    );
    assert!(matches!(
        plan_from(&s, "client", "10.0.0.3:80"),
        Err(RouteError::Waypoint(WaypointError::NoEndpoint { .. }))
    ));
    // The waypoint Service does not list the HBONE port.
    let s = state(&MESH.replace(
        "ports: [{servicePort: 15008, targetPort: 15008}, {servicePort: 15021",
        "ports: [{servicePort: 15021",
    ));
    let Err(RouteError::Waypoint(e)) = plan_from(&s, "client", "10.96.0.2:9080") else {
        panic!()
    };
    assert_eq!(
        e,
        WaypointError::NoPort {
            waypoint: "default/waypoint".into(),
            port: 15008
        }
    );
    assert_eq!(e.reason(), "no_waypoint_port");
    // The waypoint Service is unknown.
    let s = state(&MESH.replace(
        "hostname: waypoint.default.svc.cluster.local}, hbone",
        "hostname: gone.default.svc.cluster.local}, hbone",
    ));
    let Err(RouteError::Waypoint(e)) = plan_from(&s, "client", "10.96.0.2:9080") else {
        panic!()
    };
    assert_eq!(e.reason(), "no_waypoint_service");
    assert_eq!(e.waypoint(), "default/gone");
}

#[test]
fn without_waypoints_plans_are_unchanged() {
    let s = state(MESH);
    let Ok(Plan::Hbone {
        peer, destination, ..
    }) = plan_from(&s, "client", "10.96.0.4:9080")
    else {
        panic!()
    };
    assert_eq!(peer, "10.0.0.4:15008".parse().unwrap());
    assert_eq!(destination.spec.name, "details-0");
    assert!(
        plan_from(&s, "client", "10.0.0.4:9080")
            .unwrap()
            .waypoint()
            .is_none()
    );
}

#[test]
fn waypoint_choice_is_weighted_over_healthy_pods() {
    let s = state(&MESH.replace(
        "  status: UNHEALTHY\n  services: {default/waypoint",
        "  capacity: 3\n  services: {default/waypoint",
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let client = named(&s, "client");
    let mut second = 0;
    for _ in 0..4000 {
        let Ok(Plan::Waypoint { hop, .. }) =
            route::plan(&s, &client, "10.96.0.2:9080".parse().unwrap(), &mut rng)
        else {
            panic!()
        };
        if hop.peer.ip().to_string() == "10.0.0.11" {
            second += 1;
        }
    }
    // Expected 3/4 of 4000 = 3000; the bound is many standard deviations wide.
    assert!(
        (2800..3200).contains(&second),
        "waypoint-1 chosen {second} times"
    );
}

#[test]
fn a_pod_bound_by_its_service_or_its_workload_admits_only_its_waypoint() {
    let s = state(MESH);
    for pod in ["reviews-0", "ratings-0"] {
        let local = named(&s, pod);
        assert_eq!(
            admit(&s, &local, Some(&id("waypoint"))),
            Admission::FromWaypoint {
                waypoint: "default/waypoint".into()
            },
            "{pod}"
        );
        // The waypoint Service's SANs count as the waypoint.
        assert!(matches!(
            admit(&s, &local, Some(&id("waypoint-san"))),
            Admission::FromWaypoint { .. }
        ));
        let refused = admit(&s, &local, Some(&id("client")));
        assert_eq!(
            refused,
            Admission::Refused {
                waypoints: "default/waypoint".into(),
                cause: Refusal::NotWaypointIdentity,
                reason: "spiffe://cluster.local/ns/default/sa/client is not the identity of \
                         waypoint default/waypoint"
                    .into()
            },
            "{pod}"
        );
        let plaintext = admit(&s, &local, None);
        assert!(
            matches!(
                plaintext,
                Admission::Refused {
                    cause: Refusal::Plaintext,
                    ..
                }
            ),
            "{pod}"
        );
        assert_eq!(Refusal::Plaintext.label(), "plaintext");
    }
}

#[test]
fn the_address_form_admits_the_identity_of_the_workload_at_that_address() {
    let s = state(MESH);
    let local = named(&s, "legacy-0");
    assert!(matches!(
        admit(
            &s,
            &local,
            Some(&"spiffe://cluster.local/ns/infra/sa/edge".parse().unwrap())
        ),
        Admission::FromWaypoint { .. }
    ));
    assert!(matches!(
        admit(&s, &local, Some(&id("waypoint"))),
        Admission::Refused { .. }
    ));
}

#[test]
fn a_waypoint_that_resolves_to_no_pod_admits_nobody() {
    let s = state(&MESH.replace(
        "hostname: waypoint.default.svc.cluster.local}, hbone",
        "hostname: gone.default.svc.cluster.local}, hbone",
    ));
    let local = named(&s, "reviews-0");
    assert!(matches!(
        admit(&s, &local, Some(&id("waypoint"))),
        Admission::Refused { .. }
    ));
}

#[test]
fn pods_without_a_waypoint_are_unchanged() {
    let s = state(MESH);
    for pod in ["details-0", "client", "waypoint-0"] {
        let local = named(&s, pod);
        assert_eq!(admit(&s, &local, Some(&id("client"))), Admission::Unbound);
        assert_eq!(admit(&s, &local, None), Admission::Unbound);
    }
}

#[test]
fn a_pod_bound_to_two_waypoints_admits_either() {
    let text = format!(
        "{MESH}- name: ratings\n  namespace: default\n  addresses: [10.96.0.3]\n  ports: [{{servicePort: 9080}}]\n  \
         waypoint: {{address: {{address: 10.0.0.20}}}}\n"
    )
    .replace(
        "  addresses: [10.0.0.3]\n",
        "  addresses: [10.0.0.3]\n  services: {default/ratings.default.svc.cluster.local: [{servicePort: 9080, targetPort: 9080}]}\n",
    );
    let s = state(&text);
    let local = named(&s, "ratings-0");
    assert_eq!(bound_to(&s, &local).len(), 2);
    assert!(matches!(
        admit(&s, &local, Some(&id("waypoint"))),
        Admission::FromWaypoint { .. }
    ));
    assert_eq!(
        admit(
            &s,
            &local,
            Some(&"spiffe://cluster.local/ns/infra/sa/edge".parse().unwrap())
        ),
        Admission::FromWaypoint {
            waypoint: "10.0.0.20:15008".into()
        }
    );
    let Admission::Refused { waypoints, .. } = admit(&s, &local, Some(&id("client"))) else {
        panic!()
    };
    assert_eq!(waypoints, "default/waypoint, 10.0.0.20:15008");
}

#[test]
fn yaml_waypoints_are_checked() {
    for (bad, expected) in [
        ("waypoint: {}", "exactly one of hostname and address"),
        (
            "waypoint: {hostname: {namespace: a, hostname: b}, address: {address: 10.0.0.1}}",
            "exactly one of hostname and address",
        ),
        (
            "waypoint: {hostname: {namespace: '', hostname: b}}",
            "must both be set",
        ),
        (
            "waypoint: {address: {address: 10.0.0.1}, hboneMtlsPort: 0}",
            "port 0",
        ),
        ("waypoint: {address: {address: nope}}", "invalid IP"),
    ] {
        let text = format!(
            "
proxy:
  workload: default/client
  certificates: {{ca: {{cert: r, key: k}}}}
workloads:
- {{name: client, namespace: default, addresses: [10.0.0.1], {bad}}}
"
        );
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{bad}: {e}");
    }
    // It round-trips through the config dump's serialisation.
    let s = state(MESH);
    let w = named(&s, "legacy-0");
    let yaml = serde_yaml::to_string(&w.spec.waypoint).unwrap();
    let back: GatewayAddress = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(Some(back), w.spec.waypoint);
}

#[test]
fn the_address_form_naming_a_waypoint_service_vip_resolves_to_its_pods() {
    // istiod sends the waypoint Service's VIP when it has one.
    let text = MESH.replace(
        "waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}, hboneMtlsPort: 15008}",
        "waypoint: {address: {address: 10.96.0.10}, hboneMtlsPort: 15008}",
    );
    let s = state(&text);
    let Ok(Plan::Waypoint { hop, authority, .. }) = plan_from(&s, "client", "10.96.0.2:9080")
    else {
        panic!("expected the waypoint")
    };
    assert_eq!(hop.peer, "10.0.0.10:15008".parse().unwrap());
    assert_eq!(authority, "10.96.0.2:9080".parse().unwrap());
    assert_eq!(hop.expected, vec![id("waypoint"), id("waypoint-san")]);
    let local = named(&s, "reviews-0");
    assert!(matches!(
        admit(&s, &local, Some(&id("waypoint"))),
        Admission::FromWaypoint { .. }
    ));
    assert!(matches!(
        admit(&s, &local, Some(&id("client"))),
        Admission::Refused { .. }
    ));
}
