//! RequestAuthentications attached by `targetRef`/`targetRefs` to a waypoint
//! Gateway or to a Service bound to a waypoint, with their JWT rules
//! checked and their key sets made inline.
//!
//! Every rule the waypoint gets fails closed: a key set that is invalid, not
//! fetched yet or not fetchable is sent as no keys, so that the issuer's
//! tokens are refused rather than accepted unchecked. Rules Istio would
//! reject (no issuer; both `jwks` and `jwksUri`) are left out, which refuses
//! their tokens as well.

use std::collections::BTreeSet;

use mesh_api::ambit::waypoint::v1 as wp;

use super::{Notes, target};
use crate::jwks::{self, EMPTY_KEY_SET, JwksCache, JwksEntry, JwksSource};
use crate::model::istio::{JwtRule, RequestAuthentication};
use crate::model::{Kind, NamespacedName, ObjectKey, Store};
use crate::translate::waypoint::Waypoints;

#[cfg(test)]
#[path = "authentication_tests.rs"]
mod tests;

/// RequestAuthentications by the waypoint Gateway or the Service they
/// attach to.
pub type Attached = target::Attached<wp::RequestAuthentication>;

pub fn attach(
    store: &Store,
    waypoints: &Waypoints,
    bound: &BTreeSet<NamespacedName>,
    keys: &JwksCache,
    notes: &mut Notes,
) -> Attached {
    let scope = target::Scope {
        store,
        waypoints,
        bound,
    };
    let mut out = Attached::default();
    for (key, ra) in &store.request_authentications {
        let spec = &ra.spec;
        let object = ObjectKey {
            kind: Kind::RequestAuthentication,
            name: key.clone(),
        };
        let refs: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).collect();
        if refs.is_empty() {
            // Istio applies these to sidecars; ambient has none, and
            // ztunnel does not read JWTs.
            notes.add(&object, "Accepted", false, "NoTargetRefs",
                "without targetRefs a RequestAuthentication applies to sidecars, and in ambient mode nothing checks its JWT rules; name a waypoint Gateway or a Service bound to a waypoint in targetRefs".to_string());
            continue;
        }
        let Some(targets) = target::resolve(&object, spec.selector.as_ref(), &refs, &scope, notes)
        else {
            continue;
        };
        if targets.is_empty() {
            continue;
        }
        let converted = convert(key, ra, keys, &object, notes);
        out.insert(&targets, &converted);
    }
    out
}

fn convert(
    key: &NamespacedName,
    ra: &RequestAuthentication,
    keys: &JwksCache,
    object: &ObjectKey,
    notes: &mut Notes,
) -> wp::RequestAuthentication {
    let rules = ra
        .spec
        .jwt_rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(&format!("spec.jwtRules[{i}]"), r, keys, object, notes))
        .collect();
    wp::RequestAuthentication {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        rules,
    }
}

/// The rule as the waypoint gets it, or `None` when it is left out.
fn rule(
    at: &str,
    r: &JwtRule,
    keys: &JwksCache,
    object: &ObjectKey,
    notes: &mut Notes,
) -> Option<wp::JwtRule> {
    let mut invalid = |reason: &str, message: String| {
        notes.add(object, "PartiallyInvalid", true, reason, message);
    };
    if r.issuer.is_empty() {
        invalid(
            "MissingIssuer",
            format!("{at} has no issuer, which Istio requires; the rule is not applied"),
        );
        return None;
    }
    if !r.jwks.is_empty() && !r.jwks_uri.is_empty() {
        invalid(
            "ConflictingJwks",
            format!(
                "{at} sets both jwks and jwksUri, which Istio does not allow; the rule is not applied, so tokens of issuer {} are refused",
                r.issuer
            ),
        );
        return None;
    }
    if let Err(problem) = jwks::timeout_of(r) {
        invalid(
            "InvalidTimeout",
            format!(
                "{at}.timeout: {problem}; key sets are fetched with a timeout of {:?}",
                jwks::DEFAULT_TIMEOUT
            ),
        );
    }
    let refused = |why: &str| {
        format!(
            "{why}; tokens of issuer {} are refused until it is",
            r.issuer
        )
    };
    let (jwks, jwks_uri) = match jwks::source_of(r) {
        None => match jwks::key_set(&r.jwks) {
            Ok(set) => (set, String::new()),
            Err(problem) => {
                invalid(
                    "InvalidJwks",
                    format!(
                        "{at}.jwks is not a JSON Web Key Set ({problem}); it is sent with no keys, so tokens of issuer {} are refused",
                        r.issuer
                    ),
                );
                (EMPTY_KEY_SET.to_string(), String::new())
            }
        },
        Some(source) => {
            let shown = describe(&source);
            match keys.entries.get(&source) {
                Some(JwksEntry::Fetched { uri, jwks }) => (jwks.clone(), uri.clone()),
                Some(JwksEntry::Failed(error)) => {
                    notes.add(
                        object,
                        "KeysResolved",
                        false,
                        "JwksFetchFailed",
                        refused(&format!(
                            "{at}: the key set could not be fetched from {shown}: {error}"
                        )),
                    );
                    (EMPTY_KEY_SET.to_string(), source.to_string())
                }
                None => {
                    notes.add(
                        object,
                        "KeysResolved",
                        false,
                        "Resolving",
                        refused(&format!(
                            "{at}: the key set at {shown} has not been fetched yet"
                        )),
                    );
                    (EMPTY_KEY_SET.to_string(), source.to_string())
                }
            }
        }
    };
    Some(wp::JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        jwks,
        from_headers: r
            .from_headers
            .iter()
            .map(|h| wp::JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        forward_original_token: r.forward_original_token,
        output_payload_to_header: r.output_payload_to_header.clone(),
        output_claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| wp::ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
        jwks_uri,
    })
}

/// Where a source's keys are looked for, for messages.
fn describe(source: &JwksSource) -> String {
    match source {
        JwksSource::Uri(uri) => uri.clone(),
        JwksSource::Discovery(_) => {
            format!("{source} (OpenID Connect discovery: the rule has neither jwks nor jwksUri)")
        }
    }
}
