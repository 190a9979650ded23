//! From the proto's routes to a `Table`. An invalid rule is dropped (its
//! requests then fall to other rules or get 404); an invalid route-level
//! field (hostname, port) drops the route. Each drop is reported.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use mesh_api::ambit::waypoint::v1 as pb;
use regex::{Regex, RegexBuilder};

use super::{
    Backend, CompiledRoute, Entry, Hostnames, Match, Mirror, PathMatch, RouteKind, RouteMeta, Rule,
    Table, Timeouts, ValueMatch, precedence,
};
use crate::config::ConfigError;
use crate::fault::FaultPolicy;
use crate::filters::{Filters, HeaderModifier, PathModifier, Redirect, Rewrite};
use crate::retry::RetryPolicy;

/// Largest weight the Gateway API allows.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Compiled size limit of one regular expression: large enough for any
/// hand-written route, small enough that a hostile config cannot exhaust
/// memory.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What is wrong with a route, rule, match, filter or backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("{field} {value:?} must start with '/'")]
    NotAbsolutePath { field: &'static str, value: String },
    #[error("invalid method {method:?}")]
    Method { method: String },
    #[error("invalid header name {name:?}")]
    HeaderName { name: String },
    #[error("invalid value for header {name:?}")]
    HeaderValue { name: String },
    #[error("empty query parameter name")]
    QueryName,
    #[error("invalid hostname {hostname:?}")]
    Hostname { hostname: String },
    #[error("{field} {port} is not a port (1-65535)")]
    Port { field: &'static str, port: u32 },
    #[error("backend {backend} weight {weight} is above {MAX_WEIGHT}")]
    Weight { backend: String, weight: u32 },
    #[error("{field}: {reason}")]
    Duration {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{field} {value} is not a percentage (0-100)")]
    Percent { field: &'static str, value: f64 },
    #[error("{field} {status} is not a valid status")]
    Status { field: &'static str, status: u32 },
    #[error("redirect scheme {scheme:?} is neither http nor https")]
    Scheme { scheme: String },
    #[error("filter with no kind")]
    EmptyFilter,
    #[error("more than one {kind} filter")]
    DuplicateFilter { kind: &'static str },
    #[error("a rule cannot both redirect and rewrite")]
    RedirectAndRewrite,
    #[error("{filter} on a backend: only header modifiers apply per backend")]
    BackendFilter { filter: &'static str },
    #[error("a prefix path modifier needs every match of the rule to be a PREFIX path match")]
    PrefixModifierWithoutPrefixMatch,
    #[error("request mirror without a backend")]
    MirrorWithoutBackend,
}

/// Converts a proto duration; negative or out-of-range durations are errors.
pub(crate) fn duration(
    field: &'static str,
    d: &prost_types::Duration,
) -> Result<Duration, RouteError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(RouteError::Duration {
            field,
            reason: "negative",
        });
    }
    if d.nanos >= 1_000_000_000 {
        return Err(RouteError::Duration {
            field,
            reason: "nanos out of range",
        });
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Compiles a service's routes into a table; errors name the service
/// (`<namespace>/<name>`) and route.
pub fn compile_routes(service: &str, routes: &[pb::Route]) -> (Table, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut compiled = Vec::with_capacity(routes.len());
    let mut entries = Vec::new();
    for r in routes {
        let route_name = format!("{}/{}", r.namespace, r.name);
        let mut err = |reason: RouteError, rule: Option<String>| {
            errors.push(ConfigError::Route {
                service: service.to_string(),
                route: route_name.clone(),
                rule,
                reason,
            })
        };
        let kind = match pb::route::Kind::try_from(r.kind) {
            Ok(pb::route::Kind::Http) => RouteKind::Http,
            Ok(pb::route::Kind::Grpc) => RouteKind::Grpc,
            Err(_) => {
                err(
                    RouteError::UnknownEnum {
                        field: "kind",
                        value: r.kind,
                    },
                    None,
                );
                continue;
            }
        };
        let hostnames = match compile_hostnames(&r.hostnames) {
            Ok(h) => h,
            Err(e) => {
                err(e, None);
                continue;
            }
        };
        let ports = match r
            .ports
            .iter()
            .map(|&p| port("route port", p))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(p) => p,
            Err(e) => {
                err(e, None);
                continue;
            }
        };
        let index = compiled.len();
        let mut rules = Vec::with_capacity(r.rules.len());
        for (i, rule) in r.rules.iter().enumerate() {
            match compile_rule(rule) {
                Ok((rule, matches)) => {
                    let rule_index = rules.len();
                    rules.push(Arc::new(rule));
                    entries.extend(matches.into_iter().map(|matcher| Entry {
                        route: index,
                        rule: rule_index,
                        matcher,
                    }));
                }
                Err(e) => {
                    let label = if rule.name.is_empty() {
                        format!("#{i}")
                    } else {
                        rule.name.clone()
                    };
                    err(e, Some(label));
                }
            }
        }
        compiled.push(CompiledRoute {
            meta: RouteMeta {
                kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                created: r.created,
            },
            hostnames,
            ports,
            rules,
        });
    }
    entries.sort_by(|a, b| precedence(&compiled, a, b));
    (
        Table {
            routes: compiled,
            entries,
        },
        errors,
    )
}

fn port(field: &'static str, p: u32) -> Result<u16, RouteError> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(RouteError::Port { field, port: p }),
    }
}

fn compile_hostnames(names: &[String]) -> Result<Hostnames, RouteError> {
    let mut h = Hostnames {
        exact: Vec::new(),
        wildcard_suffixes: Vec::new(),
    };
    for name in names {
        let lower = name.to_ascii_lowercase();
        let lower = lower.trim_end_matches('.');
        let (wild, bare) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(RouteError::Hostname {
                hostname: name.clone(),
            });
        }
        if wild {
            h.wildcard_suffixes.push(format!(".{bare}"));
        } else {
            h.exact.push(bare.to_string());
        }
    }
    Ok(h)
}

fn compile_rule(r: &pb::Rule) -> Result<(Rule, Vec<Match>), RouteError> {
    let matches = if r.matches.is_empty() {
        vec![Match {
            path: PathMatch::Prefix("/".to_string()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }]
    } else {
        r.matches
            .iter()
            .map(compile_match)
            .collect::<Result<_, _>>()?
    };
    let (filters, mirrors) = compile_filters(&r.filters, false)?;
    let uses_prefix = |m: &Option<PathModifier>| matches!(m, Some(PathModifier::Prefix(_)));
    let prefix_modifier = filters
        .redirect
        .as_ref()
        .is_some_and(|x| uses_prefix(&x.path))
        || filters
            .rewrite
            .as_ref()
            .is_some_and(|x| uses_prefix(&x.path));
    if prefix_modifier
        && !matches
            .iter()
            .all(|m| matches!(m.path, PathMatch::Prefix(_)))
    {
        return Err(RouteError::PrefixModifierWithoutPrefixMatch);
    }
    let backends = r
        .backends
        .iter()
        .map(compile_backend)
        .collect::<Result<Vec<_>, _>>()?;
    let timeouts = match &r.timeouts {
        None => Timeouts::default(),
        Some(t) => Timeouts {
            request: t
                .request
                .as_ref()
                .map(|d| duration("timeouts.request", d))
                .transpose()?
                .filter(|d| !d.is_zero()),
            backend_request: t
                .backend_request
                .as_ref()
                .map(|d| duration("timeouts.backend_request", d))
                .transpose()?
                .filter(|d| !d.is_zero()),
        },
    };
    let retry = match &r.retry {
        None => None,
        Some(x) => RetryPolicy::compile(x)?,
    };
    let fault = match &r.fault {
        None => None,
        Some(f) => FaultPolicy::compile(f)?,
    };
    Ok((
        Rule {
            name: r.name.clone(),
            filters,
            backends,
            timeouts,
            retry,
            fault,
            mirrors,
        },
        matches,
    ))
}

fn regex(pattern: &str) -> Result<Regex, RouteError> {
    // Route regexes match the whole value, as Envoy's do.
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RouteError::Regex {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })
}

fn compile_match(m: &pb::Match) -> Result<Match, RouteError> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".to_string()),
        Some(p) => match pb::path_match::Type::try_from(p.r#type) {
            Ok(pb::path_match::Type::Exact) => {
                absolute("path match", &p.value)?;
                PathMatch::Exact(p.value.clone())
            }
            Ok(pb::path_match::Type::Prefix) => {
                let v = if p.value.is_empty() { "/" } else { &p.value };
                absolute("path match", v)?;
                PathMatch::Prefix(v.to_string())
            }
            Ok(pb::path_match::Type::Regex) => PathMatch::Regex(regex(&p.value)?),
            Err(_) => {
                return Err(RouteError::UnknownEnum {
                    field: "path match type",
                    value: p.r#type,
                });
            }
        },
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RouteError::HeaderName {
                name: h.name.clone(),
            })?;
        let value = match pb::header_match::Type::try_from(h.r#type) {
            Ok(pb::header_match::Type::Exact) => ValueMatch::Exact(h.value.clone()),
            Ok(pb::header_match::Type::Regex) => ValueMatch::Regex(regex(&h.value)?),
            Err(_) => {
                return Err(RouteError::UnknownEnum {
                    field: "header match type",
                    value: h.r#type,
                });
            }
        };
        // The Gateway API: only the first match of a name counts.
        if !headers.iter().any(|(n, _)| *n == name) {
            headers.push((name, value));
        }
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for q in &m.query_params {
        if q.name.is_empty() {
            return Err(RouteError::QueryName);
        }
        let value = match pb::query_match::Type::try_from(q.r#type) {
            Ok(pb::query_match::Type::Exact) => ValueMatch::Exact(q.value.clone()),
            Ok(pb::query_match::Type::Regex) => ValueMatch::Regex(regex(&q.value)?),
            Err(_) => {
                return Err(RouteError::UnknownEnum {
                    field: "query match type",
                    value: q.r#type,
                });
            }
        };
        if !query.iter().any(|(n, _): &(String, _)| n == &q.name) {
            query.push((q.name.clone(), value));
        }
    }
    let method = if m.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(m.method.as_bytes()).map_err(|_| RouteError::Method {
                method: m.method.clone(),
            })?,
        )
    };
    Ok(Match {
        path,
        headers,
        query,
        method,
    })
}

fn absolute(field: &'static str, v: &str) -> Result<(), RouteError> {
    if v.starts_with('/') {
        Ok(())
    } else {
        Err(RouteError::NotAbsolutePath {
            field,
            value: v.to_string(),
        })
    }
}

/// Compiles a filter list. `per_backend` filters accept only header
/// modifiers (what Istio supports on backendRefs).
pub(crate) fn compile_filters(
    list: &[pb::Filter],
    per_backend: bool,
) -> Result<(Filters, Vec<Mirror>), RouteError> {
    use pb::filter::Kind;
    let mut f = Filters::default();
    let mut mirrors = Vec::new();
    fn once<T>(slot: &mut Option<T>, v: T, kind: &'static str) -> Result<(), RouteError> {
        if slot.is_some() {
            return Err(RouteError::DuplicateFilter { kind });
        }
        *slot = Some(v);
        Ok(())
    }
    for filter in list {
        match &filter.kind {
            None => return Err(RouteError::EmptyFilter),
            Some(Kind::RequestHeaderModifier(m)) => once(
                &mut f.request_headers,
                header_modifier(m)?,
                "RequestHeaderModifier",
            )?,
            Some(Kind::ResponseHeaderModifier(m)) => once(
                &mut f.response_headers,
                header_modifier(m)?,
                "ResponseHeaderModifier",
            )?,
            Some(Kind::RequestRedirect(_)) if per_backend => {
                return Err(RouteError::BackendFilter {
                    filter: "RequestRedirect",
                });
            }
            Some(Kind::UrlRewrite(_)) if per_backend => {
                return Err(RouteError::BackendFilter {
                    filter: "URLRewrite",
                });
            }
            Some(Kind::RequestMirror(_)) if per_backend => {
                return Err(RouteError::BackendFilter {
                    filter: "RequestMirror",
                });
            }
            Some(Kind::RequestRedirect(r)) => {
                once(&mut f.redirect, redirect(r)?, "RequestRedirect")?
            }
            Some(Kind::UrlRewrite(r)) => once(&mut f.rewrite, rewrite(r)?, "URLRewrite")?,
            Some(Kind::RequestMirror(m)) => {
                let backend = m.backend.as_ref().ok_or(RouteError::MirrorWithoutBackend)?;
                if m.percent.is_nan() || !(0.0..=100.0).contains(&m.percent) {
                    return Err(RouteError::Percent {
                        field: "mirror percent",
                        value: m.percent,
                    });
                }
                mirrors.push(Mirror {
                    backend: compile_backend(backend)?,
                    percent: m.percent,
                });
            }
        }
    }
    if f.redirect.is_some() && f.rewrite.is_some() {
        return Err(RouteError::RedirectAndRewrite);
    }
    Ok((f, mirrors))
}

fn header_modifier(m: &pb::HeaderModifier) -> Result<HeaderModifier, RouteError> {
    let pair = |h: &pb::Header| -> Result<(HeaderName, HeaderValue), RouteError> {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RouteError::HeaderName {
                name: h.name.clone(),
            })?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| RouteError::HeaderValue {
            name: h.name.clone(),
        })?;
        Ok((name, value))
    };
    Ok(HeaderModifier {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| RouteError::HeaderName { name: n.clone() })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(m: &Option<pb::PathModifier>) -> Result<Option<PathModifier>, RouteError> {
    let Some(m) = m else { return Ok(None) };
    let value = if m.value.is_empty() { "/" } else { &m.value };
    absolute("path modifier", value)?;
    match pb::path_modifier::Type::try_from(m.r#type) {
        Ok(pb::path_modifier::Type::Full) => Ok(Some(PathModifier::Full(value.to_string()))),
        Ok(pb::path_modifier::Type::Prefix) => Ok(Some(PathModifier::Prefix(value.to_string()))),
        Err(_) => Err(RouteError::UnknownEnum {
            field: "path modifier type",
            value: m.r#type,
        }),
    }
}

fn optional_hostname(h: &str) -> Result<Option<String>, RouteError> {
    if h.is_empty() {
        return Ok(None);
    }
    // Must be usable as a Host header and in a Location.
    let valid = h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(RouteError::Hostname {
            hostname: h.to_string(),
        });
    }
    Ok(Some(h.to_ascii_lowercase()))
}

fn redirect(r: &pb::Redirect) -> Result<Redirect, RouteError> {
    let scheme = match r.scheme.to_ascii_lowercase().as_str() {
        "" => None,
        s @ ("http" | "https") => Some(s.to_string()),
        _ => {
            return Err(RouteError::Scheme {
                scheme: r.scheme.clone(),
            });
        }
    };
    let status = match r.status_code {
        0 => StatusCode::FOUND,
        s @ (301 | 302 | 303 | 307 | 308) => {
            StatusCode::from_u16(s as u16).map_err(|_| RouteError::Status {
                field: "redirect status",
                status: s,
            })?
        }
        s => {
            return Err(RouteError::Status {
                field: "redirect status",
                status: s,
            });
        }
    };
    Ok(Redirect {
        scheme,
        hostname: optional_hostname(&r.hostname)?,
        path: path_modifier(&r.path)?,
        port: match r.port {
            0 => None,
            p => Some(port("redirect port", p)?),
        },
        status,
    })
}

fn rewrite(r: &pb::Rewrite) -> Result<Rewrite, RouteError> {
    Ok(Rewrite {
        hostname: optional_hostname(&r.hostname)?,
        path: path_modifier(&r.path)?,
    })
}

fn compile_backend(b: &pb::Backend) -> Result<Backend, RouteError> {
    let label = format!("{}/{}", b.namespace, b.name);
    if b.weight > MAX_WEIGHT {
        return Err(RouteError::Weight {
            backend: label,
            weight: b.weight,
        });
    }
    let (filters, _) = compile_filters(&b.filters, true)?;
    Ok(Backend {
        hostname: b.hostname.clone(),
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        port: port("backend port", b.port)?,
        weight: b.weight,
        filters,
    })
}
