//! A service's compiled HTTPRoutes and GRPCRoutes and the choice of the rule
//! that serves a request, with the Gateway API's precedence.
//!
//! Routes arrive unordered; compilation flattens them into one entry per
//! (route, rule, match) and sorts the entries by every part of precedence
//! that does not depend on the request. What does depend on it, the
//! hostname that matched, is ranked per request: the first matching entry
//! with the most specific matching hostname wins.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use rand::Rng;
use regex::Regex;

use crate::fault::FaultPolicy;
use crate::filters::{Filters, host_without_port};
use crate::retry::RetryPolicy;

mod compile;
mod matching;

pub(crate) use compile::duration;
pub use compile::{MAX_WEIGHT, RouteError, compile_routes};
pub(crate) use matching::decode_component;

/// What routing needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The path without the query, normalized (`authz::normalize_path`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The Host header or :authority, with or without a port.
    pub host: &'a str,
    /// The service port the request was sent to.
    pub port: u16,
}

/// HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

/// Which route a rule came from, for metrics, logs and precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMeta {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// Per-request and per-attempt timeouts (`None` = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries included.
    pub request: Option<Duration>,
    /// Each attempt.
    pub backend_request: Option<Duration>,
}

/// A backend of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The backend Service's FQDN.
    pub hostname: String,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// Relative weight; 0 = never chosen.
    pub weight: u32,
    /// Filters applied only when this backend is chosen.
    pub filters: Filters,
}

/// A `RequestMirror` filter: a copy of the request goes to `backend`, its
/// answer is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub backend: Backend,
    /// Share of requests mirrored, 0-100.
    pub percent: f64,
}

/// One compiled rule: what to do with a request it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name, empty if it has none.
    pub name: String,
    pub filters: Filters,
    /// Weighted choice (`pick_backend`); none and no redirect = HTTP 500.
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    pub mirrors: Vec<Mirror>,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection<'a> {
    Matched(Selected<'a>),
    /// No route applies to this port: forward to the service itself.
    NoRoutes,
    /// Routes apply but none matches: answer 404.
    NoMatch,
}

/// The chosen rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selected<'a> {
    pub route: &'a RouteMeta,
    pub rule: &'a Rule,
    /// The PREFIX path match that matched (as written; "/" for a rule
    /// without matches), for prefix rewrites and redirects.
    pub matched_prefix: Option<&'a str>,
}

/// A compiled path match.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Exact(String),
    /// As written ("/foo" or "/foo/"); matched on whole segments.
    Prefix(String),
    Regex(Regex),
}

/// A compiled header or query parameter value match.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

/// One `Match` of a rule.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    pub(crate) path: PathMatch,
    /// Lower-cased names.
    pub(crate) headers: Vec<(http::HeaderName, ValueMatch)>,
    pub(crate) query: Vec<(String, ValueMatch)>,
    pub(crate) method: Option<Method>,
}

/// A route's hostnames, lower-cased; a wildcard is kept as ".example.com".
#[derive(Debug, Clone)]
pub(crate) struct Hostnames {
    pub(crate) exact: Vec<String>,
    pub(crate) wildcard_suffixes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub(crate) meta: RouteMeta,
    pub(crate) hostnames: Hostnames,
    /// Empty = every port.
    pub(crate) ports: Vec<u16>,
    pub(crate) rules: Vec<Arc<Rule>>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) route: usize,
    pub(crate) rule: usize,
    pub(crate) matcher: Match,
}

/// A service's routes, ready for `select`.
#[derive(Debug, Default)]
pub struct Table {
    pub(crate) routes: Vec<CompiledRoute>,
    /// Sorted by the request-independent parts of precedence.
    pub(crate) entries: Vec<Entry>,
}

/// Hostname specificity of a match: an exact name beats any wildcard, a
/// longer name beats a shorter one, and any hostname beats none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HostRank {
    exact_len: usize,
    wildcard_len: usize,
}

impl Table {
    /// True when the service has no routes at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Picks the rule that serves `req` (see the module docs for the
    /// precedence).
    pub fn select(&self, req: &RequestHead) -> Selection<'_> {
        let host = host_without_port(req.host).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        // Per route: does it apply to this port, and how well does its
        // hostname match (None = it does not).
        let mut any_for_port = false;
        let ranks: Vec<Option<HostRank>> = self
            .routes
            .iter()
            .map(|r| {
                if !r.ports.is_empty() && !r.ports.contains(&req.port) {
                    return None;
                }
                any_for_port = true;
                host_rank(&r.hostnames, host)
            })
            .collect();
        if !any_for_port {
            return Selection::NoRoutes;
        }
        let mut best: Option<(HostRank, &Entry)> = None;
        for entry in &self.entries {
            let Some(rank) = ranks[entry.route] else {
                continue;
            };
            if let Some((best_rank, _)) = best
                && rank <= best_rank
            {
                continue;
            }
            if matching::matches(&entry.matcher, req) {
                best = Some((rank, entry));
            }
        }
        match best {
            None => Selection::NoMatch,
            Some((_, entry)) => {
                let route = &self.routes[entry.route];
                Selection::Matched(Selected {
                    route: &route.meta,
                    rule: &route.rules[entry.rule],
                    matched_prefix: match &entry.matcher.path {
                        PathMatch::Prefix(p) => Some(p.as_str()),
                        _ => None,
                    },
                })
            }
        }
    }
}

fn host_rank(h: &Hostnames, host: &str) -> Option<HostRank> {
    if h.exact.is_empty() && h.wildcard_suffixes.is_empty() {
        return Some(HostRank {
            exact_len: 0,
            wildcard_len: 0,
        });
    }
    let mut best: Option<HostRank> = None;
    for name in &h.exact {
        if name == host {
            best = best.max(Some(HostRank {
                exact_len: name.len(),
                wildcard_len: 0,
            }));
        }
    }
    for suffix in &h.wildcard_suffixes {
        // "*.example.com" matches one or more labels before ".example.com".
        if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
            best = best.max(Some(HostRank {
                exact_len: 0,
                wildcard_len: suffix.len() + 1,
            }));
        }
    }
    best
}

/// Orders entries by the request-independent precedence: path (exact, then
/// regex, then prefix; longer first), method, more header matches, more
/// query matches, older route, namespace/name, then rule and match order.
pub(crate) fn precedence(routes: &[CompiledRoute], a: &Entry, b: &Entry) -> Ordering {
    fn path_key(p: &PathMatch) -> (u8, usize) {
        match p {
            PathMatch::Exact(v) => (3, v.len()),
            PathMatch::Regex(r) => (2, r.as_str().len()),
            PathMatch::Prefix(v) => (1, v.trim_end_matches('/').len()),
        }
    }
    let (ra, rb) = (&routes[a.route].meta, &routes[b.route].meta);
    path_key(&b.matcher.path)
        .cmp(&path_key(&a.matcher.path))
        .then_with(|| b.matcher.method.is_some().cmp(&a.matcher.method.is_some()))
        .then_with(|| b.matcher.headers.len().cmp(&a.matcher.headers.len()))
        .then_with(|| b.matcher.query.len().cmp(&a.matcher.query.len()))
        .then_with(|| ra.created.cmp(&rb.created))
        .then_with(|| ra.namespace.cmp(&rb.namespace))
        .then_with(|| ra.name.cmp(&rb.name))
        .then_with(|| a.route.cmp(&b.route))
        .then_with(|| a.rule.cmp(&b.rule))
}

/// Weighted choice among a rule's backends; weight 0 is never chosen and a
/// rule whose weights are all 0 (or that has no backends) gets `None`.
pub fn pick_backend<'a>(rule: &'a Rule, rng: &mut impl Rng) -> Option<&'a Backend> {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for b in &rule.backends {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests;
