//! Table tests of RequestAuthentication attachment and JWT rule checks,
//! on the L7 tests' base store (a waypoint in `shop` with bound Services).

use mesh_api::ambit::waypoint::v1 as wp;

use super::super::tests::{BASE, conditions_of, service, waypoint};
use crate::jwks::{JwksCache, JwksEntry, JwksSource};
use crate::translate::tests::load_store;
use crate::translate::{MeshConfig, Translation, translate_with_keys};

const KEYS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"AQAB","e":"AQAB"}]}"#;

fn run_with(extra: &str, keys: &JwksCache) -> Translation {
    let store = load_store(&format!("{BASE}\n---\n{extra}")).unwrap_or_else(|e| panic!("{e:#}"));
    translate_with_keys(&store, &MeshConfig::default(), keys)
}

fn run(extra: &str) -> Translation {
    run_with(extra, &JwksCache::default())
}

fn ra(name: &str, targets: &str, rules: &str) -> String {
    format!(
        "kind: RequestAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRefs: {targets}\n  jwtRules:\n{rules}"
    )
}

const GATEWAY: &str = "[{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]";

fn names(list: &[wp::RequestAuthentication]) -> Vec<&str> {
    list.iter().map(|a| a.name.as_str()).collect()
}

fn only_rule(out: &Translation) -> &wp::JwtRule {
    let list = &waypoint(out).authentications;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].rules.len(), 1, "{list:?}");
    &list[0].rules[0]
}

#[test]
fn attached_to_the_gateway_with_every_field_copied() {
    let out = run(&ra(
        "gw",
        GATEWAY,
        &format!(
            "  - issuer: https://issuer.example\n    audiences: [shop, web]\n    jwks: '{KEYS}'\n    \
             fromHeaders: [{{name: x-jwt, prefix: \"Bearer \"}}]\n    fromParams: [token]\n    fromCookies: [session]\n    \
             outputPayloadToHeader: x-payload\n    forwardOriginalToken: true\n    \
             outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-team, claim: org.team}}]\n    timeout: 2s\n"
        ),
    ));
    let list = &waypoint(&out).authentications;
    assert_eq!(
        (list[0].namespace.as_str(), list[0].name.as_str()),
        ("shop", "gw")
    );
    let rule = only_rule(&out);
    let expected = wp::JwtRule {
        issuer: "https://issuer.example".into(),
        audiences: vec!["shop".into(), "web".into()],
        // Re-encoded compactly; the keys are the waypoint's to judge.
        jwks: serde_json::from_str::<serde_json::Value>(KEYS)
            .unwrap()
            .to_string(),
        from_headers: vec![wp::JwtHeader {
            name: "x-jwt".into(),
            prefix: "Bearer ".into(),
        }],
        from_params: vec!["token".into()],
        from_cookies: vec!["session".into()],
        forward_original_token: true,
        output_payload_to_header: "x-payload".into(),
        output_claim_to_headers: vec![
            wp::ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            },
            wp::ClaimToHeader {
                header: "x-team".into(),
                claim: "org.team".into(),
            },
        ],
        jwks_uri: String::new(),
    };
    assert_eq!(rule, &expected);
    // The services carry only their own.
    assert!(service(&out, "web").authentications.is_empty());
    assert!(
        conditions_of(&out, "RequestAuthentication", "shop/gw").is_empty(),
        "{:?}",
        out.conditions
    );
}

#[test]
fn attached_to_bound_services_once_each() {
    let rules = format!("  - {{issuer: a, jwks: '{KEYS}'}}\n");
    let out = run(&format!(
        "{}\n---\n{}",
        ra(
            "svc",
            "[{kind: Service, group: \"\", name: web}, {kind: Service, group: core, name: web-v1}]",
            &rules
        ),
        // targetRef and targetRefs naming the same Service: attached once.
        "kind: RequestAuthentication\nmetadata: {name: single, namespace: shop}\nspec:\n  targetRef: {kind: Service, group: \"\", name: web}\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  jwtRules: [{issuer: b, jwks: '{\"keys\":[]}'}]\n"
    ));
    assert_eq!(
        names(&service(&out, "web").authentications),
        ["single", "svc"]
    );
    assert_eq!(names(&service(&out, "web-v1").authentications), ["svc"]);
    assert!(service(&out, "web-v2").authentications.is_empty());
    assert!(waypoint(&out).authentications.is_empty());
    // Nothing of it reaches ztunnel.
    assert!(!out.authorizations.keys().any(|k| k.contains("svc")));
}

#[test]
fn targets_that_cannot_attach() {
    let rules = "  - {issuer: a, jwks: '{\"keys\":[]}'}\n";
    let docs = [
        ra(
            "missing",
            "\n  - {group: gateway.networking.k8s.io, kind: Gateway, name: ghost}\n  - {kind: Service, group: \"\", name: ghost}\n  - {kind: Service, group: \"\", name: optout}\n  - {kind: ServiceEntry, group: networking.istio.io, name: se}\n  - {kind: Service, group: \"\", name: plain, namespace: other}",
            rules,
        ),
        "kind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {gatewayClassName: istio, listeners: []}".to_string(),
        ra(
            "ingress",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: ingress}]",
            rules,
        ),
        format!(
            "kind: RequestAuthentication\nmetadata: {{name: both, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  targetRefs: {GATEWAY}\n  jwtRules:\n{rules}"
        ),
        format!(
            "kind: RequestAuthentication\nmetadata: {{name: sidecar, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n{rules}"
        ),
        format!("kind: RequestAuthentication\nmetadata: {{name: bare, namespace: shop}}\nspec:\n  jwtRules:\n{rules}"),
    ];
    let out = run(&docs.join("\n---\n"));
    assert!(waypoint(&out).authentications.is_empty());
    for svc in ["web", "web-v1", "web-v2"] {
        assert!(service(&out, svc).authentications.is_empty());
    }
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/missing"),
        [
            "Accepted=False TargetNotFound: targetRefs[0] names Gateway shop/ghost, which does not exist; targetRefs[1] names Service shop/ghost, which does not exist; targetRefs[2] names Service shop/optout, which is not bound to a waypoint; label it or its namespace istio.io/use-waypoint; targetRefs[3] names kind ServiceEntry of group \"networking.istio.io\"; a waypoint RequestAuthentication targets a Gateway (gateway.networking.k8s.io) or a Service; targetRefs[4] names Service other/plain in another namespace; a RequestAuthentication attaches only within its own namespace"
        ]
    );
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/ingress"),
        [
            "Accepted=False TargetNotFound: targetRefs[0] names Gateway shop/ingress, which is not of class istio-waypoint"
        ]
    );
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/both"),
        [
            "Accepted=False InvalidTarget: the RequestAuthentication has both a selector and targetRef(s), which Istio does not allow; it is not applied"
        ]
    );
    let not_attached = "Accepted=False NoTargetRefs: without targetRefs a RequestAuthentication applies to sidecars, and in ambient mode nothing checks its JWT rules; name a waypoint Gateway or a Service bound to a waypoint in targetRefs";
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/sidecar"),
        [not_attached]
    );
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/bare"),
        [not_attached]
    );
}

#[test]
fn invalid_rules_are_left_out_or_sent_without_keys() {
    let out = run(&ra(
        "rules",
        GATEWAY,
        &format!(
            "  - {{audiences: [x], jwks: '{KEYS}'}}\n  \
             - {{issuer: both, jwks: '{KEYS}', jwksUri: https://both.example/keys}}\n  \
             - {{issuer: notjson, jwks: 'not json'}}\n  \
             - {{issuer: nokeys, jwks: '{{\"kty\": \"RSA\"}}'}}\n  \
             - {{issuer: good, jwks: '{KEYS}', timeout: soon}}\n"
        ),
    ));
    let rules = &waypoint(&out).authentications[0].rules;
    let sent: Vec<(&str, &str)> = rules
        .iter()
        .map(|r| (r.issuer.as_str(), r.jwks.as_str()))
        .collect();
    let keys = serde_json::from_str::<serde_json::Value>(KEYS)
        .unwrap()
        .to_string();
    assert_eq!(
        sent,
        [
            ("notjson", r#"{"keys":[]}"#),
            ("nokeys", r#"{"keys":[]}"#),
            ("good", keys.as_str()),
        ]
    );
    let conditions = conditions_of(&out, "RequestAuthentication", "shop/rules");
    assert_eq!(
        conditions,
        [
            "PartiallyInvalid=True ConflictingJwks: spec.jwtRules[1] sets both jwks and jwksUri, which Istio does not allow; the rule is not applied, so tokens of issuer both are refused",
            "PartiallyInvalid=True InvalidJwks: spec.jwtRules[2].jwks is not a JSON Web Key Set (not JSON: expected ident at line 1 column 2); it is sent with no keys, so tokens of issuer notjson are refused; spec.jwtRules[3].jwks is not a JSON Web Key Set (not an object with a \"keys\" array); it is sent with no keys, so tokens of issuer nokeys are refused",
            "PartiallyInvalid=True InvalidTimeout: spec.jwtRules[4].timeout: \"soon\" is not a duration like 500ms, 5s, 10m or 24h; key sets are fetched with a timeout of 5s",
            "PartiallyInvalid=True MissingIssuer: spec.jwtRules[0] has no issuer, which Istio requires; the rule is not applied",
        ]
    );
}

#[test]
fn fetched_key_sets_pending_and_failed_ones() {
    let rules = "  - {issuer: resolved, jwksUri: https://resolved.example/keys}\n  \
                 - {issuer: pending, jwksUri: https://pending.example/keys}\n  \
                 - {issuer: failed, jwksUri: https://failed.example/keys}\n  \
                 - {issuer: https://oidc.example/}\n  \
                 - {issuer: https://oidc-pending.example}\n";
    let mut keys = JwksCache::default();
    keys.entries.insert(
        JwksSource::Uri("https://resolved.example/keys".into()),
        JwksEntry::Fetched {
            uri: "https://resolved.example/keys".into(),
            jwks: KEYS.into(),
        },
    );
    keys.entries.insert(
        JwksSource::Uri("https://failed.example/keys".into()),
        JwksEntry::Failed("https://failed.example/keys answered HTTP 404".into()),
    );
    keys.entries.insert(
        JwksSource::Discovery("https://oidc.example/".into()),
        JwksEntry::Fetched {
            uri: "https://oidc.example/jwks".into(),
            jwks: KEYS.into(),
        },
    );
    let out = run_with(&ra("uris", GATEWAY, rules), &keys);
    let rules = &waypoint(&out).authentications[0].rules;
    let sent: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| (r.issuer.as_str(), r.jwks.as_str(), r.jwks_uri.as_str()))
        .collect();
    let none = r#"{"keys":[]}"#;
    assert_eq!(
        sent,
        [
            ("resolved", KEYS, "https://resolved.example/keys"),
            ("pending", none, "https://pending.example/keys"),
            ("failed", none, "https://failed.example/keys"),
            ("https://oidc.example/", KEYS, "https://oidc.example/jwks"),
            (
                "https://oidc-pending.example",
                none,
                "https://oidc-pending.example/.well-known/openid-configuration"
            ),
        ]
    );
    assert_eq!(
        conditions_of(&out, "RequestAuthentication", "shop/uris"),
        [
            "KeysResolved=False JwksFetchFailed: spec.jwtRules[2]: the key set could not be fetched from https://failed.example/keys: https://failed.example/keys answered HTTP 404; tokens of issuer failed are refused until it is",
            "KeysResolved=False Resolving: spec.jwtRules[1]: the key set at https://pending.example/keys has not been fetched yet; tokens of issuer pending are refused until it is; spec.jwtRules[4]: the key set at https://oidc-pending.example/.well-known/openid-configuration (OpenID Connect discovery: the rule has neither jwks nor jwksUri) has not been fetched yet; tokens of issuer https://oidc-pending.example are refused until it is",
        ]
    );

    // The same store before anything is fetched: every uri rule is pending.
    let before = run(&ra(
        "uris",
        GATEWAY,
        "  - {issuer: resolved, jwksUri: https://resolved.example/keys}\n",
    ));
    assert_eq!(only_rule(&before).jwks, none);
}

#[test]
fn the_translator_retranslates_when_keys_arrive() {
    use std::sync::Arc;

    use crate::translate::{Touched, Translator};

    let store = Arc::new(
        load_store(&format!(
            "{BASE}\n---\n{}",
            ra(
                "uri",
                GATEWAY,
                "  - {issuer: a, jwksUri: http://keys.example/jwks}\n"
            )
        ))
        .unwrap(),
    );
    let mut translator = Translator::new(MeshConfig::default());
    translator.update(&store);
    let rule = |t: &Translator| {
        t.translation().waypoints["shop/waypoint"].authentications[0].rules[0]
            .jwks
            .clone()
    };
    assert_eq!(rule(&translator), r#"{"keys":[]}"#);

    let mut keys = JwksCache::default();
    keys.entries.insert(
        JwksSource::Uri("http://keys.example/jwks".into()),
        JwksEntry::Fetched {
            uri: "http://keys.example/jwks".into(),
            jwks: KEYS.into(),
        },
    );
    translator.set_keys(&Arc::new(keys.clone()));
    let touched = translator.update(&store);
    assert_eq!(rule(&translator), KEYS);
    let Touched::Keys { waypoints, .. } = touched else {
        panic!("a key change is not a full translation: {touched:?}")
    };
    assert_eq!(waypoints.into_iter().collect::<Vec<_>>(), ["shop/waypoint"]);
    assert!(
        translator
            .translation()
            .conditions
            .iter()
            .all(|c| c.reason != "Resolving")
    );
    // Equal keys again: nothing to translate.
    translator.set_keys(&Arc::new(keys));
    assert_eq!(
        translator.update(&store),
        Touched::Keys {
            addresses: Default::default(),
            authorizations: Default::default(),
            waypoints: Default::default(),
        }
    );
}
