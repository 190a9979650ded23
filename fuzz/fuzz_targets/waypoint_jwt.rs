//! Fuzzes the waypoint's JWT handling: a key set and a token from the same
//! input, split at the first 0xff byte (never part of valid UTF-8). The key
//! set is parsed (`waypoint::jwt::parse_jwks`), the token parsed and
//! verified against it at a fixed time, and the key set also compiled into
//! a RequestAuthentication whose plan is decided for the token in
//! `Authorization`, a query parameter and a cookie.
//!
//! Invariants: nothing panics; a token over the size cap never parses; a
//! verified token's principal is `<iss>/<sub>`; every key-set problem is
//! reported with a non-empty message.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mesh_api::ambit::waypoint::v1 as wp;
use waypoint::config::Snapshot;
use waypoint::jwt::{self, Expect, MAX_TOKEN_BYTES};

const NOW: i64 = 1_700_000_000;

fuzz_target!(|input: &[u8]| {
    let (jwks, token) = match input.iter().position(|&b| b == 0xff) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&input[..0], input),
    };
    let jwks = String::from_utf8_lossy(jwks);
    let token = String::from_utf8_lossy(token);
    let (keys, errors) = jwt::parse_jwks(&jwks);
    for e in &errors {
        assert!(!e.to_string().is_empty());
    }
    match jwt::parse(&token) {
        Ok(parsed) => {
            assert!(token.len() <= MAX_TOKEN_BYTES);
            let issuer = parsed.issuer.clone().unwrap_or_default();
            let audiences = ["a".to_string()];
            for audiences in [&[][..], &audiences[..]] {
                let expect = Expect {
                    issuer: &issuer,
                    audiences,
                    keys: &keys,
                };
                if let Ok(v) = jwt::verify(&parsed, expect, NOW) {
                    assert!(v.principal.starts_with(&format!("{issuer}/")));
                }
            }
        }
        Err(e) => assert!(!e.reply_text().is_empty()),
    }
    let w = wp::Waypoint {
        namespace: "default".into(),
        name: "waypoint".into(),
        authentications: vec![wp::RequestAuthentication {
            namespace: "default".into(),
            name: "idp".into(),
            rules: vec![
                wp::JwtRule {
                    issuer: "https://idp".into(),
                    jwks: jwks.to_string(),
                    output_payload_to_header: "x-payload".into(),
                    output_claim_to_headers: vec![wp::ClaimToHeader {
                        header: "x-claim".into(),
                        claim: "a.b".into(),
                    }],
                    ..Default::default()
                },
                wp::JwtRule {
                    issuer: "https://other".into(),
                    jwks: jwks.to_string(),
                    from_cookies: vec!["jwt".into()],
                    from_params: vec!["t".into()],
                    ..Default::default()
                },
            ],
        }],
        ..Default::default()
    };
    let (snap, _) = Snapshot::compile(&w);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("jwt={token}")) {
        headers.insert(http::header::COOKIE, v);
    }
    let query = format!("t={token}");
    if let Ok(plan) = waypoint::authn::decide(
        snap.gateway_authentications(),
        None,
        &headers,
        Some(&query),
        NOW,
    ) {
        waypoint::authn::apply_headers(&plan, &mut headers);
        let mut uri = http::Uri::from_static("/p?t=x");
        waypoint::authn::apply_uri(&plan, &mut uri);
    }
});
