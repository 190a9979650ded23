//! RequestAuthentication as Istio has Envoy enforce it: where a request's
//! JWTs are read, which rule validates each, and what the request looks like
//! afterwards (token removed, claims copied into headers).
//!
//! Deciding is [`decide`], a plain function of the compiled rules, the
//! request's headers and query and the time; [`apply_headers`] and
//! [`apply_uri`] carry the plan out. A request without a token passes with
//! no principal (authorization decides whether that is enough); a request
//! whose token no rule validates is refused with 401.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use mesh_api::ambit::waypoint::v1 as pb;
use serde_json::Value;

use crate::config::ConfigError;
use crate::jwt::{self, Expect, JwtError, KeyError, KeySet, Verified};
use crate::route::decode_component;

/// More tokens than this in one request are refused: each costs a
/// signature check, and no client needs more.
pub const MAX_TOKENS: usize = 4;

/// Why a JWT rule (or a part of it) was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no issuer")]
    NoIssuer,
    #[error("{field}: {value:?} is not a valid header name")]
    HeaderName { field: &'static str, value: String },
    #[error("{field}: empty name")]
    EmptyName { field: &'static str },
    #[error("jwks{}: {reason}", uri.as_ref().map(|u| format!(" from {u}")).unwrap_or_default())]
    Keys {
        uri: Option<String>,
        reason: KeyError,
    },
}

/// Where a token is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, after a prefix (compared case-insensitively, as auth
    /// schemes are); a value without the prefix holds no token.
    Header {
        name: HeaderName,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

impl Location {
    /// Where a rule without locations looks: `Authorization: Bearer` and
    /// `access_token` (RFC 6750 2.1 and 2.3).
    fn defaults() -> Vec<Location> {
        vec![
            Location::Header {
                name: header::AUTHORIZATION,
                prefix: "Bearer ".to_string(),
            },
            Location::Param("access_token".to_string()),
        ]
    }
}

/// One compiled JWT rule.
#[derive(Debug)]
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: KeySet,
    locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
    /// Header and the claim's path.
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

/// The JWT rules of one attachment point (the Gateway, or one service).
#[derive(Debug, Default)]
pub struct AuthnSet {
    rules: Vec<Rule>,
}

impl AuthnSet {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Compiles the RequestAuthentications attached to `target`. A rule
/// without issuer is dropped; a bad location or output header is dropped
/// on its own; a key set that cannot be read leaves the rule with no keys,
/// so its issuer's tokens are refused (fail closed).
pub(crate) fn compile(
    target: &str,
    authentications: &[pb::RequestAuthentication],
    errors: &mut Vec<ConfigError>,
) -> AuthnSet {
    let mut set = AuthnSet::default();
    for a in authentications {
        let name = format!("{}/{}", a.namespace, a.name);
        for (index, r) in a.rules.iter().enumerate() {
            let mut fail = |reason| {
                errors.push(ConfigError::Authentication {
                    target: target.to_string(),
                    authentication: name.clone(),
                    rule: index,
                    issuer: r.issuer.clone(),
                    reason,
                })
            };
            if r.issuer.is_empty() {
                fail(AuthnError::NoIssuer);
                continue;
            }
            let (keys, key_errors) = jwt::parse_jwks(&r.jwks);
            let uri = (!r.jwks_uri.is_empty()).then(|| r.jwks_uri.clone());
            for reason in key_errors {
                fail(AuthnError::Keys {
                    uri: uri.clone(),
                    reason,
                });
            }
            let mut locations = Vec::new();
            for h in &r.from_headers {
                match header_name("fromHeaders", &h.name) {
                    Ok(name) => locations.push(Location::Header {
                        name,
                        prefix: h.prefix.clone(),
                    }),
                    Err(e) => fail(e),
                }
            }
            for (field, names, make) in [
                (
                    "fromParams",
                    &r.from_params,
                    Location::Param as fn(String) -> Location,
                ),
                ("fromCookies", &r.from_cookies, Location::Cookie),
            ] {
                for n in names {
                    if n.is_empty() {
                        fail(AuthnError::EmptyName { field });
                    } else {
                        locations.push(make(n.clone()));
                    }
                }
            }
            let configured = !r.from_headers.is_empty()
                || !r.from_params.is_empty()
                || !r.from_cookies.is_empty();
            if !configured {
                locations = Location::defaults();
            }
            let payload_header = match r.output_payload_to_header.as_str() {
                "" => None,
                h => header_name("outputPayloadToHeader", h)
                    .map_err(&mut fail)
                    .ok(),
            };
            let mut claim_headers = Vec::new();
            for c in &r.output_claim_to_headers {
                match header_name("outputClaimToHeaders", &c.header) {
                    Ok(h) if !c.claim.is_empty() => {
                        claim_headers.push((h, c.claim.split('.').map(str::to_string).collect()))
                    }
                    Ok(_) => fail(AuthnError::EmptyName {
                        field: "outputClaimToHeaders claim",
                    }),
                    Err(e) => fail(e),
                }
            }
            set.rules.push(Rule {
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                keys,
                locations,
                forward: r.forward_original_token,
                payload_header,
                claim_headers,
            });
        }
    }
    set
}

fn header_name(field: &'static str, value: &str) -> Result<HeaderName, AuthnError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| AuthnError::HeaderName {
        field,
        value: value.to_string(),
    })
}

/// What to do to a request whose tokens (if any) all verified.
#[derive(Debug, Default)]
pub struct Plan {
    /// The first token's result; `None` when the request carried none.
    pub verified: Option<Verified>,
    /// Output headers of every rule: removed first, so a client cannot
    /// forge what only the waypoint may set.
    strip: Vec<HeaderName>,
    /// Headers that carried a token not to be forwarded.
    remove_headers: Vec<HeaderName>,
    /// Query parameters that carried a token not to be forwarded.
    remove_params: Vec<String>,
    set: Vec<(HeaderName, HeaderValue)>,
}

/// A token and where it was found.
struct Found<'r> {
    token: String,
    location: &'r Location,
}

/// Finds the request's tokens and verifies each with a rule that reads it
/// from there and names its issuer. Every token found must verify: a
/// request cannot slip a bad token past with a good one beside it.
pub fn decide(
    gateway: &AuthnSet,
    service: Option<&AuthnSet>,
    headers: &HeaderMap,
    query: Option<&str>,
    now: i64,
) -> Result<Plan, JwtError> {
    let rules = || {
        gateway
            .rules
            .iter()
            .chain(service.into_iter().flat_map(|s| s.rules.iter()))
    };
    let mut plan = Plan::default();
    for r in rules() {
        for h in r
            .payload_header
            .iter()
            .chain(r.claim_headers.iter().map(|(h, _)| h))
        {
            if !plan.strip.contains(h) {
                plan.strip.push(h.clone());
            }
        }
    }
    let mut locations: Vec<&Location> = Vec::new();
    for l in rules().flat_map(|r| r.locations.iter()) {
        if !locations.contains(&l) {
            locations.push(l);
        }
    }
    let mut found = Vec::new();
    for l in locations {
        for token in extract(l, headers, query) {
            if found.len() == MAX_TOKENS {
                return Err(JwtError::Malformed("too many tokens"));
            }
            found.push(Found { token, location: l });
        }
    }
    for f in &found {
        let parsed = jwt::parse(&f.token)?;
        let issuer = parsed.issuer.clone().unwrap_or_default();
        let mut result = Err(JwtError::IssuerNotConfigured(issuer.clone()));
        for r in rules().filter(|r| r.issuer == issuer && r.locations.contains(f.location)) {
            let expect = Expect {
                issuer: &r.issuer,
                audiences: &r.audiences,
                keys: &r.keys,
            };
            result = jwt::verify(&parsed, expect, now).map(|v| (r, v));
            if result.is_ok() {
                break;
            }
        }
        let (rule, verified) = result?;
        if !rule.forward {
            match f.location {
                Location::Header { name, .. } => plan.remove_headers.push(name.clone()),
                Location::Param(p) => plan.remove_params.push(p.clone()),
                // A cookie header carries other cookies too: left as is.
                Location::Cookie(_) => {}
            }
        }
        if let Some(h) = &rule.payload_header
            && let Ok(v) = HeaderValue::from_str(parsed.payload_b64)
        {
            plan.set.push((h.clone(), v));
        }
        for (h, path) in &rule.claim_headers {
            let text = match verified.claim(path) {
                None => continue,
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                plan.set.push((h.clone(), v));
            }
        }
        if plan.verified.is_none() {
            plan.verified = Some(verified);
        }
    }
    Ok(plan)
}

/// Carries out a plan on the request's headers.
pub fn apply_headers(plan: &Plan, headers: &mut HeaderMap) {
    for h in plan.strip.iter().chain(&plan.remove_headers) {
        headers.remove(h);
    }
    for (h, v) in &plan.set {
        headers.insert(h.clone(), v.clone());
    }
}

/// Carries out a plan on the request's URI (query parameters that carried
/// a token).
pub fn apply_uri(plan: &Plan, uri: &mut Uri) {
    if plan.remove_params.is_empty() {
        return;
    }
    let Some(pq) = uri.path_and_query() else {
        return;
    };
    let kept = without_params(pq.as_str(), &plan.remove_params);
    let mut parts = uri.clone().into_parts();
    if let Ok(p) = PathAndQuery::from_maybe_shared(bytes::Bytes::from(kept)) {
        parts.path_and_query = Some(p);
        if let Ok(u) = Uri::from_parts(parts) {
            *uri = u;
        }
    }
}

/// `path?query` without the parameters named `names`.
fn without_params(pq: &str, names: &[String]) -> String {
    let Some((path, query)) = pq.split_once('?') else {
        return pq.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !names.iter().any(|n| n == name)
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The tokens at one location (a header may repeat).
fn extract(l: &Location, headers: &HeaderMap, query: Option<&str>) -> Vec<String> {
    match l {
        Location::Header { name, prefix } => headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| strip_prefix_ignore_case(v, prefix))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Location::Param(name) => query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|p| p.split_once('='))
            .filter(|(n, _)| n == name)
            .map(|(_, v)| decode_component(v))
            .filter(|t| !t.is_empty())
            .collect(),
        Location::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim_matches('"').to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    }
}

fn strip_prefix_ignore_case<'v>(v: &'v str, prefix: &str) -> Option<&'v str> {
    let head = v.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &v[prefix.len()..])
}

#[cfg(test)]
mod tests;
