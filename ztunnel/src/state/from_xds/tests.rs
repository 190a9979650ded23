use mesh_api::istio::security as xsec;
use mesh_api::istio::workload as xw;
use prost::Message;
use std::net::Ipv6Addr;

use super::*;

fn full_workload() -> xw::Workload {
    xw::Workload {
        uid: "Kubernetes//Pod/default/echo-1".into(),
        name: "echo-1".into(),
        namespace: "default".into(),
        addresses: vec![
            vec![10, 0, 0, 5],
            "fd00::5".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
        ],
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        trust_domain: "example.org".into(),
        service_account: "echo".into(),
        node: "node-a".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_type: xw::WorkloadType::Pod as i32,
        workload_name: "echo-deploy".into(),
        authorization_policies: vec!["default/allow-echo".into()],
        status: xw::WorkloadStatus::Unhealthy as i32,
        cluster_id: "east".into(),
        services: [(
            "default/echo.default.svc.cluster.local".into(),
            xw::PortList {
                ports: vec![xw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: xw::AppProtocol::Http11 as i32,
                }],
            },
        )]
        .into_iter()
        .collect(),
        locality: Some(xw::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        capacity: Some(3),
        ..Default::default()
    }
}

#[test]
fn every_workload_field_ztunnel_uses_is_converted() {
    let w = workload(&full_workload()).unwrap();
    assert_eq!(w.uid, "Kubernetes//Pod/default/echo-1");
    assert_eq!(
        (w.name.as_str(), w.namespace.as_str()),
        ("echo-1", "default")
    );
    assert_eq!(
        w.addresses,
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone);
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.service_account, "echo");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.canonical_name, "echo");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(w.workload_type, WorkloadType::Pod);
    assert_eq!(w.workload_name, "echo-deploy");
    assert_eq!(w.authorization_policies, vec!["default/allow-echo"]);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.cluster_id, "east");
    assert_eq!(
        w.services["default/echo.default.svc.cluster.local"],
        vec![PortMapping {
            service_port: 80,
            target_port: 8080
        }]
    );
    assert_eq!(w.locality.zone, "z");
    assert_eq!(w.capacity, Some(3));
}

#[test]
fn empty_identity_fields_take_istio_defaults() {
    let w = workload(&xw::Workload {
        trust_domain: String::new(),
        service_account: String::new(),
        cluster_id: String::new(),
        tunnel_protocol: xw::TunnelProtocol::None as i32,
        ..full_workload()
    })
    .unwrap();
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None);
}

#[test]
fn bad_workloads_are_refused_naming_the_field() {
    let cases: Vec<(xw::Workload, &str)> = vec![
        (
            xw::Workload {
                addresses: vec![vec![10, 0, 0, 5], vec![1, 2, 3, 4, 5]],
                ..full_workload()
            },
            "addresses[1]: 5 bytes",
        ),
        (
            xw::Workload {
                tunnel_protocol: 9,
                ..full_workload()
            },
            "tunnel_protocol: unknown enum value 9",
        ),
        (
            xw::Workload {
                tunnel_protocol: xw::TunnelProtocol::LegacyIstioMtls as i32,
                ..full_workload()
            },
            "tunnel_protocol: LEGACY_ISTIO_MTLS",
        ),
        (
            xw::Workload {
                uid: String::new(),
                ..full_workload()
            },
            "uid: must not be empty",
        ),
        (
            xw::Workload {
                status: 4,
                ..full_workload()
            },
            "status: unknown enum value 4",
        ),
        (
            xw::Workload {
                workload_type: 7,
                ..full_workload()
            },
            "workload_type: unknown",
        ),
        (
            xw::Workload {
                services: [("no-slash".into(), xw::PortList::default())]
                    .into_iter()
                    .collect(),
                ..full_workload()
            },
            "services[\"no-slash\"]: the key is not",
        ),
        (
            xw::Workload {
                services: [(
                    "default/echo".into(),
                    xw::PortList {
                        ports: vec![xw::Port {
                            service_port: 70000,
                            ..Default::default()
                        }],
                    },
                )]
                .into_iter()
                .collect(),
                ..full_workload()
            },
            "services[\"default/echo\"].ports[0].service_port: 70000 is not a port",
        ),
        (
            xw::Workload {
                service_account: "Bad/SA".into(),
                ..full_workload()
            },
            "service_account:",
        ),
    ];
    for (w, expected) in cases {
        let e = workload(&w).unwrap_err().to_string();
        assert!(
            e.starts_with(expected),
            "{e:?} does not start with {expected:?}"
        );
    }
}

fn full_service() -> xw::Service {
    xw::Service {
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
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/extra".into()],
        load_balancing: Some(xw::LoadBalancing {
            routing_preference: vec![xw::load_balancing::Scope::Zone as i32],
            mode: xw::load_balancing::Mode::Failover as i32,
            health_policy: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn every_service_field_ztunnel_uses_is_converted() {
    let s = service(&full_service()).unwrap();
    assert_eq!(s.name, "echo");
    assert_eq!(s.namespace, "default");
    assert_eq!(s.hostname, "echo.default.svc.cluster.local");
    assert_eq!(s.addresses, vec!["10.96.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.ports,
        vec![PortMapping {
            service_port: 80,
            target_port: 0
        }]
    );
    assert_eq!(
        s.subject_alt_names[0].to_string(),
        "spiffe://cluster.local/ns/default/sa/extra"
    );
    assert_eq!(s.load_balancing.mode, LoadBalancingMode::Failover);
    // A full-length prefix is a host VIP.
    let mut host = full_service();
    host.addresses[0].length = Some(32);
    assert!(service(&host).is_ok());
}

#[test]
fn bad_services_are_refused_naming_the_field() {
    let mut range = full_service();
    range.addresses[0].length = Some(24);
    let mut short_vip = full_service();
    short_vip.addresses[0].address = vec![10, 96];
    let mut port0 = full_service();
    port0.ports[0].service_port = 0;
    let mut bad_proto = full_service();
    bad_proto.ports[0].app_protocol = 42;
    let mut bad_san = full_service();
    bad_san.subject_alt_names = vec!["not-spiffe".into()];
    let mut bad_mode = full_service();
    bad_mode.load_balancing.as_mut().unwrap().mode = 11;
    let mut bad_scope = full_service();
    bad_scope
        .load_balancing
        .as_mut()
        .unwrap()
        .routing_preference = vec![1, 99];
    let cases = [
        (range, "addresses[0].length: /24"),
        (short_vip, "addresses[0].address: 2 bytes"),
        (port0, "ports[0].service_port: port 0"),
        (bad_proto, "ports[0].app_protocol: unknown enum value 42"),
        (bad_san, "subject_alt_names[0]:"),
        (bad_mode, "load_balancing.mode: unknown enum value 11"),
        (bad_scope, "load_balancing.routing_preference[1]"),
        (
            xw::Service {
                hostname: String::new(),
                ..full_service()
            },
            "hostname: must not be empty",
        ),
        (
            xw::Service {
                ip_families: 5,
                ..full_service()
            },
            "ip_families: unknown",
        ),
    ];
    for (s, expected) in cases {
        let e = service(&s).unwrap_err().to_string();
        assert!(
            e.starts_with(expected),
            "{e:?} does not start with {expected:?}"
        );
    }
}

fn exact(s: &str) -> xsec::StringMatch {
    xsec::StringMatch {
        match_type: Some(xsec::string_match::MatchType::Exact(s.into())),
    }
}

fn full_policy() -> xsec::Authorization {
    use xsec::string_match::MatchType;
    let sm = |m: MatchType| xsec::StringMatch {
        match_type: Some(m),
    };
    xsec::Authorization {
        name: "allow-echo".into(),
        namespace: "default".into(),
        scope: xsec::Scope::WorkloadSelector as i32,
        action: xsec::Action::Deny as i32,
        dry_run: true,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause {
                matches: vec![xsec::Match {
                    namespaces: vec![exact("default")],
                    not_namespaces: vec![sm(MatchType::Prefix("kube-".into()))],
                    principals: vec![sm(MatchType::Suffix("/sa/client".into()))],
                    not_principals: vec![sm(MatchType::Presence(()))],
                    source_ips: vec![xsec::Address {
                        address: vec![10, 1, 2, 3],
                        length: 16,
                    }],
                    not_source_ips: vec![xsec::Address {
                        address: vec![10, 1, 0, 9],
                        length: 32,
                    }],
                    destination_ips: vec![xsec::Address {
                        address: "fd00::1".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                        length: 64,
                    }],
                    not_destination_ips: vec![],
                    destination_ports: vec![8080],
                    not_destination_ports: vec![9090],
                    service_accounts: vec![xsec::ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "client".into(),
                    }],
                    not_service_accounts: vec![xsec::ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "evil".into(),
                    }],
                    extensions: vec![],
                }],
            }],
        }],
        extensions: vec![],
    }
}

#[test]
fn every_authorization_field_is_converted() {
    let p = authorization(&full_policy()).unwrap();
    assert_eq!(p.key(), "default/allow-echo");
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(m.namespaces, vec![StringMatch::Exact("default".into())]);
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("kube-".into())]);
    assert_eq!(m.principals, vec![StringMatch::Suffix("/sa/client".into())]);
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(m.source_ips, vec![Cidr("10.1.0.0/16".parse().unwrap())]);
    assert_eq!(m.not_source_ips, vec![Cidr("10.1.0.9/32".parse().unwrap())]);
    assert_eq!(m.destination_ips, vec![Cidr("fd00::/64".parse().unwrap())]);
    assert_eq!(m.destination_ports, vec![8080]);
    assert_eq!(m.not_destination_ports, vec![9090]);
    assert_eq!(m.service_accounts[0].service_account, "client");
    assert_eq!(m.not_service_accounts[0].service_account, "evil");
    assert!(m.l7_fields().is_empty());
    // Zero on the wire is GLOBAL and ALLOW.
    let p = authorization(&xsec::Authorization {
        scope: 0,
        action: 0,
        ..full_policy()
    })
    .unwrap();
    assert_eq!((p.scope, p.action), (Scope::Global, Action::Allow));
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let at = |f: &dyn Fn(&mut xsec::Match)| {
        let mut p = full_policy();
        f(&mut p.rules[0].clauses[0].matches[0]);
        p
    };
    let cases = [
        (
            at(&|m| m.principals.push(xsec::StringMatch { match_type: None })),
            "rules[0].clauses[0].matches[0].principals[1]: sets none of",
        ),
        (
            at(&|m| m.source_ips[0].address = vec![1, 2, 3]),
            "rules[0].clauses[0].matches[0].source_ips[0].address: 3 bytes",
        ),
        (
            at(&|m| m.source_ips[0].length = 33),
            "rules[0].clauses[0].matches[0].source_ips[0].length: /33",
        ),
        (
            at(&|m| m.destination_ports.push(65536)),
            "rules[0].clauses[0].matches[0].destination_ports[1]: 65536 is not a port",
        ),
        (
            at(&|m| m.service_accounts[0].namespace.clear()),
            "rules[0].clauses[0].matches[0].service_accounts[0].namespace",
        ),
        (
            xsec::Authorization {
                action: 2,
                ..full_policy()
            },
            "action: unknown enum value 2",
        ),
        (
            xsec::Authorization {
                scope: 3,
                ..full_policy()
            },
            "scope: unknown enum value 3",
        ),
        (
            xsec::Authorization {
                name: String::new(),
                ..full_policy()
            },
            "name: must not be empty",
        ),
    ];
    for (p, expected) in cases {
        let e = authorization(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(expected),
            "{e:?} does not start with {expected:?}"
        );
    }
}

#[test]
fn any_bodies_are_checked_for_type_and_shape() {
    let wrap = |type_url: &str, value: Vec<u8>| Any {
        type_url: type_url.into(),
        value,
    };
    let addr = xw::Address {
        r#type: Some(xw::address::Type::Service(full_service())),
    };
    assert!(matches!(
        address_from_any(&wrap(ADDRESS_TYPE_URL, addr.encode_to_vec())).unwrap(),
        AddressResource::Service(_)
    ));
    let e = address_from_any(&wrap(
        ADDRESS_TYPE_URL,
        xw::Address { r#type: None }.encode_to_vec(),
    ))
    .unwrap_err();
    assert_eq!(e.field, "type");
    let e = address_from_any(&wrap(AUTHORIZATION_TYPE_URL, addr.encode_to_vec())).unwrap_err();
    assert_eq!(e.field, "resource.type_url");
    let e = address_from_any(&wrap(ADDRESS_TYPE_URL, vec![0xff, 0xff])).unwrap_err();
    assert_eq!(e.field, "resource");
    let p = authorization_from_any(&wrap(AUTHORIZATION_TYPE_URL, full_policy().encode_to_vec()))
        .unwrap();
    assert_eq!(p.name, "allow-echo");
}

fn hostname_waypoint(port: u32) -> xw::GatewayAddress {
    xw::GatewayAddress {
        destination: Some(xw::gateway_address::Destination::Hostname(
            xw::NamespacedHostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: port,
    }
}

#[test]
fn waypoints_of_services_and_workloads_are_kept_in_both_forms() {
    let s = service(&xw::Service {
        waypoint: Some(hostname_waypoint(15008)),
        ..full_service()
    })
    .unwrap();
    assert_eq!(
        s.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            },
            hbone_mtls_port: 15008,
        })
    );
    assert_eq!(s.waypoint.unwrap().to_string(), "default/waypoint");
    let w = workload(&xw::Workload {
        waypoint: Some(xw::GatewayAddress {
            destination: Some(xw::gateway_address::Destination::Address(
                xw::NetworkAddress {
                    network: "net-a".into(),
                    address: vec![10, 0, 0, 9],
                    length: None,
                },
            )),
            hbone_mtls_port: 15009,
        }),
        ..full_workload()
    })
    .unwrap();
    assert_eq!(
        w.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Address {
                network: "net-a".into(),
                address: "10.0.0.9".parse().unwrap(),
            },
            hbone_mtls_port: 15009,
        })
    );
    // Without the field nothing changes.
    assert_eq!(workload(&full_workload()).unwrap().waypoint, None);
    assert_eq!(service(&full_service()).unwrap().waypoint, None);
}

#[test]
fn unusable_waypoints_are_refused_rather_than_bypassed() {
    let cases = [
        (
            xw::GatewayAddress {
                destination: None,
                hbone_mtls_port: 15008,
            },
            "waypoint: sets neither hostname nor address",
        ),
        (hostname_waypoint(0), "waypoint.hbone_mtls_port: port 0"),
        (hostname_waypoint(70000), "waypoint.hbone_mtls_port: 70000"),
        (
            xw::GatewayAddress {
                destination: Some(xw::gateway_address::Destination::Hostname(
                    xw::NamespacedHostname {
                        namespace: "default".into(),
                        hostname: String::new(),
                    },
                )),
                hbone_mtls_port: 15008,
            },
            "waypoint.hostname.hostname: must not be empty",
        ),
        (
            xw::GatewayAddress {
                destination: Some(xw::gateway_address::Destination::Address(
                    xw::NetworkAddress {
                        network: String::new(),
                        address: vec![1, 2],
                        length: None,
                    },
                )),
                hbone_mtls_port: 15008,
            },
            "waypoint.address.address: 2 bytes",
        ),
    ];
    for (g, expected) in cases {
        let e = service(&xw::Service {
            waypoint: Some(g.clone()),
            ..full_service()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(expected), "{e:?} vs {expected:?}");
        let e = workload(&xw::Workload {
            waypoint: Some(g),
            ..full_workload()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(expected), "{e:?} vs {expected:?}");
    }
}
