//! Fuzzes the waypoint's L7 config: a `Waypoint` resource body is decoded,
//! compiled (`waypoint::config::Snapshot::compile`) and used the way the
//! data path uses it: a route selection, a backend pick, filters, a JWT
//! authentication plan (whatever the rules' key sets and locations) and an
//! authorization decision per service.
//!
//! Input: the protobuf body of an `ambit.waypoint.v1.Waypoint`; its last
//! bytes also seed the request's path, host and method.
//!
//! Invariants:
//! - nothing panics (compile, select, pick, redirect/rewrite, decide,
//!   normalize_path);
//! - every dropped part is reported with a non-empty message;
//! - a normalized path is a fixed point of normalization.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use mesh_api::ambit::waypoint::v1::Waypoint;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use waypoint::authz::{self, HttpAttrs, RequestAttrs};
use waypoint::config::Snapshot;
use waypoint::filters;
use waypoint::route::{RequestHead, Selection, pick_backend};

fuzz_target!(|input: &[u8]| {
    let Ok(w) = Waypoint::decode(input) else {
        return;
    };
    let (snap, errors) = Snapshot::compile(&w);
    for e in &errors {
        assert!(!e.to_string().is_empty());
    }
    let tail = &input[input.len().saturating_sub(24)..];
    let raw_path = format!("/{}", String::from_utf8_lossy(tail));
    let path = match authz::normalize_path(&raw_path) {
        Ok(p) => {
            assert_eq!(authz::normalize_path(&p).as_deref(), Ok(p.as_str()));
            p
        }
        Err(_) => "/".to_string(),
    };
    let path = path
        .split_once('?')
        .map_or(path.as_str(), |(p, _)| p)
        .to_string();
    let method = Method::from_bytes(&tail[..tail.len().min(3)]).unwrap_or(Method::GET);
    let mut headers = HeaderMap::new();
    headers.insert("x-fuzz", HeaderValue::from_static("1"));
    let mut rng = StdRng::seed_from_u64(input.len() as u64);
    for s in snap.services() {
        for (host, port) in [(s.hostname.as_str(), 80u16), ("a.example.com:8080", 8080)] {
            let head = RequestHead {
                method: &method,
                path: &path,
                query: Some("a=1&b=%zz"),
                headers: &headers,
                host,
                port,
            };
            if let Selection::Matched(sel) = s.routes.select(&head) {
                let _ = pick_backend(sel.rule, &mut rng);
                if let Some(r) = &sel.rule.filters.redirect {
                    let _ = filters::redirect(r, &head, "http", sel.matched_prefix);
                }
                if let Some(r) = &sel.rule.filters.rewrite {
                    let _ = filters::rewrite(r, &path, host, sel.matched_prefix);
                }
                if let Some(m) = &sel.rule.filters.request_headers {
                    filters::modify_headers(m, &mut headers.clone());
                }
            }
            for request in [
                None,
                Some(HttpAttrs {
                    method: &method,
                    path: &raw_path,
                    host,
                    headers: &headers,
                    auth: None,
                }),
            ] {
                let attrs = RequestAttrs {
                    source_principal: Some("spiffe://cluster.local/ns/default/sa/client"),
                    source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    destination_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                    destination_port: port,
                    request,
                };
                let _ = authz::evaluate(snap.gateway_policies(), Some(&s.policies), &attrs);
            }
            let mut jwt_headers = headers.clone();
            if let Ok(v) =
                HeaderValue::from_str(&format!("Bearer {}", String::from_utf8_lossy(tail)))
            {
                jwt_headers.insert(http::header::AUTHORIZATION, v);
            }
            if let Ok(plan) = waypoint::authn::decide(
                snap.gateway_authentications(),
                Some(&s.authentications),
                &jwt_headers,
                Some("access_token=a.b.c&x=1"),
                1_700_000_000,
            ) {
                waypoint::authn::apply_headers(&plan, &mut jwt_headers);
                let mut uri = http::Uri::from_static("/p?access_token=a.b.c&x=1");
                waypoint::authn::apply_uri(&plan, &mut uri);
            }
        }
    }
});
