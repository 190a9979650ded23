//! RequestAuthentication end to end over real mTLS: a service whose JWT
//! rule (inline key set) feeds an ALLOW policy on request principals.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh_api::ambit::waypoint::v1 as wp;
use serde_json::json;
use waypoint::jwt::b64;

const ISSUER: &str = "https://idp.example.com";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(key: &Ed25519KeyPair, claims: serde_json::Value) -> String {
    let head = b64::encode(json!({"alg": "EdDSA", "kid": "k1"}).to_string().as_bytes());
    let body = b64::encode(claims.to_string().as_bytes());
    let signed = format!("{head}.{body}");
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", b64::encode(sig.as_ref()))
}

fn get_with(path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = get(path);
    if let Some(t) = token {
        r.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_rule_and_a_request_principal_policy() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let key = Ed25519KeyPair::generate()?;
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "x": b64::encode(key.public_key().as_ref()),
    }]});
    mesh.push_waypoint(wp::Waypoint {
        namespace: NS.into(),
        name: GATEWAY.into(),
        services: vec![wp::Service {
            namespace: NS.into(),
            name: "echo".into(),
            hostname: "echo.default.svc.cluster.local".into(),
            addresses: vec![mesh.ip(100).to_string()],
            authentications: vec![wp::RequestAuthentication {
                namespace: NS.into(),
                name: "idp".into(),
                rules: vec![wp::JwtRule {
                    issuer: ISSUER.into(),
                    audiences: vec!["echo".into()],
                    jwks: jwks.to_string(),
                    output_claim_to_headers: vec![wp::ClaimToHeader {
                        header: "x-jwt-sub".into(),
                        claim: "sub".into(),
                    }],
                    ..Default::default()
                }],
            }],
            policies: vec![wp::Policy {
                namespace: NS.into(),
                name: "require-jwt".into(),
                action: wp::policy::Action::Allow as i32,
                rules: vec![wp::PolicyRule {
                    from: vec![wp::Source {
                        request_principals: vec![format!("{ISSUER}/*")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                dry_run: false,
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await?;

    let claims = |exp: i64| json!({"iss": ISSUER, "sub": "alice", "aud": "echo", "exp": exp});
    let good = token(&key, claims(now() + 600));
    let expired = token(&key, claims(now() - 600));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64::encode(
            json!({"iss": ISSUER, "sub": "mallory", "aud": "echo"})
                .to_string()
                .as_bytes()
        ),
        parts[2]
    );

    let mut send = mesh.h1(vip).await?;
    // No token: authentication passes, the policy wants a principal.
    send.ready().await?;
    let resp = send.send_request(get_with("/", None)).await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_text(resp).await?, "RBAC: access denied");
    // A valid token: the app sees the claim, not the token; a forged
    // claim header is replaced.
    let mut req = get_with("/", Some(&good));
    req.headers_mut()
        .insert("x-jwt-sub", "forged".parse().unwrap());
    send.ready().await?;
    let resp = send.send_request(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("echo-authorization"));
    assert_eq!(resp.headers()["echo-x-jwt-sub"], "alice");
    body_text(resp).await?;
    // Bad tokens: 401, on the same connection, which stays usable.
    for (t, why) in [
        (&tampered, "Jwt verification fails"),
        (&expired, "Jwt is expired"),
    ] {
        send.ready().await?;
        let resp = send.send_request(get_with("/", Some(t))).await?;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body_text(resp).await?, why);
    }
    send.ready().await?;
    let resp = send.send_request(get_with("/again", Some(&good))).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    body_text(resp).await?;
    // Another client connection is not affected.
    let mut other = mesh.h1(vip).await?;
    other.ready().await?;
    let resp = other
        .send_request(get_with(&format!("/q?access_token={good}&x=1"), None))
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await?, "echo /q 0");
    // A gRPC caller gets UNAUTHENTICATED.
    let mut h2 = mesh.h2(vip).await?;
    let req = Request::post("http://echo.default.svc.cluster.local/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("authorization", format!("Bearer {tampered}"))
        .body(Full::new(Bytes::new()))?;
    let resp = h2.send_request(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 3);

    let metrics = mesh.metrics().await?;
    assert!(
        metrics.contains("waypoint_rejected_total{reason=\"jwt_invalid\"} 3"),
        "{metrics}"
    );
    Ok(())
}
