//! One AuthorizationPolicy rule to one L4 `Rule`: a Clause for the `from`
//! entries, one for the `to` entries, one per `when` condition.

use std::net::IpAddr;

use ipnet::IpNet;
use mesh_api::istio::security::{
    Action, Address, Clause, Match, Rule, ServiceAccountMatch, StringMatch, string_match,
};

use crate::model::istio::{
    AuthorizationPolicySpec, AuthorizationRule, Condition, Operation, Source,
};

/// `when` keys ztunnel can evaluate.
const L4_WHEN_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// What happened to one rule, for the policy's conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleNote {
    pub rule: usize,
    /// L7-only attributes the rule uses, by their YAML names.
    pub l7_fields: Vec<String>,
    /// `<path> has "<value>", which is not <what>` for each invalid value.
    pub invalid: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    pub rules: Vec<Rule>,
    pub notes: Vec<RuleNote>,
}

/// Whether any rule uses an attribute only a waypoint can check.
pub fn uses_l7(spec: &AuthorizationPolicySpec) -> bool {
    spec.rules.iter().any(|r| {
        let mut note = RuleNote::default();
        collect_l7(r, &mut note);
        !note.l7_fields.is_empty()
    })
}

/// Converts the rules of a policy with `action` in `namespace`. With
/// `left_to_waypoint`, DENY rules using L7 attributes are not sent at all.
pub fn convert_rules(
    rules: &[AuthorizationRule],
    action: Action,
    namespace: &str,
    left_to_waypoint: bool,
) -> Converted {
    let mut out = Converted::default();
    for (i, rule) in rules.iter().enumerate() {
        let mut note = RuleNote {
            rule: i,
            ..Default::default()
        };
        collect_l7(rule, &mut note);
        let converted = convert_rule(rule, namespace, &mut note);
        let unenforceable = !note.l7_fields.is_empty() || !note.invalid.is_empty();
        let keep = match action {
            // Anything that would loosen an ALLOW drops the whole rule.
            Action::Allow => !unenforceable,
            Action::Deny => !left_to_waypoint || note.l7_fields.is_empty(),
        };
        if keep {
            out.rules.push(converted);
        }
        if unenforceable {
            out.notes.push(note);
        }
    }
    out
}

fn collect_l7(rule: &AuthorizationRule, note: &mut RuleNote) {
    let mut fields: Vec<String> = Vec::new();
    let mut add = |present: bool, name: &str| {
        if present && !fields.iter().any(|f| f == name) {
            fields.push(name.to_string());
        }
    };
    for f in &rule.from {
        let s = &f.source;
        add(!s.request_principals.is_empty(), "requestPrincipals");
        add(!s.not_request_principals.is_empty(), "notRequestPrincipals");
        add(!s.remote_ip_blocks.is_empty(), "remoteIpBlocks");
        add(!s.not_remote_ip_blocks.is_empty(), "notRemoteIpBlocks");
    }
    for t in &rule.to {
        let o = &t.operation;
        add(!o.hosts.is_empty(), "hosts");
        add(!o.not_hosts.is_empty(), "notHosts");
        add(!o.methods.is_empty(), "methods");
        add(!o.not_methods.is_empty(), "notMethods");
        add(!o.paths.is_empty(), "paths");
        add(!o.not_paths.is_empty(), "notPaths");
    }
    for c in &rule.when {
        add(
            !L4_WHEN_KEYS.contains(&c.key.as_str()),
            &format!("when key {}", c.key),
        );
    }
    note.l7_fields = fields;
}

/// The L4 part of a rule. An entry or condition with no L4 part left matches
/// everything, so its clause is left out (a rule with no clauses matches all).
fn convert_rule(rule: &AuthorizationRule, namespace: &str, note: &mut RuleNote) -> Rule {
    let mut clauses = Vec::new();
    if !rule.from.is_empty() {
        let matches: Vec<Option<Match>> = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| source_match(&f.source, namespace, &format!("from[{i}].source"), note))
            .collect();
        clauses.extend(clause(matches));
    }
    if !rule.to.is_empty() {
        let matches: Vec<Option<Match>> = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| operation_match(&t.operation, &format!("to[{i}].operation"), note))
            .collect();
        clauses.extend(clause(matches));
    }
    for (i, c) in rule.when.iter().enumerate() {
        if let Some(m) = when_match(c, &format!("when[{i}]"), note) {
            clauses.push(Clause { matches: vec![m] });
        }
    }
    Rule { clauses }
}

/// The OR of the entries; None (no clause) when one entry matches everything.
fn clause(matches: Vec<Option<Match>>) -> Option<Clause> {
    matches
        .into_iter()
        .collect::<Option<Vec<Match>>>()
        .map(|matches| Clause { matches })
}

fn is_empty(m: &Match) -> bool {
    *m == Match::default()
}

fn source_match(s: &Source, namespace: &str, path: &str, note: &mut RuleNote) -> Option<Match> {
    let l4_written = !(s.principals.is_empty()
        && s.not_principals.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty()
        && s.service_accounts.is_empty()
        && s.not_service_accounts.is_empty()
        && s.ip_blocks.is_empty()
        && s.not_ip_blocks.is_empty());
    let l7_written = !(s.request_principals.is_empty()
        && s.not_request_principals.is_empty()
        && s.remote_ip_blocks.is_empty()
        && s.not_remote_ip_blocks.is_empty());
    if !l4_written && !l7_written {
        note.invalid.push(format!(
            "{path} is empty, which matches no connection attribute"
        ));
        return None;
    }
    let mut f = FieldReader { path, note };
    let m = Match {
        principals: f.list("principals", &s.principals, principal_match),
        not_principals: f.list("notPrincipals", &s.not_principals, principal_match),
        namespaces: f.list("namespaces", &s.namespaces, |v| Some(string_match(v))),
        not_namespaces: f.list("notNamespaces", &s.not_namespaces, |v| {
            Some(string_match(v))
        }),
        service_accounts: f.list("serviceAccounts", &s.service_accounts, |v| {
            service_account(v, namespace)
        }),
        not_service_accounts: f.list("notServiceAccounts", &s.not_service_accounts, |v| {
            service_account(v, namespace)
        }),
        source_ips: f.list("ipBlocks", &s.ip_blocks, ip_block),
        not_source_ips: f.list("notIpBlocks", &s.not_ip_blocks, ip_block),
        ..Default::default()
    };
    (!is_empty(&m)).then_some(m)
}

fn operation_match(o: &Operation, path: &str, note: &mut RuleNote) -> Option<Match> {
    let written = [
        &o.hosts,
        &o.not_hosts,
        &o.ports,
        &o.not_ports,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    if written.iter().all(|l| l.is_empty()) {
        note.invalid.push(format!(
            "{path} is empty, which matches no connection attribute"
        ));
        return None;
    }
    let mut f = FieldReader { path, note };
    let m = Match {
        destination_ports: f.list("ports", &o.ports, port),
        not_destination_ports: f.list("notPorts", &o.not_ports, port),
        ..Default::default()
    };
    (!is_empty(&m)).then_some(m)
}

fn when_match(c: &Condition, path: &str, note: &mut RuleNote) -> Option<Match> {
    if !L4_WHEN_KEYS.contains(&c.key.as_str()) {
        return None;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        note.invalid.push(format!(
            "{path} ({}) has neither values nor notValues",
            c.key
        ));
        return None;
    }
    let mut f = FieldReader { path, note };
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = f.list("values", &c.values, ip_block);
            m.not_source_ips = f.list("notValues", &c.not_values, ip_block);
        }
        "source.namespace" => {
            m.namespaces = f.list("values", &c.values, |v| Some(string_match(v)));
            m.not_namespaces = f.list("notValues", &c.not_values, |v| Some(string_match(v)));
        }
        "source.principal" => {
            m.principals = f.list("values", &c.values, principal_match);
            m.not_principals = f.list("notValues", &c.not_values, principal_match);
        }
        "destination.ip" => {
            m.destination_ips = f.list("values", &c.values, ip_block);
            m.not_destination_ips = f.list("notValues", &c.not_values, ip_block);
        }
        _ => {
            m.destination_ports = f.list("values", &c.values, port);
            m.not_destination_ports = f.list("notValues", &c.not_values, port);
        }
    }
    (!is_empty(&m)).then_some(m)
}

/// Reads one list field; a list with an invalid value is left out whole
/// (recorded in the note), so it never narrows a DENY.
struct FieldReader<'a> {
    path: &'a str,
    note: &'a mut RuleNote,
}

impl FieldReader<'_> {
    fn list<T: Expected>(
        &mut self,
        field: &str,
        values: &[String],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match parse(v) {
                Some(t) => out.push(t),
                None => {
                    self.note.invalid.push(format!(
                        "{}.{field} has \"{v}\", which is not {}",
                        self.path,
                        T::EXPECTED
                    ));
                    return Vec::new();
                }
            }
        }
        out
    }
}

/// What a valid value of a converted type looks like, for messages.
trait Expected {
    const EXPECTED: &'static str;
}

impl Expected for u32 {
    const EXPECTED: &'static str = "a port number (1-65535)";
}

impl Expected for Address {
    const EXPECTED: &'static str = "an IP address or CIDR";
}

impl Expected for ServiceAccountMatch {
    const EXPECTED: &'static str = "a service account name or namespace/name";
}

impl Expected for StringMatch {
    const EXPECTED: &'static str = "a string";
}

/// `*` -> presence, `*x` -> suffix, `x*` -> prefix, else exact.
pub fn string_match(v: &str) -> StringMatch {
    let match_type = if v == "*" {
        string_match::MatchType::Presence(())
    } else if let Some(suffix) = v.strip_prefix('*') {
        string_match::MatchType::Suffix(suffix.to_string())
    } else if let Some(prefix) = v.strip_suffix('*') {
        string_match::MatchType::Prefix(prefix.to_string())
    } else {
        string_match::MatchType::Exact(v.to_string())
    };
    StringMatch {
        match_type: Some(match_type),
    }
}

/// Principals are compared without the `spiffe://` scheme.
fn principal_match(v: &str) -> Option<StringMatch> {
    Some(string_match(v.strip_prefix("spiffe://").unwrap_or(v)))
}

fn service_account(v: &str, namespace: &str) -> Option<ServiceAccountMatch> {
    let (ns, name) = match v.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (namespace, v),
    };
    let valid = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains('*');
    (valid(ns) && valid(name)).then(|| ServiceAccountMatch {
        namespace: ns.to_string(),
        service_account: name.to_string(),
    })
}

/// A bare IP is a host prefix (/32 or /128).
pub fn ip_block(v: &str) -> Option<Address> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        let length = if ip.is_ipv4() { 32 } else { 128 };
        return Some(Address {
            address: super::super::ip_bytes(ip),
            length,
        });
    }
    let net = v.parse::<IpNet>().ok()?;
    Some(Address {
        address: super::super::ip_bytes(net.addr()),
        length: u32::from(net.prefix_len()),
    })
}

fn port(v: &str) -> Option<u32> {
    v.parse::<u16>().ok().filter(|p| *p != 0).map(u32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        use string_match::MatchType::*;
        assert_eq!(string_match("*").match_type, Some(Presence(())));
        assert_eq!(string_match("*.x").match_type, Some(Suffix(".x".into())));
        assert_eq!(string_match("x*").match_type, Some(Prefix("x".into())));
        assert_eq!(string_match("x").match_type, Some(Exact("x".into())));
    }

    #[test]
    fn ip_blocks_and_ports() {
        assert_eq!(ip_block("10.0.0.1").unwrap().length, 32);
        assert_eq!(ip_block("fd00::1").unwrap().length, 128);
        assert_eq!(
            ip_block("10.0.0.0/8").unwrap(),
            Address {
                address: vec![10, 0, 0, 0],
                length: 8
            }
        );
        assert!(ip_block("10.0.0.300").is_none());
        assert!(ip_block("10.0.0.0/33").is_none());
        assert_eq!(port("8080"), Some(8080));
        assert_eq!(port("0"), None);
        assert_eq!(port("70000"), None);
        assert_eq!(port("http"), None);
    }

    #[test]
    fn service_accounts_default_to_the_policy_namespace() {
        let sa = service_account("sa", "ns").unwrap();
        assert_eq!(
            (sa.namespace.as_str(), sa.service_account.as_str()),
            ("ns", "sa")
        );
        let sa = service_account("other/sa", "ns").unwrap();
        assert_eq!(sa.namespace, "other");
        assert!(service_account("a/b/c", "ns").is_none());
    }
}
