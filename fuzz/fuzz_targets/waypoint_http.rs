//! Fuzzes the waypoint's request handling without a network: arbitrary
//! bytes are a client's stream inside a CONNECT tunnel. Protocol detection
//! reads the first bytes; hyper's HTTP/1.1 server (as the waypoint
//! configures it: header size limit) parses request heads from the bytes;
//! each parsed request goes through the pipeline's decisions in order
//! against a fixed compiled config with routes and policies: path
//! normalization, `forwarded`, hop-by-hop stripping, trace context, JWT
//! authentication (token locations, parsing, the removal plan), L7
//! authorization, route selection, filters and backend choice.
//!
//! Invariants: nothing panics; a normalized path starts with '/' and
//! normalizing it again changes nothing; a selected rule belongs to the
//! service; a stripped header map holds no `connection` header.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use mesh_api::ambit::waypoint::v1 as wp;
use mesh_core::hbone::headers::Forwarded;
use tokio::io::AsyncWriteExt;
use waypoint::authz::{self, HttpAttrs, RequestAttrs};
use waypoint::config::Snapshot;
use waypoint::headers::{self, TraceContext};
use waypoint::listener::detect;
use waypoint::route::{self, RequestHead, Selection};

fn snapshot() -> Arc<Snapshot> {
    static SNAP: OnceLock<Arc<Snapshot>> = OnceLock::new();
    SNAP.get_or_init(|| {
        let prefix = |v: &str| wp::Match {
            path: Some(wp::PathMatch {
                r#type: wp::path_match::Type::Prefix as i32,
                value: v.into(),
            }),
            ..Default::default()
        };
        let backend = |name: &str, weight| wp::Backend {
            hostname: format!("{name}.default.svc.cluster.local"),
            namespace: "default".into(),
            name: name.into(),
            port: 80,
            weight,
            filters: vec![],
        };
        let w = wp::Waypoint {
            namespace: "default".into(),
            name: "waypoint".into(),
            services: vec![wp::Service {
                namespace: "default".into(),
                name: "echo".into(),
                hostname: "echo.default.svc.cluster.local".into(),
                addresses: vec!["10.96.0.10".into()],
                ports: vec![wp::Port {
                    port: 80,
                    target_port: 8080,
                    protocol: wp::Protocol::Http1 as i32,
                    name: "http".into(),
                }],
                routes: vec![wp::Route {
                    kind: wp::route::Kind::Http as i32,
                    namespace: "default".into(),
                    name: "r".into(),
                    created: 1,
                    rules: vec![
                        wp::Rule {
                            name: "api".into(),
                            matches: vec![prefix("/api")],
                            filters: vec![wp::Filter {
                                kind: Some(wp::filter::Kind::UrlRewrite(wp::Rewrite {
                                    hostname: String::new(),
                                    path: Some(wp::PathModifier {
                                        r#type: wp::path_modifier::Type::Prefix as i32,
                                        value: "/v2".into(),
                                    }),
                                })),
                            }],
                            backends: vec![backend("v1", 90), backend("v2", 10)],
                            ..Default::default()
                        },
                        wp::Rule {
                            name: "old".into(),
                            matches: vec![prefix("/old")],
                            filters: vec![wp::Filter {
                                kind: Some(wp::filter::Kind::RequestRedirect(wp::Redirect {
                                    scheme: "https".into(),
                                    status_code: 301,
                                    ..Default::default()
                                })),
                            }],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                policies: vec![wp::Policy {
                    namespace: "default".into(),
                    name: "deny-admin".into(),
                    action: wp::policy::Action::Deny as i32,
                    rules: vec![wp::PolicyRule {
                        to: vec![wp::Operation {
                            paths: vec!["/admin/*".into()],
                            methods: vec!["POST".into()],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    dry_run: false,
                }],
                authentications: vec![wp::RequestAuthentication {
                    namespace: "default".into(),
                    name: "idp".into(),
                    rules: vec![wp::JwtRule {
                        issuer: "https://idp".into(),
                        jwks: r#"{"keys":[]}"#.into(),
                        from_cookies: vec!["jwt".into()],
                        from_params: vec!["access_token".into()],
                        output_claim_to_headers: vec![wp::ClaimToHeader {
                            header: "x-sub".into(),
                            claim: "sub".into(),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            policies: vec![],
            authentications: vec![],
        };
        Arc::new(Snapshot::compile(&w).0)
    })
    .clone()
}

/// The pipeline's decisions for one parsed request, in its order.
fn decide(snapshot: &Snapshot, req: http::Request<Incoming>) {
    let (mut parts, _) = req.into_parts();
    let raw = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(path) = authz::normalize_path(raw) else {
        return;
    };
    assert!(path.starts_with('/') || path.starts_with('?'), "{path:?}");
    assert_eq!(
        authz::normalize_path(&path).ok().as_deref(),
        Some(path.as_str())
    );
    if let Some(f) = parts.headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        let _ = Forwarded::parse(f);
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    assert!(!parts.headers.contains_key(http::header::CONNECTION));
    let trace = TraceContext::continue_or_start(&parts.headers, &mut rand_free_rng());
    let _ = trace.header_value();
    let _ = headers::is_grpc(&parts.headers);
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = waypoint::filters::host_without_port(host);
    let service = snapshot
        .service_by_host("echo.default.svc.cluster.local")
        .expect("compiled");
    let auth = waypoint::authn::decide(
        snapshot.gateway_authentications(),
        Some(&service.authentications),
        &parts.headers,
        query,
        1_700_000_000,
    );
    if let Ok(plan) = &auth {
        let mut h = parts.headers.clone();
        waypoint::authn::apply_headers(plan, &mut h);
        assert!(!h.contains_key("x-sub") || plan.verified.is_some());
        let mut uri = parts.uri.clone();
        waypoint::authn::apply_uri(plan, &mut uri);
    }
    let verified = auth.ok().and_then(|p| p.verified);
    let attrs = RequestAttrs {
        source_principal: Some("spiffe://cluster.local/ns/default/sa/client"),
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.96.0.10".parse().unwrap(),
        destination_port: 80,
        request: Some(HttpAttrs {
            method: &parts.method,
            path: path_only,
            host,
            headers: &parts.headers,
            auth: verified.as_ref(),
        }),
    };
    let _ = authz::decide(snapshot.gateway_policies(), Some(&service.policies), &attrs);
    let head = RequestHead {
        method: &parts.method,
        path: path_only,
        query,
        headers: &parts.headers,
        host,
        port: 80,
    };
    if let Selection::Matched(s) = service.routes.select(&head) {
        if let Some(r) = &s.rule.filters.redirect {
            let _ = waypoint::filters::redirect(r, &head, "http", s.matched_prefix);
        }
        if let Some(r) = &s.rule.filters.rewrite {
            let _ = waypoint::filters::rewrite(r, &path, host, s.matched_prefix);
        }
        let _ = route::pick_backend(s.rule, &mut rand_free_rng());
    }
}

/// A deterministic generator, so a crash reproduces.
fn rand_free_rng() -> impl rand::Rng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(7)
}

fuzz_target!(|input: &[u8]| {
    let _ = detect(input);
    let snapshot = snapshot();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(move |req| {
            let snapshot = snapshot.clone();
            async move {
                decide(&snapshot, req);
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(server), service);
        let feed = async {
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            // Drain what the server answers so it never blocks on writing.
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut client, &mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            tokio::join!(conn, feed)
        })
        .await;
    });
});
