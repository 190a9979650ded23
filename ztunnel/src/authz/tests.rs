use super::*;
use crate::config::{Clause, Mtls, Rule, Selector, Workload};

fn workload(ns: &str, labels: &[(&str, &str)], policies: &[&str]) -> WorkloadEntry {
    let spec: Workload = serde_yaml::from_str(&format!(
        "{{name: server, namespace: {ns}, serviceAccount: server, addresses: [10.0.0.2]}}"
    ))
    .unwrap();
    let mut spec = spec;
    spec.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec.authorization_policies = policies.iter().map(|s| s.to_string()).collect();
    WorkloadEntry {
        identity: Identity::for_workload("", ns, "server").unwrap(),
        spec,
    }
}

fn policy(name: &str, action: Action, matches: &str) -> Authorization {
    let m: Match = serde_yaml::from_str(matches).unwrap();
    Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action,
        rules: vec![Rule {
            clauses: vec![Clause { matches: vec![m] }],
        }],
        dry_run: false,
    }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn conn<'a>(source: Option<&'a Identity>, src_ip: &str, dst: &str) -> Connection<'a> {
    Connection {
        source_ip: src_ip.parse().unwrap(),
        source,
        destination: dst.parse().unwrap(),
    }
}

/// Every L4 match kind and its negation, for a matching and a non-matching
/// connection. A DENY policy with the match: `denied` says whether it fires.
#[test]
fn every_match_kind_and_its_negation() {
    let alice = id("frontend", "alice");
    let bob = id("backend", "bob");
    let a = || conn(Some(&alice), "10.1.0.5", "10.0.0.2:9000");
    let b = || conn(Some(&bob), "192.168.0.9", "10.0.0.2:8080");
    #[allow(clippy::type_complexity)]
    let table: &[(&str, &str, bool, bool)] = &[
        // (case, match, denies alice@10.1.0.5->:9000, denies bob@192.168.0.9->:8080)
        (
            "principal exact",
            "{principals: ['cluster.local/ns/frontend/sa/alice']}",
            true,
            false,
        ),
        (
            "principal prefix",
            "{principals: ['cluster.local/ns/frontend/*']}",
            true,
            false,
        ),
        (
            "principal suffix",
            "{principals: ['*/sa/bob']}",
            false,
            true,
        ),
        ("principal presence", "{principals: ['*']}", true, true),
        (
            "not principal",
            "{notPrincipals: ['cluster.local/ns/frontend/sa/alice']}",
            false,
            true,
        ),
        ("namespace", "{namespaces: [frontend]}", true, false),
        ("not namespace", "{notNamespaces: [frontend]}", false, true),
        ("source ip cidr", "{sourceIps: [10.0.0.0/8]}", true, false),
        ("source ip host", "{sourceIps: [192.168.0.9]}", false, true),
        ("not source ip", "{notSourceIps: [10.0.0.0/8]}", false, true),
        ("destination ip", "{destinationIps: [10.0.0.2]}", true, true),
        (
            "not destination ip",
            "{notDestinationIps: [10.0.0.0/24]}",
            false,
            false,
        ),
        (
            "destination port",
            "{destinationPorts: [9000]}",
            true,
            false,
        ),
        (
            "not destination port",
            "{notDestinationPorts: [9000]}",
            false,
            true,
        ),
        (
            "service account",
            "{serviceAccounts: [{namespace: backend, serviceAccount: bob}]}",
            false,
            true,
        ),
        (
            "not service account",
            "{notServiceAccounts: [{namespace: backend, serviceAccount: bob}]}",
            true,
            false,
        ),
        (
            "fields are ANDed",
            "{namespaces: [frontend], destinationPorts: [8080]}",
            false,
            false,
        ),
        (
            "list elements are ORed",
            "{destinationPorts: [9000, 8080]}",
            true,
            true,
        ),
        ("empty match never matches", "{}", false, false),
    ];
    for (case, m, deny_a, deny_b) in table {
        let state = State::build(&[], &[], &[policy("p", Action::Deny, m)], &[]).unwrap();
        let w = workload("default", &[], &[]);
        let da = decide(&state, &w, &a());
        let db = decide(&state, &w, &b());
        assert_eq!(!da.allowed, *deny_a, "{case}: alice: {da:?}");
        assert_eq!(!db.allowed, *deny_b, "{case}: bob: {db:?}");
        if !da.allowed {
            assert_eq!(da.reason, "denied by DENY policy default/p", "{case}");
        }
    }
}

#[test]
fn deny_wins_over_allow_and_allow_must_match_when_present() {
    let alice = id("frontend", "alice");
    let bob = id("backend", "bob");
    let w = workload("default", &[], &[]);
    let allow = policy("allow-frontend", Action::Allow, "{namespaces: [frontend]}");
    let deny = policy("deny-9000", Action::Deny, "{destinationPorts: [9000]}");

    let s = State::build(&[], &[], std::slice::from_ref(&allow), &[]).unwrap();
    assert!(decide(&s, &w, &conn(Some(&alice), "10.0.0.1", "10.0.0.2:80")).allowed);
    let d = decide(&s, &w, &conn(Some(&bob), "10.0.0.1", "10.0.0.2:80"));
    assert!(!d.allowed);
    assert_eq!(d.reason, "no ALLOW policy matched (1 apply)");

    let s = State::build(&[], &[], &[allow, deny], &[]).unwrap();
    let d = decide(&s, &w, &conn(Some(&alice), "10.0.0.1", "10.0.0.2:9000"));
    assert!(!d.allowed);
    assert_eq!(d.policy.as_deref(), Some("default/deny-9000"));

    let empty = State::default();
    let d = decide(&empty, &w, &conn(None, "10.0.0.1", "10.0.0.2:80"));
    assert!(d.allowed, "no policy: allowed");
}

#[test]
fn rule_and_clause_semantics() {
    let alice = id("frontend", "alice");
    let w = workload("default", &[], &[]);
    let c = conn(Some(&alice), "10.0.0.1", "10.0.0.2:80");
    let mut p = policy("p", Action::Deny, "{namespaces: [frontend]}");
    // A rule is the AND of its clauses.
    p.rules[0].clauses.push(Clause {
        matches: vec![serde_yaml::from_str("{destinationPorts: [81]}").unwrap()],
    });
    assert!(!policy_matches(&p, &c));
    // A clause is the OR of its matches.
    p.rules[0].clauses[1]
        .matches
        .push(serde_yaml::from_str("{destinationPorts: [80]}").unwrap());
    assert!(policy_matches(&p, &c));
    // A clause with no matches is true; a rule with no clauses matches all.
    p.rules[0].clauses[1].matches.clear();
    assert!(policy_matches(&p, &c));
    p.rules = vec![Rule::default()];
    assert!(policy_matches(&p, &c));
    // A policy with no rules never matches.
    p.rules.clear();
    assert!(!policy_matches(&p, &c));
    let s = State::build(&[], &[], &[p], &[]).unwrap();
    assert!(decide(&s, &w, &c).allowed);
}

#[test]
fn l7_fields_never_widen_access() {
    let alice = id("frontend", "alice");
    let w = workload("default", &[], &[]);
    let c = conn(Some(&alice), "10.0.0.1", "10.0.0.2:80");
    // ALLOW with an L7 condition: cannot be checked, so it grants nothing.
    let allow = policy(
        "allow-get",
        Action::Allow,
        "{namespaces: [frontend], methods: [GET]}",
    );
    let s = State::build(&[], &[], &[allow], &[]).unwrap();
    assert!(!decide(&s, &w, &c).allowed);
    // DENY with only L7 conditions: denies at L4 instead of never firing.
    let deny = policy("deny-admin", Action::Deny, "{paths: ['/admin*']}");
    let s = State::build(&[], &[], &[deny], &[]).unwrap();
    assert!(!decide(&s, &w, &c).allowed);
    // DENY with L4 and L7 conditions: the L4 part is enforced.
    let deny = policy(
        "deny-ns",
        Action::Deny,
        "{namespaces: [backend], methods: [POST]}",
    );
    let s = State::build(&[], &[], &[deny], &[]).unwrap();
    assert!(decide(&s, &w, &c).allowed, "alice is not in backend");
}

#[test]
fn audit_and_dry_run_do_not_change_the_outcome() {
    let alice = id("frontend", "alice");
    let w = workload("default", &[], &[]);
    let c = conn(Some(&alice), "10.0.0.1", "10.0.0.2:80");
    let audit = policy("audit-all", Action::Audit, "{principals: ['*']}");
    let mut dry = policy("dry-deny", Action::Deny, "{principals: ['*']}");
    dry.dry_run = true;
    let s = State::build(&[], &[], &[audit, dry], &[]).unwrap();
    let d = decide(&s, &w, &c);
    assert!(d.allowed);
    assert_eq!(d.audited, vec!["default/audit-all"]);
    assert_eq!(d.dry_run, vec![("default/dry-deny".to_string(), true)]);
}

#[test]
fn scopes_select_the_applicable_policies() {
    let alice = id("frontend", "alice");
    let c = conn(Some(&alice), "10.0.0.1", "10.0.0.2:80");
    let mut other_ns = policy("other", Action::Deny, "{principals: ['*']}");
    other_ns.namespace = "elsewhere".into();
    let mut global = policy("global", Action::Deny, "{destinationPorts: [80]}");
    global.namespace = "istio-system".into();
    global.scope = Scope::Global;
    let mut selected = policy("selected", Action::Deny, "{destinationPorts: [81]}");
    selected.scope = Scope::WorkloadSelector;
    let s = State::build(&[], &[], &[other_ns, global.clone(), selected.clone()], &[]).unwrap();
    let plain = workload("default", &[], &[]);
    let d = decide(&s, &plain, &c);
    assert_eq!(d.policy.as_deref(), Some("istio-system/global"));
    let s = State::build(&[], &[], &[selected], &[]).unwrap();
    let c81 = conn(Some(&alice), "10.0.0.1", "10.0.0.2:81");
    assert!(
        decide(&s, &plain, &c81).allowed,
        "selector policy not referenced"
    );
    let referencing = workload("default", &[], &["default/selected", "default/unknown"]);
    assert!(!decide(&s, &referencing, &c81).allowed);
}

#[test]
fn strict_peer_authentication_refuses_plaintext_only() {
    let alice = id("frontend", "alice");
    let pa = |ns: &str, mode, selector: Option<&[(&str, &str)]>| PeerAuthentication {
        name: "pa".into(),
        namespace: ns.into(),
        selector: selector.map(|l| Selector {
            match_labels: l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        mtls: Mtls { mode },
        port_level_mtls: Default::default(),
    };
    let w = workload("default", &[("app", "server")], &[]);
    let plain = conn(None, "10.0.0.1", "10.0.0.2:80");
    let tls = conn(Some(&alice), "10.0.0.1", "10.0.0.2:80");
    let cases = [
        (vec![pa("default", MtlsMode::Strict, None)], false),
        (vec![pa("istio-system", MtlsMode::Strict, None)], false),
        (
            vec![
                pa("default", MtlsMode::Permissive, None),
                pa("istio-system", MtlsMode::Strict, None),
            ],
            true,
        ),
        (
            vec![
                pa("default", MtlsMode::Permissive, Some(&[("app", "server")])),
                pa("default", MtlsMode::Strict, None),
            ],
            true,
        ),
        (
            vec![pa("default", MtlsMode::Strict, Some(&[("app", "other")]))],
            true,
        ),
        (vec![pa("other", MtlsMode::Strict, None)], true),
    ];
    for (i, (pas, plaintext_allowed)) in cases.into_iter().enumerate() {
        let s = State::build(&[], &[], &[], &pas).unwrap();
        let d = decide(&s, &w, &plain);
        assert_eq!(d.allowed, plaintext_allowed, "case {i}: {d:?}");
        if !d.allowed {
            assert!(d.reason.contains("requires mTLS (STRICT)"), "{}", d.reason);
        }
        assert!(
            decide(&s, &w, &tls).allowed,
            "case {i}: mTLS always allowed"
        );
    }
    // Port-level STRICT on a workload-selected policy.
    let mut p = pa("default", MtlsMode::Permissive, Some(&[("app", "server")]));
    p.port_level_mtls.insert(
        9000,
        Mtls {
            mode: MtlsMode::Strict,
        },
    );
    let s = State::build(&[], &[], &[], &[p]).unwrap();
    assert!(decide(&s, &w, &plain).allowed);
    assert!(!decide(&s, &w, &conn(None, "10.0.0.1", "10.0.0.2:9000")).allowed);
}

#[test]
fn plaintext_never_satisfies_identity_conditions() {
    let w = workload("default", &[], &[]);
    let plain = conn(None, "10.0.0.1", "10.0.0.2:80");
    for m in [
        "{principals: ['*']}",
        "{namespaces: ['*']}",
        "{serviceAccounts: [{namespace: a, serviceAccount: b}]}",
    ] {
        let s = State::build(&[], &[], &[policy("allow", Action::Allow, m)], &[]).unwrap();
        assert!(!decide(&s, &w, &plain).allowed, "{m}");
    }
    // The converted static strict policy: DENY notPrincipals presence.
    let s = State::build(
        &[],
        &[],
        &[policy("strict", Action::Deny, "{notPrincipals: ['*']}")],
        &[],
    )
    .unwrap();
    assert!(!decide(&s, &w, &plain).allowed);
}
