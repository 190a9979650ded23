use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method};
use mesh_api::ambit::waypoint::v1 as pb;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::authz::{self, HttpAttrs, RequestAttrs};
use crate::route::{RequestHead, Selection};

fn service(name: &str, addresses: &[&str], ports: Vec<pb::Port>) -> pb::Service {
    pb::Service {
        namespace: "default".to_string(),
        name: name.to_string(),
        hostname: format!("{name}.default.svc.cluster.local"),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        ports,
        ..Default::default()
    }
}

fn port(port: u32, target: u32, protocol: i32) -> pb::Port {
    pb::Port {
        port,
        target_port: target,
        protocol,
        name: format!("p{port}"),
    }
}

#[test]
fn services_by_address_and_host_with_ports() {
    let w = pb::Waypoint {
        namespace: "default".to_string(),
        name: "waypoint".to_string(),
        services: vec![
            service(
                "web",
                &["10.96.0.10", "fd00::10"],
                vec![
                    port(80, 8080, pb::Protocol::Http1 as i32),
                    port(9000, 0, pb::Protocol::Grpc as i32),
                    port(5432, 0, pb::Protocol::Tcp as i32),
                ],
            ),
            service("db", &["10.96.0.11"], vec![]),
        ],
        policies: vec![],
        authentications: vec![],
    };
    let (snap, errors) = Snapshot::compile(&w);
    assert_eq!(errors, vec![]);
    assert_eq!((snap.namespace(), snap.name()), ("default", "waypoint"));
    let web = snap
        .service_for("10.96.0.10".parse().unwrap(), 80)
        .expect("web by v4");
    assert_eq!(web.name, "web");
    assert_eq!(
        snap.service_for("fd00::10".parse().unwrap(), 80)
            .map(|s| s.name.as_str()),
        Some("web")
    );
    // An IPv4-mapped IPv6 authority names the IPv4 service.
    assert_eq!(
        snap.service_for("::ffff:10.96.0.11".parse().unwrap(), 5432)
            .map(|s| s.name.as_str()),
        Some("db")
    );
    assert!(
        snap.service_for("10.96.0.99".parse().unwrap(), 80)
            .is_none()
    );
    assert_eq!(
        snap.service_by_host("WEB.default.svc.cluster.local.")
            .map(|s| s.name.as_str()),
        Some("web")
    );
    assert_eq!(
        web.port(80),
        Some(&PortConfig {
            port: 80,
            target_port: 8080,
            protocol: Protocol::Http1,
            name: "p80".to_string()
        })
    );
    assert_eq!(
        web.port(9000).map(|p| (p.target_port, p.protocol)),
        Some((9000, Protocol::Grpc))
    );
    assert_eq!(web.port(5432).map(|p| p.protocol), Some(Protocol::Tcp));
    assert!(web.port(81).is_none());
}

#[test]
fn invalid_parts_are_dropped_and_named() {
    let mut s = service(
        "web",
        &["10.96.0.10", "not-an-ip"],
        vec![
            port(80, 0, 0),
            port(70_000, 0, 0),
            port(81, 0, 42),
            port(82, 99_999, 0),
            port(80, 0, 1),
        ],
    );
    s.policies = vec![pb::Policy {
        namespace: "default".to_string(),
        name: "bad-cidr".to_string(),
        action: pb::policy::Action::Allow as i32,
        rules: vec![pb::PolicyRule {
            from: vec![pb::Source {
                ip_blocks: vec!["10.0.0.0/99".to_string()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dry_run: false,
    }];
    let dup = service("dup", &["10.96.0.10"], vec![]);
    let w = pb::Waypoint {
        namespace: "default".to_string(),
        name: "waypoint".to_string(),
        services: vec![s, dup],
        policies: vec![pb::Policy {
            namespace: "default".to_string(),
            name: "odd-action".to_string(),
            action: 9,
            ..Default::default()
        }],
        authentications: vec![],
    };
    let (snap, errors) = Snapshot::compile(&w);
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let expect = [
        "service default/web: address \"not-an-ip\" is not an IP address",
        "service default/web: port 70000: not a port number",
        "service default/web: port 81: unknown protocol 42",
        "service default/web: port 82: target port 99999",
        "service default/web: port 80: declared twice",
        "service default/dup: address 10.96.0.10 already belongs to service default/web",
        "authorization policy default/bad-cidr (attached to service default/web), rule #0: ipBlocks: \"10.0.0.0/99\"",
        "authorization policy default/odd-action (attached to gateway default/waypoint): unknown action 9",
    ];
    for e in expect {
        assert!(
            messages.iter().any(|m| m.contains(e)),
            "missing {e:?} in {messages:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{messages:#?}");
    let web = snap.services().first().expect("web kept");
    assert_eq!(web.addresses, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.port(80).map(|p| p.protocol), Some(Protocol::Detect));
}

/// Random strings drawn from characters that matter to the parsers.
fn garble(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "/",
        "*",
        ".",
        "..",
        "%",
        "%2F",
        "%61",
        "a",
        "Z",
        "0",
        "9",
        "-",
        ":",
        "[",
        "]",
        "(",
        ")",
        "\\",
        "?",
        "&",
        "=",
        " ",
        "\u{0}",
        "é",
        "10.0.0.1",
        "::1",
        "/24",
        "/99",
        "spiffe://",
        "/ns/",
        "request.headers[",
        "source.ip",
        "destination.port",
        "x-h",
        "*.example.com",
        "https",
        "{",
        "}",
        "+",
        "$",
        "^",
    ];
    let n = rng.random_range(0..6);
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn strings(rng: &mut StdRng) -> Vec<String> {
    (0..rng.random_range(0..3)).map(|_| garble(rng)).collect()
}

fn num(rng: &mut StdRng) -> u32 {
    match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(0..100),
        2 => rng.random_range(0..70_000),
        _ => rng.random(),
    }
}

fn enum_value(rng: &mut StdRng) -> i32 {
    rng.random_range(-1..6)
}

fn duration(rng: &mut StdRng) -> Option<prost_types::Duration> {
    rng.random_bool(0.5).then(|| prost_types::Duration {
        seconds: rng.random_range(-5..i64::MAX / 2),
        nanos: rng.random_range(-5..2_000_000_000),
    })
}

fn random_filter(rng: &mut StdRng, depth: u32) -> pb::Filter {
    let path = |rng: &mut StdRng| {
        rng.random_bool(0.5).then(|| pb::PathModifier {
            r#type: enum_value(rng),
            value: garble(rng),
        })
    };
    let headers = |rng: &mut StdRng| pb::HeaderModifier {
        set: (0..2)
            .map(|_| pb::Header {
                name: garble(rng),
                value: garble(rng),
            })
            .collect(),
        add: (0..1)
            .map(|_| pb::Header {
                name: garble(rng),
                value: garble(rng),
            })
            .collect(),
        remove: strings(rng),
    };
    let kind = match rng.random_range(0..6) {
        0 => None,
        1 => Some(pb::filter::Kind::RequestHeaderModifier(headers(rng))),
        2 => Some(pb::filter::Kind::ResponseHeaderModifier(headers(rng))),
        3 => Some(pb::filter::Kind::RequestRedirect(pb::Redirect {
            scheme: garble(rng),
            hostname: garble(rng),
            path: path(rng),
            port: num(rng),
            status_code: [0, 301, 302, 308, 200, num(rng)][rng.random_range(0..6)],
        })),
        4 => Some(pb::filter::Kind::UrlRewrite(pb::Rewrite {
            hostname: garble(rng),
            path: path(rng),
        })),
        _ => Some(pb::filter::Kind::RequestMirror(pb::Mirror {
            backend: (depth < 2).then(|| random_backend(rng, depth + 1)),
            percent: [0.0, 50.0, 100.0, -1.0, f64::NAN, 1e9][rng.random_range(0..6)],
        })),
    };
    pb::Filter { kind }
}

fn random_backend(rng: &mut StdRng, depth: u32) -> pb::Backend {
    pb::Backend {
        hostname: garble(rng),
        namespace: garble(rng),
        name: garble(rng),
        port: num(rng),
        weight: num(rng),
        filters: if depth < 2 {
            (0..rng.random_range(0..2))
                .map(|_| random_filter(rng, depth + 1))
                .collect()
        } else {
            vec![]
        },
    }
}

fn random_rule(rng: &mut StdRng) -> pb::Rule {
    pb::Rule {
        name: garble(rng),
        matches: (0..rng.random_range(0..3))
            .map(|_| pb::Match {
                path: rng.random_bool(0.7).then(|| pb::PathMatch {
                    r#type: enum_value(rng),
                    value: garble(rng),
                }),
                headers: (0..rng.random_range(0..2))
                    .map(|_| pb::HeaderMatch {
                        r#type: enum_value(rng),
                        name: garble(rng),
                        value: garble(rng),
                    })
                    .collect(),
                query_params: (0..rng.random_range(0..2))
                    .map(|_| pb::QueryMatch {
                        r#type: enum_value(rng),
                        name: garble(rng),
                        value: garble(rng),
                    })
                    .collect(),
                method: garble(rng),
            })
            .collect(),
        filters: (0..rng.random_range(0..3))
            .map(|_| random_filter(rng, 0))
            .collect(),
        backends: (0..rng.random_range(0..3))
            .map(|_| random_backend(rng, 0))
            .collect(),
        timeouts: rng.random_bool(0.5).then(|| pb::Timeouts {
            request: duration(rng),
            backend_request: duration(rng),
        }),
        retry: rng.random_bool(0.5).then(|| pb::Retry {
            attempts: num(rng),
            codes: (0..rng.random_range(0..3)).map(|_| num(rng)).collect(),
            backoff: duration(rng),
        }),
        fault: rng.random_bool(0.5).then(|| pb::Fault {
            delay: duration(rng),
            delay_percent: rng.random_range(-10.0..120.0),
            abort_status: num(rng),
            abort_grpc_status: num(rng),
            abort_percent: rng.random_range(-10.0..120.0),
        }),
    }
}

fn random_policy(rng: &mut StdRng) -> pb::Policy {
    pb::Policy {
        namespace: garble(rng),
        name: garble(rng),
        action: enum_value(rng),
        rules: (0..rng.random_range(0..3))
            .map(|_| pb::PolicyRule {
                from: (0..rng.random_range(0..2))
                    .map(|_| pb::Source {
                        principals: strings(rng),
                        not_principals: strings(rng),
                        request_principals: strings(rng),
                        not_request_principals: strings(rng),
                        namespaces: strings(rng),
                        not_namespaces: strings(rng),
                        ip_blocks: strings(rng),
                        not_ip_blocks: strings(rng),
                        remote_ip_blocks: strings(rng),
                        not_remote_ip_blocks: strings(rng),
                    })
                    .collect(),
                to: (0..rng.random_range(0..2))
                    .map(|_| pb::Operation {
                        hosts: strings(rng),
                        not_hosts: strings(rng),
                        ports: strings(rng),
                        not_ports: strings(rng),
                        methods: strings(rng),
                        not_methods: strings(rng),
                        paths: strings(rng),
                        not_paths: strings(rng),
                    })
                    .collect(),
                when: (0..rng.random_range(0..2))
                    .map(|_| pb::Condition {
                        key: garble(rng),
                        values: strings(rng),
                        not_values: strings(rng),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: rng.random_bool(0.2),
    }
}

fn random_authentication(rng: &mut StdRng) -> pb::RequestAuthentication {
    let jwks = [
        String::new(),
        r#"{"keys":[]}"#.to_string(),
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#.to_string(),
        garble(rng),
    ];
    pb::RequestAuthentication {
        namespace: garble(rng),
        name: garble(rng),
        rules: (0..rng.random_range(0..3))
            .map(|_| pb::JwtRule {
                issuer: garble(rng),
                audiences: strings(rng),
                jwks: jwks[rng.random_range(0..jwks.len())].clone(),
                from_headers: (0..rng.random_range(0..2))
                    .map(|_| pb::JwtHeader {
                        name: garble(rng),
                        prefix: garble(rng),
                    })
                    .collect(),
                from_params: strings(rng),
                from_cookies: strings(rng),
                forward_original_token: rng.random_bool(0.5),
                output_payload_to_header: garble(rng),
                output_claim_to_headers: (0..rng.random_range(0..2))
                    .map(|_| pb::ClaimToHeader {
                        header: garble(rng),
                        claim: garble(rng),
                    })
                    .collect(),
                jwks_uri: garble(rng),
            })
            .collect(),
    }
}

fn random_waypoint(rng: &mut StdRng) -> pb::Waypoint {
    pb::Waypoint {
        namespace: garble(rng),
        name: garble(rng),
        services: (0..rng.random_range(0..3))
            .map(|_| pb::Service {
                namespace: garble(rng),
                name: garble(rng),
                hostname: garble(rng),
                addresses: strings(rng),
                ports: (0..rng.random_range(0..3))
                    .map(|_| pb::Port {
                        port: num(rng),
                        target_port: num(rng),
                        protocol: enum_value(rng),
                        name: garble(rng),
                    })
                    .collect(),
                routes: (0..rng.random_range(0..3))
                    .map(|_| pb::Route {
                        kind: enum_value(rng),
                        namespace: garble(rng),
                        name: garble(rng),
                        created: rng.random(),
                        hostnames: strings(rng),
                        rules: (0..rng.random_range(0..3))
                            .map(|_| random_rule(rng))
                            .collect(),
                        ports: (0..rng.random_range(0..2)).map(|_| num(rng)).collect(),
                    })
                    .collect(),
                policies: (0..rng.random_range(0..3))
                    .map(|_| random_policy(rng))
                    .collect(),
                authentications: (0..rng.random_range(0..2))
                    .map(|_| random_authentication(rng))
                    .collect(),
            })
            .collect(),
        policies: (0..rng.random_range(0..3))
            .map(|_| random_policy(rng))
            .collect(),
        authentications: (0..rng.random_range(0..2))
            .map(|_| random_authentication(rng))
            .collect(),
    }
}

/// Exercises a snapshot the way the data path does.
fn exercise(snap: &Snapshot, rng: &mut StdRng) {
    let headers = HeaderMap::new();
    for s in snap.services() {
        for _ in 0..4 {
            let path = garble(rng);
            let normalized = authz::normalize_path(&path).unwrap_or_else(|_| "/".to_string());
            let host = garble(rng);
            let head = RequestHead {
                method: &Method::GET,
                path: &normalized,
                query: Some("a=1&b=%zz"),
                headers: &headers,
                host: &host,
                port: rng.random(),
            };
            if let Selection::Matched(sel) = s.routes.select(&head) {
                let _ = crate::route::pick_backend(sel.rule, rng);
            }
            let http = HttpAttrs {
                method: &Method::POST,
                path: &path,
                host: &host,
                headers: &headers,
                auth: None,
            };
            let principal = garble(rng);
            let attrs = RequestAttrs {
                source_principal: Some(&principal),
                source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                destination_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                destination_port: 80,
                request: rng.random_bool(0.5).then_some(http),
            };
            let _ = authz::evaluate(snap.gateway_policies(), Some(&s.policies), &attrs);
            let mut auth_headers = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {}", garble(rng))) {
                auth_headers.insert(http::header::AUTHORIZATION, v);
            }
            if let Ok(plan) = crate::authn::decide(
                snap.gateway_authentications(),
                Some(&s.authentications),
                &auth_headers,
                Some("access_token=a.b.c"),
                0,
            ) {
                let mut uri = http::Uri::from_static("/p?access_token=a.b.c");
                crate::authn::apply_headers(&plan, &mut auth_headers);
                crate::authn::apply_uri(&plan, &mut uri);
            }
        }
    }
}

#[test]
fn random_and_garbled_protos_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut errors_seen = 0;
    for _ in 0..2_000 {
        let w = random_waypoint(&mut rng);
        let (snap, errors) = Snapshot::compile(&w);
        errors_seen += errors.len();
        for e in &errors {
            assert!(!e.to_string().is_empty());
        }
        exercise(&snap, &mut rng);
        // The same resource after a byte was flipped or cut, as from the wire.
        let mut bytes = w.encode_to_vec();
        if !bytes.is_empty() {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= rng.random::<u8>();
            bytes.truncate(rng.random_range(0..=bytes.len()));
        }
        if let Ok(w) = pb::Waypoint::decode(bytes.as_slice()) {
            let (snap, _) = Snapshot::compile(&w);
            exercise(&snap, &mut rng);
        }
    }
    assert!(
        errors_seen > 1_000,
        "the generator should produce invalid parts"
    );
}
