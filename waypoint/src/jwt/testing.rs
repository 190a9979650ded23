//! Keys generated with aws-lc-rs and tokens signed with them, for the unit
//! tests of token verification and of the authentication phase.

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::b64;

pub struct TestKeys {
    pub rsa: rsa::KeyPair,
    pub ec: EcdsaKeyPair,
    pub ec384: EcdsaKeyPair,
    pub ed: Ed25519KeyPair,
}

/// One set per test binary: RSA generation is the slow part.
pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: rsa::KeyPair::generate(KeySize::Rsa2048).unwrap(),
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        ec384: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        ed: Ed25519KeyPair::generate().unwrap(),
    })
}

/// Reads one DER INTEGER from `der` at `*at` (the RSAPublicKey of PKCS #1
/// is SEQUENCE { n INTEGER, e INTEGER }).
fn der_integer(der: &[u8], at: &mut usize) -> Vec<u8> {
    assert_eq!(der[*at], 0x02, "INTEGER");
    *at += 1;
    let len = der_len(der, at);
    let v = der[*at..*at + len].to_vec();
    *at += len;
    v
}

fn der_len(der: &[u8], at: &mut usize) -> usize {
    let first = der[*at] as usize;
    *at += 1;
    if first < 0x80 {
        return first;
    }
    let n = first & 0x7f;
    let mut len = 0;
    for _ in 0..n {
        len = (len << 8) | der[*at] as usize;
        *at += 1;
    }
    len
}

/// The RSA key as a JWK.
pub fn rsa_jwk(kid: &str) -> Value {
    let der = keys().rsa.public_key().as_ref().to_vec();
    let mut at = 1;
    der_len(&der, &mut at);
    let n = der_integer(&der, &mut at);
    let e = der_integer(&der, &mut at);
    json!({"kty": "RSA", "kid": kid, "n": b64::encode(&n), "e": b64::encode(&e)})
}

fn ec_jwk_of(pair: &EcdsaKeyPair, crv: &str, kid: &str) -> Value {
    let point = pair.public_key().as_ref();
    let size = (point.len() - 1) / 2;
    json!({
        "kty": "EC", "crv": crv, "kid": kid,
        "x": b64::encode(&point[1..1 + size]),
        "y": b64::encode(&point[1 + size..]),
    })
}

pub fn ec_jwk(kid: &str) -> Value {
    ec_jwk_of(&keys().ec, "P-256", kid)
}

pub fn ec384_jwk(kid: &str) -> Value {
    ec_jwk_of(&keys().ec384, "P-384", kid)
}

pub fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
           "x": b64::encode(keys().ed.public_key().as_ref())})
}

pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// Signs `header`.`claims` with the key `alg` calls for.
pub fn sign(header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("none");
    let signed = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let msg = signed.as_bytes();
    let k = keys();
    let rng = SystemRandom::new();
    let rsa_with = |enc: &'static dyn signature::RsaEncoding| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa.sign(enc, &rng, msg, &mut sig).unwrap();
        sig
    };
    let sig = match alg {
        "RS256" => rsa_with(&signature::RSA_PKCS1_SHA256),
        "RS384" => rsa_with(&signature::RSA_PKCS1_SHA384),
        "RS512" => rsa_with(&signature::RSA_PKCS1_SHA512),
        "PS256" => rsa_with(&signature::RSA_PSS_SHA256),
        "PS384" => rsa_with(&signature::RSA_PSS_SHA384),
        "PS512" => rsa_with(&signature::RSA_PSS_SHA512),
        "ES256" => k.ec.sign(&rng, msg).unwrap().as_ref().to_vec(),
        "ES384" => k.ec384.sign(&rng, msg).unwrap().as_ref().to_vec(),
        "EdDSA" => k.ed.sign(msg).as_ref().to_vec(),
        _ => Vec::new(),
    };
    format!("{signed}.{}", b64::encode(&sig))
}

pub const NOW: i64 = 1_700_000_000;
pub const ISSUER: &str = "https://issuer.example.com";

/// Ordinary claims: issuer, subject, audience, valid around `NOW`.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "alice", "aud": ["web", "api"], "azp": "frontend",
        "iat": NOW - 10, "exp": NOW + 3600,
        "groups": ["dev", "ops"], "org": {"team": "core", "level": 3},
    })
}
