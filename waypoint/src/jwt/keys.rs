//! JSON Web Key Sets (RFC 7517, key types of RFC 7518 and RFC 8037) parsed
//! once per config into keys ready to verify with: RSA from `n`/`e`, EC
//! P-256/P-384 from `x`/`y` as an uncompressed point, Ed25519 from `x`.
//!
//! A key that cannot be used is left out and reported; the others stay.
//! Leaving a key out can only refuse more tokens, never accept one.

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use serde::Deserialize;

use super::Alg;
use super::b64;

/// Why a key set or one of its keys was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key set is not valid JSON with a \"keys\" array: {0}")]
    Json(String),
    #[error("key #{index}: {reason}")]
    Key { index: usize, reason: KeyReason },
}

/// What was wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyReason {
    #[error("unsupported kty {0:?}")]
    Kty(String),
    #[error("unsupported crv {0:?}")]
    Curve(String),
    #[error("alg {alg:?} does not fit kty {kty}")]
    Alg { alg: String, kty: &'static str },
    #[error("member {0:?} is missing or not a string")]
    Missing(&'static str),
    #[error("member {member:?} is not base64url: {error}")]
    Encoding {
        member: &'static str,
        error: b64::B64Error,
    },
    #[error("member {member:?} has {got} bytes, the curve needs {want}")]
    Length {
        member: &'static str,
        got: usize,
        want: usize,
    },
    #[error("RSA modulus of {0} bits is below 2048")]
    RsaSize(usize),
    #[error("the key material was rejected: {0}")]
    Rejected(String),
}

/// One usable key: the algorithms it verifies, each with its parsed key.
pub struct Key {
    pub kid: Option<String>,
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Alg> = self.verifiers.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &algs)
            .finish()
    }
}

impl Key {
    /// Whether this key can verify `alg` (its type fits, and its own `alg`,
    /// if it names one, is that one).
    pub fn fits(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` over `message` with `alg`; false when the key
    /// does not fit `alg` or the signature is wrong.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }
}

/// The usable keys of one set.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Parses a JWKS; returns the usable keys and what was wrong with the
/// rest. Invalid JSON gives no keys at all.
pub fn parse_jwks(text: &str) -> (KeySet, Vec<KeyError>) {
    let raw: RawSet = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return (KeySet::default(), vec![KeyError::Json(e.to_string())]),
    };
    let mut set = KeySet::default();
    let mut errors = Vec::new();
    for (index, k) in raw.keys.iter().enumerate() {
        // Encryption keys are not for signatures; a set may carry both.
        if k.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue;
        }
        match parse_key(k) {
            Ok(key) => set.keys.push(key),
            Err(reason) => errors.push(KeyError::Key { index, reason }),
        }
    }
    (set, errors)
}

type Members = serde_json::Map<String, serde_json::Value>;

fn text<'a>(k: &'a Members, member: &'static str) -> Result<&'a str, KeyReason> {
    k.get(member)
        .and_then(|v| v.as_str())
        .ok_or(KeyReason::Missing(member))
}

fn bytes(k: &Members, member: &'static str) -> Result<Vec<u8>, KeyReason> {
    b64::decode(text(k, member)?).map_err(|error| KeyReason::Encoding { member, error })
}

fn sized(k: &Members, member: &'static str, want: usize) -> Result<Vec<u8>, KeyReason> {
    let b = bytes(k, member)?;
    if b.len() != want {
        return Err(KeyReason::Length {
            member,
            got: b.len(),
            want,
        });
    }
    Ok(b)
}

fn parse_key(k: &Members) -> Result<Key, KeyReason> {
    let kid = k.get("kid").and_then(|v| v.as_str()).map(str::to_string);
    let kty = text(k, "kty")?;
    let declared = k.get("alg").and_then(|v| v.as_str());
    let (kty_name, candidates): (&'static str, &[Alg]) = match kty {
        "RSA" => ("RSA", &Alg::RSA),
        "EC" => match text(k, "crv")? {
            "P-256" => ("EC", &[Alg::Es256]),
            "P-384" => ("EC", &[Alg::Es384]),
            other => return Err(KeyReason::Curve(other.to_string())),
        },
        "OKP" => match text(k, "crv")? {
            "Ed25519" => ("OKP", &[Alg::EdDsa]),
            other => return Err(KeyReason::Curve(other.to_string())),
        },
        other => return Err(KeyReason::Kty(other.to_string())),
    };
    let algs: Vec<Alg> = match declared {
        None => candidates.to_vec(),
        Some(name) => match Alg::parse(name).filter(|a| candidates.contains(a)) {
            Some(a) => vec![a],
            None => {
                return Err(KeyReason::Alg {
                    alg: name.to_string(),
                    kty: kty_name,
                });
            }
        },
    };
    let rejected = |e: aws_lc_rs::error::KeyRejected| KeyReason::Rejected(e.to_string());
    let verifiers = match kty_name {
        "RSA" => {
            let n = bytes(k, "n")?;
            let e = bytes(k, "e")?;
            // Leading zero octets are not part of the number (aws-lc-rs
            // refuses them); some issuers publish them anyway.
            let n = strip_zeros(&n);
            let e = strip_zeros(&e);
            if n.len() * 8 < 2048 {
                return Err(KeyReason::RsaSize(n.len() * 8));
            }
            let components = RsaPublicKeyComponents { n, e };
            algs.iter()
                .map(|&a| {
                    let params = a.rsa_params().ok_or(KeyReason::Alg {
                        alg: a.name().to_string(),
                        kty: "RSA",
                    })?;
                    components
                        .to_parsed_public_key(params)
                        .map(|p| (a, p))
                        .map_err(rejected)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        "EC" => {
            let (alg, size, verify) = match algs[0] {
                Alg::Es256 => (Alg::Es256, 32, &signature::ECDSA_P256_SHA256_FIXED),
                _ => (Alg::Es384, 48, &signature::ECDSA_P384_SHA384_FIXED),
            };
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend(sized(k, "x", size)?);
            point.extend(sized(k, "y", size)?);
            vec![(alg, ParsedPublicKey::new(verify, point).map_err(rejected)?)]
        }
        _ => {
            let x = sized(k, "x", 32)?;
            vec![(
                Alg::EdDsa,
                ParsedPublicKey::new(&signature::ED25519, x).map_err(rejected)?,
            )]
        }
    };
    Ok(Key { kid, verifiers })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}
