use http::{HeaderMap, HeaderValue, Uri};
use mesh_api::ambit::waypoint::v1 as pb;
use serde_json::json;

use super::*;
use crate::jwt::testing::*;

fn rule(issuer: &str) -> pb::JwtRule {
    pb::JwtRule {
        issuer: issuer.to_string(),
        jwks: jwks(&[ec_jwk("e1"), rsa_jwk("r1")]),
        ..Default::default()
    }
}

fn compiled(rules: Vec<pb::JwtRule>) -> (AuthnSet, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let set = compile(
        "service default/web",
        &[pb::RequestAuthentication {
            namespace: "default".into(),
            name: "jwt".into(),
            rules,
        }],
        &mut errors,
    );
    (set, errors)
}

fn set(rules: Vec<pb::JwtRule>) -> AuthnSet {
    let (set, errors) = compiled(rules);
    assert_eq!(errors, vec![]);
    set
}

fn token() -> String {
    sign(&json!({"alg": "ES256", "kid": "e1"}), &claims())
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    h
}

/// Decides and applies; returns the principal and the request after.
fn run(
    s: &AuthnSet,
    headers: HeaderMap,
    uri: &str,
) -> Result<(Option<String>, HeaderMap, Uri), JwtError> {
    let mut headers = headers;
    let mut uri: Uri = uri.parse().unwrap();
    let plan = decide(s, None, &headers, uri.query(), NOW)?;
    apply_headers(&plan, &mut headers);
    apply_uri(&plan, &mut uri);
    Ok((plan.verified.map(|v| v.principal), headers, uri))
}

#[test]
fn no_token_passes_without_principal() {
    let s = set(vec![rule(ISSUER)]);
    let (p, _, _) = run(&s, HeaderMap::new(), "/a?b=1").unwrap();
    assert_eq!(p, None);
    // Another scheme in Authorization is not a bearer token.
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("Basic YTpi"));
    let (p, h, _) = run(&s, h, "/").unwrap();
    assert_eq!(p, None);
    assert!(h.contains_key("authorization"), "not ours to remove");
}

#[test]
fn bearer_token_verifies_and_is_removed() {
    let s = set(vec![rule(ISSUER)]);
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        format!("bEaReR  {}", token()).parse().unwrap(),
    );
    let (p, h, _) = run(&s, h, "/").unwrap();
    assert_eq!(p.as_deref(), Some("https://issuer.example.com/alice"));
    assert!(!h.contains_key("authorization"));
}

#[test]
fn access_token_parameter_is_read_and_removed_from_the_uri() {
    let s = set(vec![rule(ISSUER)]);
    let uri = format!("/x?a=1&access_token={}&b=2", token());
    let (p, _, uri) = run(&s, HeaderMap::new(), &uri).unwrap();
    assert!(p.is_some());
    assert_eq!(uri.to_string(), "/x?a=1&b=2");
    let uri = format!("/x?access_token={}", token());
    let (_, _, uri) = run(&s, HeaderMap::new(), &uri).unwrap();
    assert_eq!(uri.to_string(), "/x");
}

#[test]
fn configured_header_prefix_param_and_cookie() {
    let mut r = rule(ISSUER);
    r.from_headers = vec![pb::JwtHeader {
        name: "x-jwt".into(),
        prefix: "Token ".into(),
    }];
    r.from_params = vec!["jwt".into()];
    r.from_cookies = vec!["session".into()];
    let s = set(vec![r]);
    // The default locations are no longer read: a bad token there is ignored.
    let (p, h, _) = run(&s, bearer("garbage"), "/?access_token=garbage").unwrap();
    assert_eq!(p, None);
    assert!(h.contains_key("authorization"));
    // Without the prefix the header holds no token.
    let mut h = HeaderMap::new();
    h.insert("x-jwt", token().parse().unwrap());
    assert_eq!(run(&s, h, "/").unwrap().0, None);
    let mut h = HeaderMap::new();
    h.insert("x-jwt", format!("Token {}", token()).parse().unwrap());
    let (p, h, _) = run(&s, h, "/").unwrap();
    assert!(p.is_some());
    assert!(!h.contains_key("x-jwt"));
    let (p, _, uri) = run(&s, HeaderMap::new(), &format!("/?jwt={}", token())).unwrap();
    assert!(p.is_some());
    assert_eq!(uri.to_string(), "/");
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        format!("a=b; session={}; c=d", token()).parse().unwrap(),
    );
    let (p, h, _) = run(&s, h, "/").unwrap();
    assert!(p.is_some());
    assert!(h.contains_key("cookie"), "other cookies stay");
}

#[test]
fn forward_original_token_keeps_it() {
    let mut r = rule(ISSUER);
    r.forward_original_token = true;
    let s = set(vec![r]);
    let (p, h, _) = run(&s, bearer(&token()), "/").unwrap();
    assert!(p.is_some());
    assert!(h.contains_key("authorization"));
}

#[test]
fn output_headers_are_set_and_cannot_be_forged() {
    let mut r = rule(ISSUER);
    r.output_payload_to_header = "x-jwt-payload".into();
    r.output_claim_to_headers = vec![
        pb::ClaimToHeader {
            header: "x-sub".into(),
            claim: "sub".into(),
        },
        pb::ClaimToHeader {
            header: "x-team".into(),
            claim: "org.team".into(),
        },
        pb::ClaimToHeader {
            header: "x-groups".into(),
            claim: "groups".into(),
        },
        pb::ClaimToHeader {
            header: "x-missing".into(),
            claim: "nope".into(),
        },
    ];
    let s = set(vec![r]);
    let t = token();
    let mut h = bearer(&t);
    h.insert("x-sub", HeaderValue::from_static("forged"));
    h.insert("x-missing", HeaderValue::from_static("forged"));
    let (_, h, _) = run(&s, h, "/").unwrap();
    assert_eq!(h["x-sub"], "alice");
    assert_eq!(h["x-team"], "core");
    assert_eq!(h["x-groups"], r#"["dev","ops"]"#);
    assert_eq!(h["x-jwt-payload"], t.split('.').nth(1).unwrap());
    assert!(!h.contains_key("x-missing"));
    // Without a token the forged headers go too.
    let mut h = HeaderMap::new();
    h.insert("x-sub", HeaderValue::from_static("forged"));
    let (p, h, _) = run(&s, h, "/").unwrap();
    assert_eq!(p, None);
    assert!(!h.contains_key("x-sub"));
}

#[test]
fn bad_tokens_are_refused() {
    let s = set(vec![rule(ISSUER)]);
    assert!(matches!(
        run(&s, bearer("not.a.token"), "/"),
        Err(JwtError::Malformed(_))
    ));
    let mut c = claims();
    c["iss"] = json!("https://other.example.com");
    let other = sign(&json!({"alg": "ES256", "kid": "e1"}), &c);
    assert!(matches!(
        run(&s, bearer(&other), "/"),
        Err(JwtError::IssuerNotConfigured(_))
    ));
    c = claims();
    c["exp"] = json!(NOW - 3600);
    let expired = sign(&json!({"alg": "ES256", "kid": "e1"}), &c);
    assert_eq!(
        run(&s, bearer(&expired), "/").unwrap_err(),
        JwtError::Expired
    );
    // A good token does not carry a bad one past.
    let uri = format!("/?access_token={expired}");
    assert_eq!(
        run(&s, bearer(&token()), &uri).unwrap_err(),
        JwtError::Expired
    );
    let mut h = HeaderMap::new();
    for _ in 0..=MAX_TOKENS {
        h.append(
            "authorization",
            format!("Bearer {}", token()).parse().unwrap(),
        );
    }
    assert!(run(&s, h, "/").is_err());
}

#[test]
fn a_rule_validates_only_tokens_from_its_own_locations() {
    let mut r = rule(ISSUER);
    r.from_headers = vec![pb::JwtHeader {
        name: "x-jwt".into(),
        prefix: String::new(),
    }];
    let s = set(vec![r, rule("https://other.example.com")]);
    // The issuer's token in Authorization, read there only for the other rule.
    assert!(matches!(
        run(&s, bearer(&token()), "/"),
        Err(JwtError::IssuerNotConfigured(_))
    ));
}

#[test]
fn gateway_and_service_rules_add_up() {
    let gateway = set(vec![rule("https://other.example.com")]);
    let service = set(vec![rule(ISSUER)]);
    let h = bearer(&token());
    assert!(decide(&gateway, None, &h, None, NOW).is_err());
    let plan = decide(&gateway, Some(&service), &h, None, NOW).unwrap();
    assert!(plan.verified.is_some());
}

#[test]
fn a_key_set_that_cannot_be_read_refuses_its_issuer() {
    let mut r = rule(ISSUER);
    r.jwks = "{not json".into();
    r.jwks_uri = "https://issuer.example.com/jwks".into();
    let (s, errors) = compiled(vec![r]);
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        text.starts_with(
            "request authentication default/jwt (attached to service default/web), rule #0 \
             (issuer \"https://issuer.example.com\"): jwks from https://issuer.example.com/jwks:"
        ),
        "{text}"
    );
    assert_eq!(run(&s, bearer(&token()), "/").unwrap_err(), JwtError::NoKey);
    assert_eq!(run(&s, HeaderMap::new(), "/").unwrap().0, None);
}

#[test]
fn invalid_rule_parts_are_reported() {
    let mut r = rule("");
    r.from_headers = vec![pb::JwtHeader {
        name: "bad header".into(),
        prefix: String::new(),
    }];
    let mut ok = rule(ISSUER);
    ok.from_headers = vec![pb::JwtHeader {
        name: "bad header".into(),
        prefix: String::new(),
    }];
    ok.from_params = vec![String::new()];
    ok.output_payload_to_header = "bad header".into();
    ok.output_claim_to_headers = vec![pb::ClaimToHeader {
        header: "x-a".into(),
        claim: String::new(),
    }];
    let (s, errors) = compiled(vec![r, ok]);
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 5, "{texts:#?}");
    assert!(texts[0].ends_with("no issuer"), "{texts:#?}");
    assert_eq!(s.rules.len(), 1);
}

#[test]
fn query_parameters_removed_by_name_only() {
    assert_eq!(
        without_params("/p?a=1&t=x&ta=2&t", &["t".into()]),
        "/p?a=1&ta=2"
    );
    assert_eq!(without_params("/p", &["t".into()]), "/p");
    assert_eq!(decode_component("a%2Eb%zz%4"), "a.b%zz%4");
}
