use serde_json::{Value, json};

use super::testing::*;
use super::*;

fn set(keys: &[Value]) -> KeySet {
    let (set, errors) = parse_jwks(&jwks(keys));
    assert_eq!(errors, vec![]);
    set
}

fn all_keys() -> KeySet {
    set(&[rsa_jwk("r1"), ec_jwk("e1"), ec384_jwk("e2"), ed_jwk("d1")])
}

fn check(token: &str, keys: &KeySet, audiences: &[String]) -> Result<Verified, JwtError> {
    let parsed = parse(token)?;
    verify(
        &parsed,
        Expect {
            issuer: ISSUER,
            audiences,
            keys,
        },
        NOW,
    )
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

#[test]
fn every_supported_algorithm_verifies() {
    let keys = all_keys();
    for (alg, kid) in [
        ("RS256", "r1"),
        ("RS384", "r1"),
        ("RS512", "r1"),
        ("PS256", "r1"),
        ("PS384", "r1"),
        ("PS512", "r1"),
        ("ES256", "e1"),
        ("ES384", "e2"),
        ("EdDSA", "d1"),
    ] {
        let token = sign(&header(alg, kid), &claims());
        let v = check(&token, &keys, &[]).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(v.principal, format!("{ISSUER}/alice"));
        assert_eq!(v.audiences, ["web", "api"]);
        assert_eq!(v.presenter.as_deref(), Some("frontend"));
    }
}

#[test]
fn a_token_without_kid_tries_the_keys_of_its_type() {
    let token = sign(&json!({"alg": "ES256"}), &claims());
    assert!(check(&token, &all_keys(), &[]).is_ok());
}

#[test]
fn time_claims_with_skew() {
    let keys = all_keys();
    let with = |k: &str, v: i64| {
        let mut c = claims();
        c[k] = json!(v);
        sign(&header("ES256", "e1"), &c)
    };
    assert_eq!(
        check(&with("exp", NOW - 61), &keys, &[]),
        Err(JwtError::Expired)
    );
    // Within the skew: still good.
    assert!(check(&with("exp", NOW - 30), &keys, &[]).is_ok());
    assert_eq!(
        check(&with("nbf", NOW + 61), &keys, &[]),
        Err(JwtError::NotYetValid)
    );
    assert!(check(&with("nbf", NOW + 30), &keys, &[]).is_ok());
    // Fractions are allowed; a text date is not.
    let mut c = claims();
    c["exp"] = json!(NOW as f64 + 0.5);
    assert!(check(&sign(&header("ES256", "e1"), &c), &keys, &[]).is_ok());
    c["exp"] = json!("tomorrow");
    assert!(matches!(
        check(&sign(&header("ES256", "e1"), &c), &keys, &[]),
        Err(JwtError::Malformed(_))
    ));
    // No exp: no expiry, as Envoy does by default.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(check(&sign(&header("ES256", "e1"), &c), &keys, &[]).is_ok());
}

#[test]
fn audiences_string_or_array() {
    let keys = all_keys();
    let token = sign(&header("EdDSA", "d1"), &claims());
    assert!(check(&token, &keys, &["api".into(), "other".into()]).is_ok());
    assert_eq!(
        check(&token, &keys, &["other".into()]),
        Err(JwtError::Audience)
    );
    let mut c = claims();
    c["aud"] = json!("web");
    let token = sign(&header("EdDSA", "d1"), &c);
    assert!(check(&token, &keys, &["web".into()]).is_ok());
    c["aud"] = json!(7);
    let token = sign(&header("EdDSA", "d1"), &c);
    assert!(matches!(
        check(&token, &keys, &[]),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn wrong_issuer_is_not_configured() {
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    let token = sign(&header("ES256", "e1"), &c);
    let err = check(&token, &all_keys(), &[]).unwrap_err();
    assert_eq!(
        err,
        JwtError::IssuerNotConfigured("https://evil.example.com".into())
    );
    assert_eq!(err.reply_text(), "Jwt issuer is not configured");
}

#[test]
fn tampered_payload_fails_the_signature() {
    let token = sign(&header("RS256", "r1"), &claims());
    let mut c = claims();
    c["sub"] = json!("mallory");
    let forged = b64::encode(c.to_string().as_bytes());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(
        check(&tampered, &all_keys(), &[]),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        JwtError::BadSignature.reply_text(),
        "Jwt verification fails"
    );
}

#[test]
fn wrong_kid_finds_no_key() {
    let token = sign(&header("ES256", "nope"), &claims());
    assert_eq!(check(&token, &all_keys(), &[]), Err(JwtError::NoKey));
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let unsigned = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none"}"#),
        b64::encode(claims().to_string().as_bytes())
    );
    assert_eq!(
        check(&unsigned, &all_keys(), &[]),
        Err(JwtError::UnsupportedAlg("none".into()))
    );
    let hs = sign(&header("HS256", "r1"), &claims());
    assert_eq!(
        check(&hs, &all_keys(), &[]),
        Err(JwtError::UnsupportedAlg("HS256".into()))
    );
}

#[test]
fn alg_and_key_type_must_fit() {
    // An RS256 header whose kid names the EC key: that key cannot serve.
    let token = sign(&header("RS256", "e1"), &claims());
    assert_eq!(check(&token, &all_keys(), &[]), Err(JwtError::NoKey));
    // An ES256 signature presented as ES384 with the P-256 key's kid.
    let token = sign(&header("ES256", "e1"), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let relabelled = format!(
        "{}.{}.{}",
        b64::encode(header("ES384", "e1").to_string().as_bytes()),
        parts[1],
        parts[2]
    );
    assert_eq!(check(&relabelled, &all_keys(), &[]), Err(JwtError::NoKey));
    // A key that declares its alg serves only that one.
    let mut k = rsa_jwk("r1");
    k["alg"] = json!("PS256");
    let only_ps = set(&[k]);
    let rs = sign(&header("RS256", "r1"), &claims());
    assert_eq!(check(&rs, &only_ps, &[]), Err(JwtError::NoKey));
    let ps = sign(&header("PS256", "r1"), &claims());
    assert!(check(&ps, &only_ps, &[]).is_ok());
}

#[test]
fn malformed_tokens() {
    let keys = all_keys();
    let good = sign(&header("ES256", "e1"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "abc".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.x.y"),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}+", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64::encode(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64::encode(b"[1,2]"), parts[2]),
        format!(
            "{}.{}.{}",
            b64::encode(br#"{"kid":"e1"}"#),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64::encode(br#"{"alg":"ES256","kid":5}"#),
            parts[1],
            parts[2]
        ),
        "\u{0}.\u{ff}.".to_string(),
    ];
    for (i, t) in cases.iter().enumerate() {
        let e = check(t, &keys, &[]).unwrap_err();
        assert!(matches!(e, JwtError::Malformed(_)), "case {i}: {e:?}");
        assert_eq!(e.reply_text(), "Jwt verification fails");
    }
    let crit = sign(&json!({"alg": "ES256", "crit": ["exp"]}), &claims());
    assert_eq!(check(&crit, &keys, &[]), Err(JwtError::Critical));
}

#[test]
fn huge_tokens_are_refused_before_decoding() {
    let mut c = claims();
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let token = sign(&header("ES256", "e1"), &c);
    assert_eq!(check(&token, &all_keys(), &[]), Err(JwtError::TooLarge));
    assert_eq!(
        parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
        JwtError::TooLarge
    );
}

#[test]
fn an_empty_key_set_refuses_every_token() {
    let empty = set(&[]);
    let token = sign(&header("ES256", "e1"), &claims());
    assert_eq!(check(&token, &empty, &[]), Err(JwtError::NoKey));
}

#[test]
fn claims_by_path() {
    let token = sign(&header("ES256", "e1"), &claims());
    let v = check(&token, &all_keys(), &[]).unwrap();
    assert_eq!(v.claim_strings(&["groups"]), ["dev", "ops"]);
    assert_eq!(v.claim_strings(&["org", "team"]), ["core"]);
    assert!(v.claim_strings(&["org", "level"]).is_empty());
    assert_eq!(v.claim(&["org", "level"]), Some(&json!(3)));
    assert!(v.claim(&["org", "team", "x"]).is_none());
    assert!(v.claim(&[] as &[&str]).is_none());
}

#[test]
fn key_sets_report_bad_keys_and_keep_good_ones() {
    let mut short = rsa_jwk("short");
    short["n"] = json!(b64::encode(&[0xc5; 128]));
    let mut bad_point = ec_jwk("bad");
    bad_point["y"] = json!(b64::encode(&[1; 32]));
    let (set, errors) = parse_jwks(&jwks(&[
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"kty": "EC", "crv": "P-521", "x": "", "y": ""}),
        json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        json!({"kty": "RSA", "n": "a=", "e": "AQAB"}),
        json!({"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "OKP", "crv": "Ed25519"}),
        short,
        bad_point,
        json!({"kty": "RSA", "use": "enc", "n": "", "e": ""}),
        ec_jwk("good"),
    ]));
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.keys[0].kid.as_deref(), Some("good"));
    let reasons: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 8, "{reasons:#?}");
    assert!(
        reasons[0].contains("unsupported kty \"oct\""),
        "{reasons:#?}"
    );
    assert!(reasons[6].contains("below 2048"), "{reasons:#?}");
    assert!(reasons[7].contains("rejected"), "{reasons:#?}");
    for text in ["not json", "{}", r#"{"keys": 5}"#] {
        let (set, errors) = parse_jwks(text);
        assert!(set.keys.is_empty());
        assert!(matches!(errors[..], [KeyError::Json(_)]), "{text}");
    }
}
