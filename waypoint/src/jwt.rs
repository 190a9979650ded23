//! JSON Web Tokens (RFC 7519) in the JWS compact form (RFC 7515): split,
//! decode and verify one token against one issuer's keys, as plain
//! functions. Which token a request carries and what happens to it is
//! [`crate::authn`]'s business.
//!
//! Supported: RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA
//! (Ed25519), verified with aws-lc-rs. `none`, the HMAC algorithms (a
//! waypoint holds no shared secrets) and anything else are refused, as are
//! `crit` headers (RFC 7515 4.1.11: extensions we do not understand).

use aws_lc_rs::signature::{self, RsaParameters};
use serde_json::{Map, Value};

pub mod b64;
pub mod keys;
#[cfg(test)]
pub(crate) mod testing;

pub use keys::{KeyError, KeySet, parse_jwks};

/// Tokens longer than this are refused before any decoding: real tokens
/// are a few hundred bytes to a few KiB, and a bound keeps the work per
/// request small whatever a client sends.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Leeway for `exp` and `nbf`, Envoy's default: issuers' and our clocks
/// disagree a little.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// A signature algorithm (RFC 7518 section 3, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    /// Every algorithm an RSA key can verify.
    pub const RSA: [Alg; 6] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
    ];

    /// The algorithm named `alg`, if supported.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The aws-lc-rs parameters of an RSA algorithm. Keys below 2048 bits
    /// are refused, as NIST and RFC 7518 3.3 ask.
    pub fn rsa_params(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// Why a token was refused. Each maps to the reply text Envoy uses, so
/// clients and tests that look for it find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported alg {0:?}")]
    UnsupportedAlg(String),
    #[error("header has crit extensions")]
    Critical,
    #[error("no rule names issuer {0:?}")]
    IssuerNotConfigured(String),
    #[error("no key fits the token's kid and alg")]
    NoKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not yet valid (nbf)")]
    NotYetValid,
    #[error("audience not allowed")]
    Audience,
}

impl JwtError {
    /// The body of the 401 reply.
    pub fn reply_text(&self) -> &'static str {
        match self {
            JwtError::Expired => "Jwt is expired",
            JwtError::NotYetValid => "Jwt not yet valid",
            JwtError::IssuerNotConfigured(_) => "Jwt issuer is not configured",
            JwtError::Audience => "Audiences in Jwt are not allowed",
            _ => "Jwt verification fails",
        }
    }
}

/// A token split and decoded, not yet trusted.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`: what the signature covers.
    signed: &'t str,
    /// The payload segment as received.
    pub payload_b64: &'t str,
    signature: Vec<u8>,
    pub claims: Map<String, Value>,
    /// `iss`, when it is a string.
    pub issuer: Option<String>,
}

/// Splits and decodes `token` (size, three segments, base64url, JSON
/// objects, a supported `alg`). Nothing is trusted yet.
pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three segments"));
    };
    let header = object(h, "header")?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some(name) => Alg::parse(name).ok_or_else(|| JwtError::UnsupportedAlg(name.to_string()))?,
        None => return Err(JwtError::Malformed("header has no alg")),
    };
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string")),
    };
    let claims = object(p, "payload")?;
    let signature =
        b64::decode(s).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Parsed {
        alg,
        kid,
        signed: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
        claims,
        issuer,
    })
}

fn object(segment: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64::decode(segment).map_err(|_| {
        JwtError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(if what == "header" {
            "header is not a JSON object"
        } else {
            "payload is not a JSON object"
        })),
    }
}

/// What one rule asks of a token.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// Empty: any audience.
    pub audiences: &'a [String],
    pub keys: &'a KeySet,
}

/// A verified token: what authorization and the access log see.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `<iss>/<sub>`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`, the party the token was issued to.
    pub presenter: Option<String>,
    pub claims: Map<String, Value>,
}

impl Verified {
    /// The claim at `path` (nested objects by name).
    pub fn claim(&self, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first.as_ref())?;
        for name in rest {
            v = v.as_object()?.get(name.as_ref())?;
        }
        Some(v)
    }

    /// The claim's string values, as policies compare them: a string, or
    /// the strings of an array; nothing for other types.
    pub fn claim_strings(&self, path: &[impl AsRef<str>]) -> Vec<&str> {
        match self.claim(path) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Verifies `token` (already parsed) for one rule at unix time `now`:
/// issuer, signature with a fitting key, `exp`/`nbf` within the skew, and
/// audience.
pub fn verify(token: &Parsed<'_>, expect: Expect<'_>, now: i64) -> Result<Verified, JwtError> {
    let issuer = token.issuer.as_deref().unwrap_or_default();
    if issuer != expect.issuer {
        return Err(JwtError::IssuerNotConfigured(issuer.to_string()));
    }
    // A key that names a kid must name the token's; keys without one are
    // tried too (as Envoy does), but only those of a fitting type and alg.
    let mut fitting = expect
        .keys
        .keys
        .iter()
        .filter(|k| k.fits(token.alg))
        .filter(|k| match (&token.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .peekable();
    if fitting.peek().is_none() {
        return Err(JwtError::NoKey);
    }
    if !fitting.any(|k| k.verify(token.alg, token.signed.as_bytes(), &token.signature)) {
        return Err(JwtError::BadSignature);
    }
    let claims = &token.claims;
    if let Some(exp) = time(claims, "exp")?
        && now > exp.saturating_add(CLOCK_SKEW_SECS)
    {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = time(claims, "nbf")?
        && now.saturating_add(CLOCK_SKEW_SECS) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    let audiences: Vec<String> = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or(JwtError::Malformed("aud is not a string or strings"))?,
        Some(_) => return Err(JwtError::Malformed("aud is not a string or strings")),
    };
    if !expect.audiences.is_empty() && !audiences.iter().any(|a| expect.audiences.contains(a)) {
        return Err(JwtError::Audience);
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(Verified {
        principal: format!("{issuer}/{subject}"),
        audiences,
        presenter: claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_string),
        claims: claims.clone(),
    })
}

/// A NumericDate claim (RFC 7519 2): seconds, fractions allowed.
fn time(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::Malformed("exp or nbf is not a number")),
    }
}

#[cfg(test)]
mod tests;
