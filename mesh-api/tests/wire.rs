//! Wire-format tests: the exact bytes of protocol-critical field numbers, round
//! trips of WDS resources, and decoding of hand-built byte sequences.

use std::collections::{BTreeMap, HashMap};

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use mesh_api::google::rpc::Status;
use mesh_api::istio::security::{
    self, Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match::MatchType,
};
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_api::istio::workload::zds::{
    self, Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use mesh_api::istio::workload::{
    Address, AppProtocol, ApplicationTunnel, GatewayAddress, IpFamilies, LoadBalancing, Locality,
    NamespacedHostname, NetworkAddress, NetworkMode, Port, PortList, Service, TunnelProtocol,
    WeightedWaypoint, Workload, WorkloadStatus, WorkloadType, address, application_tunnel,
    gateway_address, load_balancing, service,
};
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;

fn bytes<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

// ---------------------------------------------------------------- type URLs

#[test]
fn type_urls() {
    assert_eq!(
        ADDRESS_TYPE_URL,
        "type.googleapis.com/istio.workload.Address"
    );
    assert_eq!(
        AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/istio.security.Authorization"
    );
}

// ---------------------------------------------------------------- ZDS

#[test]
fn zds_del_workload_uid_is_field_2() {
    let del = DelWorkload { uid: "a".into() };
    assert_eq!(bytes(&del), [0x12, 0x01, b'a']);
}

#[test]
fn zds_keep_and_add_uid_is_field_1() {
    assert_eq!(bytes(&KeepWorkload { uid: "a".into() }), [0x0a, 0x01, b'a']);
    let add = AddWorkload {
        uid: "a".into(),
        workload_info: Some(WorkloadInfo {
            name: "p".into(),
            namespace: "n".into(),
            service_account: "s".into(),
        }),
    };
    assert_eq!(
        bytes(&add),
        [
            0x0a, 0x01, b'a', // uid = 1
            0x12, 0x09, // workload_info = 2, 9 bytes
            0x0a, 0x01, b'p', // name = 1
            0x12, 0x01, b'n', // namespace = 2
            0x1a, 0x01, b's', // service_account = 3
        ]
    );
}

#[test]
fn zds_workload_request_oneof_tags() {
    let keep = WorkloadRequest {
        payload: Some(workload_request::Payload::Keep(KeepWorkload {
            uid: "u".into(),
        })),
    };
    // keep = field 5, length-delimited.
    assert_eq!(bytes(&keep), [0x2a, 0x03, 0x0a, 0x01, b'u']);

    let del = WorkloadRequest {
        payload: Some(workload_request::Payload::Del(DelWorkload {
            uid: "u".into(),
        })),
    };
    assert_eq!(bytes(&del), [0x12, 0x03, 0x12, 0x01, b'u']);

    let snap = WorkloadRequest {
        payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
    };
    // An empty submessage in a oneof is still present on the wire.
    assert_eq!(bytes(&snap), [0x1a, 0x00]);

    let add = WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: "u".into(),
            workload_info: None,
        })),
    };
    assert_eq!(bytes(&add), [0x0a, 0x03, 0x0a, 0x01, b'u']);
}

#[test]
fn zds_decode_hand_built_requests() {
    let keep = WorkloadRequest::decode(&[0x2a, 0x03, 0x0a, 0x01, b'k'][..]).unwrap();
    assert_eq!(
        keep.payload,
        Some(workload_request::Payload::Keep(KeepWorkload {
            uid: "k".into()
        }))
    );
    let snap = WorkloadRequest::decode(&[0x1a, 0x00][..]).unwrap();
    assert_eq!(
        snap.payload,
        Some(workload_request::Payload::SnapshotSent(SnapshotSent {}))
    );
    // Add with a uid of 4 bytes and workload_info {name: "pod"}.
    let add = WorkloadRequest::decode(
        &[
            0x0a, 0x0d, 0x0a, 0x04, b'a', b'b', b'c', b'd', 0x12, 0x05, 0x0a, 0x03, b'p', b'o',
            b'd',
        ][..],
    )
    .unwrap();
    match add.payload {
        Some(workload_request::Payload::Add(a)) => {
            assert_eq!(a.uid, "abcd");
            let info = a.workload_info.expect("workload_info present");
            assert_eq!(info.name, "pod");
            assert_eq!(info.namespace, "");
        }
        other => panic!("expected Add, got {other:?}"),
    }
    // An empty datagram decodes to a request without payload.
    assert_eq!(WorkloadRequest::decode(&[][..]).unwrap().payload, None);
    // Truncated input is an error, not a partial message.
    assert!(WorkloadRequest::decode(&[0x2a, 0x03, 0x0a][..]).is_err());
}

#[test]
fn zds_hello_and_ack() {
    let hello = ZdsHello {
        version: zds::Version::V1.into(),
    };
    assert_eq!(bytes(&hello), [0x08, 0x01]);

    let ack = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack::default())),
    };
    // A plain ACK is an empty Ack message in field 1.
    assert_eq!(bytes(&ack), [0x0a, 0x00]);

    let nack = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error: "x".into() })),
    };
    assert_eq!(bytes(&nack), [0x0a, 0x03, 0x0a, 0x01, b'x']);
    assert_eq!(WorkloadResponse::decode(&bytes(&nack)[..]).unwrap(), nack);
}

// ---------------------------------------------------------------- istio.workload

#[test]
fn workload_uid_is_field_20() {
    let w = Workload {
        uid: "u".into(),
        ..Default::default()
    };
    // 20 << 3 | 2 = 162 = varint [0xa2, 0x01].
    assert_eq!(bytes(&w), [0xa2, 0x01, 0x01, b'u']);
}

#[test]
fn workload_capacity_is_uint32value_at_27() {
    let w = Workload {
        capacity: Some(5),
        ..Default::default()
    };
    // 27 << 3 | 2 = 218 = [0xda, 0x01]; wrapper message {value = 1: 5}.
    assert_eq!(bytes(&w), [0xda, 0x01, 0x02, 0x08, 0x05]);

    // Zero capacity is present (empty wrapper) and distinct from unset.
    let zero = Workload {
        capacity: Some(0),
        ..Default::default()
    };
    assert_eq!(bytes(&zero), [0xda, 0x01, 0x00]);
    assert_eq!(
        Workload::decode(&[0xda, 0x01, 0x00][..]).unwrap().capacity,
        Some(0)
    );
    assert_eq!(Workload::decode(&[][..]).unwrap().capacity, None);
}

#[test]
fn workload_other_field_numbers() {
    let w = Workload {
        network_mode: NetworkMode::HostNetwork.into(),
        ..Default::default()
    };
    // 25 << 3 | 0 = 200 = [0xc8, 0x01].
    assert_eq!(bytes(&w), [0xc8, 0x01, 0x01]);

    let w = Workload {
        tunnel_protocol: TunnelProtocol::Hbone.into(),
        status: WorkloadStatus::Unhealthy.into(),
        ..Default::default()
    };
    // tunnel_protocol = 5, status = 17 (17 << 3 = 136 = [0x88, 0x01]).
    assert_eq!(bytes(&w), [0x28, 0x01, 0x88, 0x01, 0x01]);

    let w = Workload {
        services: BTreeMap::from([(
            "n/h".to_string(),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    ..Default::default()
                }],
            },
        )]),
        ..Default::default()
    };
    // services = 22 (22 << 3 | 2 = 178 = [0xb2, 0x01]), entry {key = 1, value = 2},
    // value PortList { ports = 1: Port { service_port = 1: 80 } }.
    assert_eq!(
        bytes(&w),
        [
            0xb2, 0x01, 0x0b, // services entry, 11 bytes
            0x0a, 0x03, b'n', b'/', b'h', // key
            0x12, 0x04, 0x0a, 0x02, 0x08, 0x50, // value
        ]
    );
}

#[test]
fn service_recent_field_numbers() {
    let s = Service {
        visibility: service::Visibility::Namespace.into(),
        ..Default::default()
    };
    // visibility = 14, varint.
    assert_eq!(bytes(&s), [0x70, 0x01]);

    let s = Service {
        weighted_waypoints: vec![WeightedWaypoint {
            destination: None,
            weight: 3,
        }],
        ingress_use_waypoint: true,
        ..Default::default()
    };
    // ingress_use_waypoint = 12, weighted_waypoints = 13.
    assert_eq!(bytes(&s), [0x60, 0x01, 0x6a, 0x02, 0x10, 0x03]);
}

#[test]
fn gateway_address_and_network_address() {
    let g = GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: "n".into(),
            hostname: "h".into(),
        })),
        hbone_mtls_port: 15008,
    };
    assert_eq!(
        bytes(&g),
        [
            0x0a, 0x06, 0x0a, 0x01, b'n', 0x12, 0x01, b'h', // hostname = 1
            0x18, 0xa0, 0x75, // hbone_mtls_port = 3: 15008
        ]
    );

    // `length` is proto3 optional: Some(0) is on the wire, None is not.
    let host = NetworkAddress {
        network: String::new(),
        address: vec![10, 0, 0, 1],
        length: None,
    };
    assert_eq!(bytes(&host), [0x12, 0x04, 10, 0, 0, 1]);
    let zero = NetworkAddress {
        length: Some(0),
        ..host.clone()
    };
    assert_eq!(bytes(&zero), [0x12, 0x04, 10, 0, 0, 1, 0x18, 0x00]);
    assert_eq!(
        NetworkAddress::decode(&bytes(&zero)[..]).unwrap().length,
        Some(0)
    );
}

fn full_workload() -> Workload {
    Workload {
        name: "pod-1".into(),
        namespace: "ns".into(),
        addresses: vec![
            vec![10, 0, 0, 5],
            vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        ],
        network: "net1".into(),
        tunnel_protocol: TunnelProtocol::Hbone.into(),
        trust_domain: "cluster.local".into(),
        service_account: "sa".into(),
        waypoint: Some(GatewayAddress {
            destination: Some(gateway_address::Destination::Address(NetworkAddress {
                network: "net1".into(),
                address: vec![10, 0, 0, 9],
                length: None,
            })),
            hbone_mtls_port: 15008,
        }),
        node: "node-a".into(),
        canonical_name: "app".into(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Pod.into(),
        workload_name: "app".into(),
        native_tunnel: false,
        authorization_policies: vec!["ns/policy".into()],
        status: WorkloadStatus::Healthy.into(),
        cluster_id: "Kubernetes".into(),
        network_gateway: None,
        uid: "Kubernetes//Pod/ns/pod-1".into(),
        hostname: String::new(),
        services: BTreeMap::from([(
            "ns/svc.ns.svc.cluster.local".to_string(),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: AppProtocol::Http11.into(),
                }],
            },
        )]),
        application_tunnel: Some(ApplicationTunnel {
            protocol: application_tunnel::Protocol::Proxy.into(),
            port: 15088,
        }),
        locality: Some(Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: NetworkMode::Standard.into(),
        extensions: vec![],
        capacity: Some(3),
    }
}

fn full_service() -> Service {
    Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
            length: Some(32),
        }],
        ports: vec![Port {
            service_port: 80,
            target_port: 0,
            app_protocol: AppProtocol::Http2.into(),
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/ns/sa/other".into()],
        waypoint: Some(GatewayAddress {
            destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                namespace: "ns".into(),
                hostname: "waypoint.ns.svc.cluster.local".into(),
            })),
            hbone_mtls_port: 15008,
        }),
        load_balancing: Some(LoadBalancing {
            routing_preference: vec![
                load_balancing::Scope::Network.into(),
                load_balancing::Scope::Region.into(),
                load_balancing::Scope::Zone.into(),
            ],
            mode: load_balancing::Mode::Failover.into(),
            health_policy: load_balancing::HealthPolicy::AllowAll.into(),
        }),
        ip_families: IpFamilies::Ipv4Only.into(),
        extensions: vec![],
        canonical: true,
        ingress_use_waypoint: false,
        weighted_waypoints: vec![WeightedWaypoint {
            destination: Some(GatewayAddress {
                destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "waypoint-b.ns.svc.cluster.local".into(),
                })),
                hbone_mtls_port: 15008,
            }),
            weight: 10,
        }],
        visibility: service::Visibility::Namespace.into(),
    }
}

#[test]
fn address_with_workload_round_trips() {
    let addr = Address {
        r#type: Some(address::Type::Workload(full_workload())),
    };
    let wire = bytes(&addr);
    // workload = field 1 of Address.
    assert_eq!(wire[0], 0x0a);
    let back = Address::decode(&wire[..]).unwrap();
    assert_eq!(back, addr);
    match back.r#type {
        Some(address::Type::Workload(w)) => {
            assert_eq!(w.uid, "Kubernetes//Pod/ns/pod-1");
            assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
            assert_eq!(w.workload_type(), WorkloadType::Pod);
            assert_eq!(w.capacity, Some(3));
            assert_eq!(
                w.services["ns/svc.ns.svc.cluster.local"].ports[0].app_protocol(),
                AppProtocol::Http11
            );
        }
        other => panic!("expected workload, got {other:?}"),
    }
}

#[test]
fn address_with_service_round_trips() {
    let addr = Address {
        r#type: Some(address::Type::Service(full_service())),
    };
    let wire = bytes(&addr);
    // service = field 2 of Address.
    assert_eq!(wire[0], 0x12);
    let back = Address::decode(&wire[..]).unwrap();
    assert_eq!(back, addr);
    match back.r#type {
        Some(address::Type::Service(s)) => {
            assert_eq!(s.visibility(), service::Visibility::Namespace);
            assert_eq!(s.ip_families(), IpFamilies::Ipv4Only);
            let lb = s.load_balancing.unwrap();
            assert_eq!(
                lb.routing_preference().collect::<Vec<_>>(),
                [
                    load_balancing::Scope::Network,
                    load_balancing::Scope::Region,
                    load_balancing::Scope::Zone
                ]
            );
            assert_eq!(lb.mode(), load_balancing::Mode::Failover);
            assert_eq!(lb.health_policy(), load_balancing::HealthPolicy::AllowAll);
            assert_eq!(s.addresses[0].length, Some(32));
        }
        other => panic!("expected service, got {other:?}"),
    }
}

#[test]
fn address_decodes_hand_built_bytes() {
    // Address { workload = 1: Workload {
    //   name = 1: "p", addresses = 3: [10.0.0.5], tunnel_protocol = 5: HBONE,
    //   <field 15 (reserved, unknown) varint 7>, uid = 20: "u1",
    //   capacity = 27: { value = 1: 2 } } }
    let inner: &[u8] = &[
        0x0a, 0x01, b'p', // name
        0x1a, 0x04, 10, 0, 0, 5, // addresses
        0x28, 0x01, // tunnel_protocol = HBONE
        0x78, 0x07, // field 15, varint: unknown, skipped
        0xa2, 0x01, 0x02, b'u', b'1', // uid
        0xda, 0x01, 0x02, 0x08, 0x02, // capacity
    ];
    let mut wire = vec![0x0a, inner.len() as u8];
    wire.extend_from_slice(inner);

    let addr = Address::decode(&wire[..]).unwrap();
    let Some(address::Type::Workload(w)) = addr.r#type else {
        panic!("expected workload");
    };
    assert_eq!(w.name, "p");
    assert_eq!(w.addresses, vec![vec![10, 0, 0, 5]]);
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.uid, "u1");
    assert_eq!(w.capacity, Some(2));
    assert_eq!(w.namespace, "");

    // Unknown enum values survive as raw i32 and the getter falls back to the default.
    let w = Workload::decode(&[0x28, 0x09][..]).unwrap();
    assert_eq!(w.tunnel_protocol, 9);
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::None);
}

// ---------------------------------------------------------------- istio.security

#[test]
fn authorization_rules_is_field_5() {
    let a = Authorization {
        rules: vec![Rule::default()],
        ..Default::default()
    };
    assert_eq!(bytes(&a), [0x2a, 0x00]);

    let a = Authorization {
        name: "p".into(),
        namespace: "n".into(),
        scope: Scope::WorkloadSelector.into(),
        action: Action::Deny.into(),
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(
        bytes(&a),
        [
            0x0a, 0x01, b'p', // name = 1
            0x12, 0x01, b'n', // namespace = 2
            0x18, 0x02, // scope = 3
            0x20, 0x01, // action = 4
            0x30, 0x01, // dry_run = 6
        ]
    );
}

#[test]
fn clause_matches_is_field_2() {
    let c = Clause {
        matches: vec![Match::default()],
    };
    assert_eq!(bytes(&c), [0x12, 0x00]);
    let r = Rule { clauses: vec![c] };
    assert_eq!(bytes(&r), [0x0a, 0x02, 0x12, 0x00]);
}

#[test]
fn match_destination_ports_packed_at_9() {
    let m = Match {
        destination_ports: vec![80, 443],
        ..Default::default()
    };
    // 9 << 3 | 2 = 0x4a, packed varints 80 = 0x50, 443 = [0xbb, 0x03].
    assert_eq!(bytes(&m), [0x4a, 0x03, 0x50, 0xbb, 0x03]);
    // Decoders must also accept the unpacked form (9 << 3 | 0 = 0x48).
    let unpacked = Match::decode(&[0x48, 0x50, 0x48, 0xbb, 0x03][..]).unwrap();
    assert_eq!(unpacked.destination_ports, [80, 443]);

    let m = Match {
        not_destination_ports: vec![1],
        ..Default::default()
    };
    assert_eq!(bytes(&m), [0x52, 0x01, 0x01]);
}

#[test]
fn match_other_fields() {
    let m = Match {
        not_principals: vec![StringMatch {
            match_type: Some(MatchType::Presence(())),
        }],
        source_ips: vec![security::Address {
            address: vec![10, 0, 0, 0],
            length: 8,
        }],
        service_accounts: vec![ServiceAccountMatch {
            namespace: "n".into(),
            service_account: "s".into(),
        }],
        ..Default::default()
    };
    assert_eq!(
        bytes(&m),
        [
            0x22, 0x02, 0x22, 0x00, // not_principals = 4: StringMatch { presence = 4 }
            0x2a, 0x08, 0x0a, 0x04, 10, 0, 0, 0, 0x10, 0x08, // source_ips = 5
            0x5a, 0x06, 0x0a, 0x01, b'n', 0x12, 0x01, b's', // service_accounts = 11
        ]
    );

    for (kind, tag) in [
        (MatchType::Exact("x".into()), 0x0a),
        (MatchType::Prefix("x".into()), 0x12),
        (MatchType::Suffix("x".into()), 0x1a),
    ] {
        let sm = StringMatch {
            match_type: Some(kind),
        };
        assert_eq!(bytes(&sm), [tag, 0x01, b'x']);
    }
}

#[test]
fn authorization_decodes_hand_built_bytes() {
    // Authorization { name: "a", action: DENY, rules: [ Rule { clauses: [ Clause {
    //   matches: [ Match { destination_ports: [8080] } ] } ] } ] }
    let wire: &[u8] = &[
        0x0a, 0x01, b'a', // name = 1
        0x20, 0x01, // action = 4: DENY
        0x2a, 0x08, // rules = 5, 8 bytes
        0x0a, 0x06, // Rule.clauses = 1, 6 bytes
        0x12, 0x04, // Clause.matches = 2, 4 bytes
        0x4a, 0x02, 0x90, 0x3f, // Match.destination_ports = 9, packed [8080]
    ];
    let a = Authorization::decode(wire).unwrap();
    assert_eq!(a.name, "a");
    assert_eq!(a.action(), Action::Deny);
    assert_eq!(a.scope(), Scope::Global);
    assert_eq!(a.rules.len(), 1);
    assert_eq!(a.rules[0].clauses[0].matches[0].destination_ports, [8080]);
}

// ---------------------------------------------------------------- CA

#[test]
fn certificate_request_field_numbers() {
    let req = IstioCertificateRequest {
        csr: "x".into(),
        validity_duration: 86400,
        metadata: None,
    };
    // csr = 1; validity_duration = 3 varint 86400 = [0x80, 0xa3, 0x05].
    assert_eq!(bytes(&req), [0x0a, 0x01, b'x', 0x18, 0x80, 0xa3, 0x05]);

    let with_meta = IstioCertificateRequest {
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(
                        "spiffe://td/ns/a/sa/b".into(),
                    )),
                },
            )]),
        }),
        ..req
    };
    let wire = bytes(&with_meta);
    // metadata = field 4, length-delimited, after csr and validity_duration.
    assert_eq!(wire[7], 0x22);
    assert_eq!(
        IstioCertificateRequest::decode(&wire[..]).unwrap(),
        with_meta
    );

    let resp = IstioCertificateResponse::decode(
        &[0x0a, 0x01, b'L', 0x0a, 0x01, b'I', 0x0a, 0x01, b'R'][..],
    )
    .unwrap();
    assert_eq!(resp.cert_chain, ["L", "I", "R"]);
}

// ---------------------------------------------------------------- delta xDS

#[test]
fn delta_request_field_numbers() {
    let req = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "i".into(),
            cluster: String::new(),
            metadata: None,
        }),
        type_url: "t".into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        initial_resource_versions: HashMap::new(),
        response_nonce: "n".into(),
        error_detail: Some(Status {
            code: 0,
            message: "m".into(),
            details: vec![],
        }),
    };
    assert_eq!(
        bytes(&req),
        [
            0x0a, 0x03, 0x0a, 0x01, b'i', // node = 1 { id = 1 }
            0x12, 0x01, b't', // type_url = 2
            0x1a, 0x01, b'*', // resource_names_subscribe = 3
            0x22, 0x01, b'*', // resource_names_unsubscribe = 4
            0x32, 0x01, b'n', // response_nonce = 6
            0x3a, 0x03, 0x12, 0x01, b'm', // error_detail = 7 { message = 2 }
        ]
    );

    let req = DeltaDiscoveryRequest {
        initial_resource_versions: HashMap::from([("a".to_string(), "1".to_string())]),
        ..Default::default()
    };
    // initial_resource_versions = 5, entry {key = 1, value = 2}.
    assert_eq!(
        bytes(&req),
        [0x2a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'1']
    );
}

#[test]
fn delta_response_carries_address_resources() {
    let addr = Address {
        r#type: Some(address::Type::Service(full_service())),
    };
    let resp = DeltaDiscoveryResponse {
        system_version_info: "v".into(),
        resources: vec![Resource {
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: addr.encode_to_vec(),
            }),
            name: "ns/svc.ns.svc.cluster.local".into(),
            ..Default::default()
        }],
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "n1".into(),
        removed_resources: vec!["gone".into()],
    };
    let back = DeltaDiscoveryResponse::decode(&bytes(&resp)[..]).unwrap();
    assert_eq!(back, resp);
    let any = back.resources[0].resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    assert_eq!(Address::decode(&any.value[..]).unwrap(), addr);

    // Field numbers: type_url = 4, nonce = 5, removed_resources = 6.
    let small = DeltaDiscoveryResponse {
        type_url: "t".into(),
        nonce: "n".into(),
        removed_resources: vec!["r".into()],
        ..Default::default()
    };
    assert_eq!(
        bytes(&small),
        [0x22, 0x01, b't', 0x2a, 0x01, b'n', 0x32, 0x01, b'r']
    );
    // Resource: version = 1, name = 3.
    let r = Resource {
        version: "1".into(),
        name: "x".into(),
        ..Default::default()
    };
    assert_eq!(bytes(&r), [0x0a, 0x01, b'1', 0x1a, 0x01, b'x']);
}

#[test]
fn node_metadata_is_struct_at_3() {
    let node = Node {
        id: String::new(),
        cluster: "c".into(),
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([(
                "NAME".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("p".into())),
                },
            )]),
        }),
    };
    let wire = bytes(&node);
    assert_eq!(&wire[..3], [0x12, 0x01, b'c']);
    assert_eq!(wire[3], 0x1a);
    assert_eq!(Node::decode(&wire[..]).unwrap(), node);
}
