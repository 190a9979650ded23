//! L7 authorization with Istio's AuthorizationPolicy semantics.
//!
//! The policies attached to the waypoint's Gateway and those attached to the
//! request's service are evaluated together, as Istio evaluates every policy
//! that applies to a workload:
//!
//! 1. a matching DENY policy denies;
//! 2. otherwise, if any ALLOW policy applies, the request must match one of
//!    them, or it is denied;
//! 3. otherwise the request is allowed.
//!
//! AUDIT policies and `dry_run` policies never change the decision; the ones
//! that matched are reported in `Evaluation` for logging.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use mesh_api::ambit::waypoint::v1 as pb;

use crate::config::ConfigError;
use crate::jwt::Verified;

mod path;

pub(crate) use path::hex;
pub use path::{PathError, normalize_path};

/// The policy that decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A policy's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// Why a rule of a policy was dropped or made to match everything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown condition key {key:?}")]
    UnknownKey { key: String },
    #[error("condition {key:?} has neither values nor not_values")]
    EmptyCondition { key: String },
    #[error("{field}: {value:?} is not an IP address or CIDR")]
    Cidr { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a port")]
    Port { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a valid header name")]
    HeaderName { field: &'static str, value: String },
}

/// The verdict for one request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `policy` is the ALLOW policy that matched, `None` when no ALLOW
    /// policy applies.
    Allow { policy: Option<PolicyRef> },
    /// `policy` is the DENY policy that matched or, when ALLOW policies
    /// apply and none matched (`reason: NoAllowMatched`), the first ALLOW
    /// policy (the Gateway's before the service's, in arrival order).
    Deny {
        policy: PolicyRef,
        reason: DenyReason,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    DenyMatched,
    NoAllowMatched,
}

/// The decision plus what should be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// AUDIT policies that matched.
    pub audited: Vec<PolicyRef>,
    /// `dry_run` policies that matched, with their action (a DENY here
    /// "would have denied").
    pub dry_run: Vec<(PolicyRef, Action)>,
}

/// What authorization looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// The peer's SPIFFE id ("spiffe://td/ns/x/sa/y"), `None` without mTLS.
    pub source_principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None` for opaque TCP.
    pub request: Option<HttpAttrs<'a>>,
}

/// The HTTP part of a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    pub method: &'a Method,
    /// Without the query; normalized here again before comparison.
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// The request's verified JWT (RequestAuthentication), if it carried one.
    pub auth: Option<&'a Verified>,
}

/// Compiled policies of one attachment point.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }
}

#[derive(Debug, Clone)]
struct Policy {
    id: PolicyRef,
    action: Action,
    dry_run: bool,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Rule {
    Valid(Box<RuleSpec>),
    /// A rule that failed to compile: it matches everything in a DENY
    /// policy (fail closed) and nothing elsewhere.
    Invalid,
}

#[derive(Debug, Clone, Default)]
struct RuleSpec {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
    /// Uses a field only HTTP has (hosts, methods, paths, request
    /// principals, request headers, request.auth.*).
    http_only: bool,
}

/// Istio's string forms.
#[derive(Debug, Clone)]
enum StrMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    fn parse(s: &str) -> Self {
        if s == "*" {
            StrMatch::Any
        } else if let Some(p) = s.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            StrMatch::Suffix(p.to_string())
        } else {
            StrMatch::Exact(s.to_string())
        }
    }

    fn parse_lower(s: &str) -> Self {
        Self::parse(&s.to_ascii_lowercase())
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => e == v,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Source {
    principals: Vec<StrMatch>,
    not_principals: Vec<StrMatch>,
    request_principals: Vec<StrMatch>,
    not_request_principals: Vec<StrMatch>,
    namespaces: Vec<StrMatch>,
    not_namespaces: Vec<StrMatch>,
    ip_blocks: Vec<IpNet>,
    not_ip_blocks: Vec<IpNet>,
    remote_ip_blocks: Vec<IpNet>,
    not_remote_ip_blocks: Vec<IpNet>,
}

#[derive(Debug, Clone, Default)]
struct Operation {
    hosts: Vec<StrMatch>,
    not_hosts: Vec<StrMatch>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<StrMatch>,
    not_methods: Vec<StrMatch>,
    paths: Vec<StrMatch>,
    not_paths: Vec<StrMatch>,
}

#[derive(Debug, Clone)]
enum Key {
    Header(HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// request.auth.*: present when a JWT verified.
    Auth(AuthKey),
    /// connection.sni: the waypoint sees no SNI, so never present.
    ConnectionSni,
}

/// Which part of the verified JWT a condition reads.
#[derive(Debug, Clone)]
enum AuthKey {
    Principal,
    Audiences,
    Presenter,
    /// `claims[a][b]`: the claim `b` of the object claim `a`.
    Claim(Vec<String>),
}

#[derive(Debug, Clone)]
enum Values {
    Strings(Vec<StrMatch>),
    Nets(Vec<IpNet>),
    Ports(Vec<u16>),
}

#[derive(Debug, Clone)]
struct Condition {
    key: Key,
    values: Values,
    not_values: Values,
}

/// Compiles policies attached to `target` ("gateway ns/name" or "service
/// ns/name"), reporting each invalid rule.
pub(crate) fn compile_policies(
    target: &str,
    policies: &[pb::Policy],
    errors: &mut Vec<ConfigError>,
) -> PolicySet {
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        let id = PolicyRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        let action = match pb::policy::Action::try_from(p.action) {
            Ok(pb::policy::Action::Allow) => Action::Allow,
            Ok(pb::policy::Action::Deny) => Action::Deny,
            Ok(pb::policy::Action::Audit) => Action::Audit,
            Err(_) => {
                // An unknown action could be anything; treating the policy
                // as an allow-nothing ALLOW fails closed.
                errors.push(ConfigError::PolicyAction {
                    target: target.to_string(),
                    policy: id.to_string(),
                    action: p.action,
                });
                out.push(Policy {
                    id,
                    action: Action::Allow,
                    dry_run: p.dry_run,
                    rules: Vec::new(),
                });
                continue;
            }
        };
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| match compile_rule(r) {
                Ok(spec) => Rule::Valid(Box::new(spec)),
                Err(reason) => {
                    errors.push(ConfigError::Policy {
                        target: target.to_string(),
                        policy: id.to_string(),
                        rule: i,
                        reason,
                    });
                    Rule::Invalid
                }
            })
            .collect();
        out.push(Policy {
            id,
            action,
            dry_run: p.dry_run,
            rules,
        });
    }
    PolicySet { policies: out }
}

fn strs(v: &[String]) -> Vec<StrMatch> {
    v.iter().map(|s| StrMatch::parse(s)).collect()
}

fn nets(field: &'static str, v: &[String]) -> Result<Vec<IpNet>, PolicyError> {
    v.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| PolicyError::Cidr {
                    field,
                    value: s.clone(),
                })
        })
        .collect()
}

fn ports(field: &'static str, v: &[String]) -> Result<Vec<u16>, PolicyError> {
    v.iter()
        .map(|s| {
            s.parse::<u16>().map_err(|_| PolicyError::Port {
                field,
                value: s.clone(),
            })
        })
        .collect()
}

fn compile_rule(r: &pb::PolicyRule) -> Result<RuleSpec, PolicyError> {
    let mut spec = RuleSpec::default();
    for s in &r.from {
        spec.http_only |= !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
        spec.from.push(Source {
            principals: strs(&s.principals),
            not_principals: strs(&s.not_principals),
            request_principals: strs(&s.request_principals),
            not_request_principals: strs(&s.not_request_principals),
            namespaces: strs(&s.namespaces),
            not_namespaces: strs(&s.not_namespaces),
            ip_blocks: nets("ipBlocks", &s.ip_blocks)?,
            not_ip_blocks: nets("notIpBlocks", &s.not_ip_blocks)?,
            remote_ip_blocks: nets("remoteIpBlocks", &s.remote_ip_blocks)?,
            not_remote_ip_blocks: nets("notRemoteIpBlocks", &s.not_remote_ip_blocks)?,
        });
    }
    for o in &r.to {
        spec.http_only |= !o.hosts.is_empty()
            || !o.not_hosts.is_empty()
            || !o.methods.is_empty()
            || !o.not_methods.is_empty()
            || !o.paths.is_empty()
            || !o.not_paths.is_empty();
        spec.to.push(Operation {
            hosts: o.hosts.iter().map(|h| StrMatch::parse_lower(h)).collect(),
            not_hosts: o
                .not_hosts
                .iter()
                .map(|h| StrMatch::parse_lower(h))
                .collect(),
            ports: ports("ports", &o.ports)?,
            not_ports: ports("notPorts", &o.not_ports)?,
            methods: strs(&o.methods),
            not_methods: strs(&o.not_methods),
            paths: strs(&o.paths),
            not_paths: strs(&o.not_paths),
        });
    }
    for c in &r.when {
        let key = parse_key(&c.key)?;
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(PolicyError::EmptyCondition { key: c.key.clone() });
        }
        spec.http_only |= matches!(key, Key::Header(_) | Key::Auth(_));
        let values = |v: &[String]| -> Result<Values, PolicyError> {
            Ok(match key {
                Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
                    Values::Nets(nets("when values", v)?)
                }
                Key::DestinationPort => Values::Ports(ports("when values", v)?),
                _ => Values::Strings(strs(v)),
            })
        };
        spec.when.push(Condition {
            values: values(&c.values)?,
            not_values: values(&c.not_values)?,
            key,
        });
    }
    Ok(spec)
}

fn parse_key(key: &str) -> Result<Key, PolicyError> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return HeaderName::from_bytes(name.as_bytes())
            .map(Key::Header)
            .map_err(|_| PolicyError::HeaderName {
                field: "when key",
                value: name.to_string(),
            });
    }
    if let Some(path) = key.strip_prefix("request.auth.claims") {
        return claim_path(path)
            .map(|p| Key::Auth(AuthKey::Claim(p)))
            .ok_or_else(|| PolicyError::UnknownKey {
                key: key.to_string(),
            });
    }
    Ok(match key {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "request.auth.principal" => Key::Auth(AuthKey::Principal),
        "request.auth.audiences" => Key::Auth(AuthKey::Audiences),
        "request.auth.presenter" => Key::Auth(AuthKey::Presenter),
        "connection.sni" => Key::ConnectionSni,
        _ => {
            return Err(PolicyError::UnknownKey {
                key: key.to_string(),
            });
        }
    })
}

/// `[a][b]...` (what follows `request.auth.claims`) as its names; `None`
/// when it is not one or more non-empty bracketed names.
fn claim_path(s: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, tail) = rest.strip_prefix('[')?.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_string());
        rest = tail;
    }
    (!names.is_empty()).then_some(names)
}

/// Decides a request or connection; see the module docs.
pub fn decide(gateway: &PolicySet, service: Option<&PolicySet>, attrs: &RequestAttrs) -> Decision {
    evaluate(gateway, service, attrs).decision
}

/// `decide` plus the AUDIT and dry-run policies that matched.
pub fn evaluate(
    gateway: &PolicySet,
    service: Option<&PolicySet>,
    attrs: &RequestAttrs,
) -> Evaluation {
    let facts = Facts::new(attrs);
    let all = || {
        gateway
            .policies
            .iter()
            .chain(service.into_iter().flat_map(|s| s.policies.iter()))
    };
    let mut audited = Vec::new();
    let mut dry_run = Vec::new();
    for p in all() {
        if (p.dry_run || p.action == Action::Audit) && policy_matches(p, &facts) {
            if p.dry_run {
                dry_run.push((p.id.clone(), p.action));
            } else {
                audited.push(p.id.clone());
            }
        }
    }
    let enforced = || all().filter(|p| !p.dry_run);
    let decision = if let Some(p) = enforced()
        .filter(|p| p.action == Action::Deny)
        .find(|p| policy_matches(p, &facts))
    {
        Decision::Deny {
            policy: p.id.clone(),
            reason: DenyReason::DenyMatched,
        }
    } else {
        let mut allows = enforced().filter(|p| p.action == Action::Allow).peekable();
        match allows.peek().map(|p| p.id.clone()) {
            None => Decision::Allow { policy: None },
            Some(first) => match allows.find(|p| policy_matches(p, &facts)) {
                Some(p) => Decision::Allow {
                    policy: Some(p.id.clone()),
                },
                None => Decision::Deny {
                    policy: first,
                    reason: DenyReason::NoAllowMatched,
                },
            },
        }
    };
    Evaluation {
        decision,
        audited,
        dry_run,
    }
}

/// Request facts, derived once.
struct Facts<'a> {
    attrs: &'a RequestAttrs<'a>,
    /// The principal without "spiffe://".
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    /// `None` for TCP; `Some(None)` when the path cannot be normalized.
    path: Option<Option<String>>,
    host: Option<String>,
    host_no_port: Option<String>,
}

impl<'a> Facts<'a> {
    fn new(attrs: &'a RequestAttrs<'a>) -> Self {
        let principal = attrs
            .source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
        let namespace = principal.and_then(|p| {
            let rest = &p[p.find("/ns/")? + 4..];
            Some(rest.split('/').next().unwrap_or(rest)).filter(|ns| !ns.is_empty())
        });
        let http = attrs.request.as_ref();
        let host = http.map(|r| r.host.to_ascii_lowercase());
        let host_no_port = host
            .as_deref()
            .map(|h| crate::filters::host_without_port(h).to_string());
        Facts {
            attrs,
            principal,
            namespace,
            path: http.map(|r| {
                let p = r.path.split_once('?').map_or(r.path, |(p, _)| p);
                normalize_path(p).ok()
            }),
            host,
            host_no_port,
        }
    }
}

fn policy_matches(p: &Policy, f: &Facts) -> bool {
    let deny = p.action == Action::Deny;
    p.rules.iter().any(|r| match r {
        Rule::Invalid => deny,
        Rule::Valid(spec) => rule_matches(spec, f, deny),
    })
}

/// Values ORed, `not_` values NORed, an absent attribute matching no value.
fn field<T: ?Sized>(
    want: &[StrMatch],
    not: &[StrMatch],
    value: Option<&T>,
    test: impl Fn(&StrMatch, &T) -> bool,
) -> bool {
    let pos = want.is_empty() || value.is_some_and(|v| want.iter().any(|m| test(m, v)));
    let neg = not.is_empty() || value.is_none_or(|v| !not.iter().any(|m| test(m, v)));
    pos && neg
}

fn str_field(want: &[StrMatch], not: &[StrMatch], value: Option<&str>) -> bool {
    field(want, not, value, |m, v| m.matches(v))
}

fn net_field(want: &[IpNet], not: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    (want.is_empty() || want.iter().any(|n| n.contains(&ip)))
        && !not.iter().any(|n| n.contains(&ip))
}

fn port_field(want: &[u16], not: &[u16], port: u16) -> bool {
    (want.is_empty() || want.contains(&port)) && !not.contains(&port)
}

/// `deny`: the rule belongs to a DENY policy. On TCP traffic a DENY rule
/// ignores HTTP-only fields (it denies more) and any other rule using them
/// does not match. A path that cannot be normalized matches DENY path
/// fields and no ALLOW path field.
fn rule_matches(r: &RuleSpec, f: &Facts, deny: bool) -> bool {
    let tcp = f.attrs.request.is_none();
    if tcp && r.http_only && !deny {
        return false;
    }
    let from = r.from.is_empty() || r.from.iter().any(|s| source_matches(s, f));
    let to = r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, f, deny));
    from && to && r.when.iter().all(|c| condition_holds(c, f, deny))
}

fn source_matches(s: &Source, f: &Facts) -> bool {
    // Request principals are HTTP-only: on TCP only DENY rules get here,
    // and they ignore them.
    str_field(&s.principals, &s.not_principals, f.principal)
        && f.attrs.request.as_ref().is_none_or(|r| {
            str_field(
                &s.request_principals,
                &s.not_request_principals,
                r.auth.map(|a| a.principal.as_str()),
            )
        })
        && str_field(&s.namespaces, &s.not_namespaces, f.namespace)
        && net_field(&s.ip_blocks, &s.not_ip_blocks, f.attrs.source_ip)
        && net_field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            f.attrs.source_ip,
        )
}

fn operation_matches(o: &Operation, f: &Facts, deny: bool) -> bool {
    if !port_field(&o.ports, &o.not_ports, f.attrs.destination_port) {
        return false;
    }
    let Some(req) = &f.attrs.request else {
        // TCP: only reached for DENY rules, which ignore HTTP-only fields.
        return true;
    };
    let host_ok = field(&o.hosts, &o.not_hosts, f.host.as_deref(), |m, h: &str| {
        m.matches(h) || f.host_no_port.as_deref().is_some_and(|hp| m.matches(hp))
    });
    let method_ok = str_field(&o.methods, &o.not_methods, Some(req.method.as_str()));
    let path_ok = match f.path.as_ref().and_then(|p| p.as_deref()) {
        Some(p) => str_field(&o.paths, &o.not_paths, Some(p)),
        None => (o.paths.is_empty() && o.not_paths.is_empty()) || deny,
    };
    host_ok && method_ok && path_ok
}

fn condition_holds(c: &Condition, f: &Facts, deny: bool) -> bool {
    let ip_cond = |ip: IpAddr| match (&c.values, &c.not_values) {
        (Values::Nets(w), Values::Nets(n)) => net_field(w, n, ip),
        _ => false,
    };
    let str_cond = |v: Option<&str>| match (&c.values, &c.not_values) {
        (Values::Strings(w), Values::Strings(n)) => str_field(w, n, v),
        _ => false,
    };
    // An attribute with several values (a repeated header, audiences, an
    // array claim): some value matches `values`, none matches `not_values`.
    let multi_cond = |values: &[&str]| match (&c.values, &c.not_values) {
        (Values::Strings(w), Values::Strings(n)) => {
            let pos = w.is_empty() || values.iter().any(|v| w.iter().any(|m| m.matches(v)));
            let neg = !values.iter().any(|v| n.iter().any(|m| m.matches(v)));
            pos && neg
        }
        _ => false,
    };
    match &c.key {
        Key::SourceIp | Key::RemoteIp => ip_cond(f.attrs.source_ip),
        Key::DestinationIp => ip_cond(f.attrs.destination_ip),
        Key::DestinationPort => match (&c.values, &c.not_values) {
            (Values::Ports(w), Values::Ports(n)) => port_field(w, n, f.attrs.destination_port),
            _ => false,
        },
        Key::SourceNamespace => str_cond(f.namespace),
        Key::SourcePrincipal => str_cond(f.principal),
        Key::Auth(k) => match &f.attrs.request {
            // HTTP-only, so a DENY rule ignores it on TCP.
            None => deny,
            Some(req) => {
                let values: Vec<&str> = match (req.auth, k) {
                    (None, _) => Vec::new(),
                    (Some(a), AuthKey::Principal) => vec![a.principal.as_str()],
                    (Some(a), AuthKey::Audiences) => {
                        a.audiences.iter().map(String::as_str).collect()
                    }
                    (Some(a), AuthKey::Presenter) => a.presenter.as_deref().into_iter().collect(),
                    (Some(a), AuthKey::Claim(path)) => a.claim_strings(path),
                };
                multi_cond(&values)
            }
        },
        Key::ConnectionSni => str_cond(None),
        Key::Header(name) => match &f.attrs.request {
            // TCP: only reached for DENY rules, which ignore it.
            None => deny,
            Some(req) => {
                let values: Vec<&str> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                multi_cond(&values)
            }
        },
    }
}

#[cfg(test)]
mod tests;
