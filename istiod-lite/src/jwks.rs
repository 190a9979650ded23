//! JSON Web Key Sets for RequestAuthentication rules. Waypoints receive key
//! sets inline only, so the control plane fetches `jwksUri` itself (Istio's
//! default) and, for a rule with neither `jwks` nor `jwksUri`, discovers the
//! set by OpenID Connect (`<issuer>/.well-known/openid-configuration`).
//!
//! This module holds the plain data translation reads (`JwksCache`: where a
//! key set comes from -> what was fetched, or why it could not be) and the
//! pure decisions around it: which sources the store needs (`wanted`), when
//! to fetch again (`next_fetch`), and what counts as a key set (`key_set`).
//! `resolver` is the task that fills the cache; `fetch` does the HTTP.

pub mod fetch;
pub mod resolver;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::Store;
use crate::model::istio::JwtRule;

/// Fetch timeout of a rule that sets none, as in Istio.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a waypoint gets for a key set the control plane does not have: no
/// keys, so every token of that issuer is refused.
pub const EMPTY_KEY_SET: &str = r#"{"keys":[]}"#;

/// Where a rule's key set comes from, when it is not inline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JwksSource {
    /// The rule's `jwksUri`.
    Uri(String),
    /// OpenID Connect discovery from the rule's `issuer`.
    Discovery(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Uri(uri) => f.write_str(uri),
            JwksSource::Discovery(issuer) => f.write_str(&discovery_uri(issuer)),
        }
    }
}

/// The outcome of the latest fetch of one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksEntry {
    /// A valid key set (compact JSON) and the URI it was read from.
    Fetched { uri: String, jwks: String },
    /// Never fetched successfully: why, in plain words.
    Failed(String),
}

/// Key sets the resolver has fetched; a source absent here has not been
/// tried yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwksCache {
    pub entries: BTreeMap<JwksSource, JwksEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an object with a \"keys\" array")]
    NoKeys,
    #[error("keys[{0}] is not an object")]
    KeyNotObject(usize),
}

/// `text` as a JSON Web Key Set (RFC 7517: an object whose `keys` is an
/// array of key objects), re-encoded compactly; the keys themselves are the
/// waypoint's to judge.
pub fn key_set(text: &str) -> Result<String, KeySetError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| KeySetError::NotJson(e.to_string()))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or(KeySetError::NoKeys)?;
    if let Some(i) = keys.iter().position(|k| !k.is_object()) {
        return Err(KeySetError::KeyNotObject(i));
    }
    Ok(value.to_string())
}

/// Where a rule's key set is fetched from; `None` when it is inline, and
/// for the rules translation leaves out (no issuer, or `jwks` and `jwksUri`
/// both), which need no keys.
pub fn source_of(rule: &JwtRule) -> Option<JwksSource> {
    if rule.issuer.is_empty() || !rule.jwks.is_empty() {
        None
    } else if !rule.jwks_uri.is_empty() {
        Some(JwksSource::Uri(rule.jwks_uri.clone()))
    } else {
        Some(JwksSource::Discovery(rule.issuer.clone()))
    }
}

/// The OpenID Connect discovery document of an issuer.
pub fn discovery_uri(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// A rule's fetch timeout, or why its `timeout` is not a duration.
pub fn timeout_of(rule: &JwtRule) -> Result<Duration, String> {
    match rule.timeout.as_deref() {
        None | Some("") => Ok(DEFAULT_TIMEOUT),
        Some(text) => match mesh_core::duration::parse(text) {
            Ok(d) if d.is_zero() => Err(format!("\"{text}\" is zero")),
            other => other,
        },
    }
}

/// Every source the store's RequestAuthentications need fetched, with the
/// longest timeout any rule gives it. Only objects that can reach a
/// waypoint count (targetRefs and no selector): nothing reads the others'
/// keys, so they are not fetched.
pub fn wanted(store: &Store) -> BTreeMap<JwksSource, Duration> {
    let mut out: BTreeMap<JwksSource, Duration> = BTreeMap::new();
    for ra in store.request_authentications.values() {
        let spec = &ra.spec;
        let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
        let selects = spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !targeted || selects {
            continue;
        }
        for rule in &spec.jwt_rules {
            let Some(source) = source_of(rule) else {
                continue;
            };
            let timeout = timeout_of(rule).unwrap_or(DEFAULT_TIMEOUT);
            let slot = out.entry(source).or_insert(timeout);
            *slot = (*slot).max(timeout);
        }
    }
    out
}

/// When to fetch a source again, after a fetch that succeeded or after
/// `failures` failures in a row: the refresh period, or an exponential
/// back-off from `retry_base` capped at `retry_max`.
pub fn next_fetch(
    failures: u32,
    refresh: Duration,
    retry_base: Duration,
    retry_max: Duration,
) -> Duration {
    if failures == 0 {
        return refresh;
    }
    let factor = 1u32 << (failures - 1).min(16);
    retry_base.saturating_mul(factor).min(retry_max)
}
