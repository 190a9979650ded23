//! HTTPRoute filters as pure edits: header modification, redirects and URL
//! rewrites. Everything here was validated when the config was compiled
//! (header names and values parse, a redirect has at most one path modifier),
//! so applying a filter cannot fail.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::route::RequestHead;

/// The filters of a rule or of a backend, at most one of each kind (the
/// Gateway API forbids repeating them; `RequestMirror` lives in
/// `Rule::mirrors`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// When set, the waypoint answers with this redirect and forwards nothing.
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
    }
}

/// A compiled `RequestHeaderModifier`/`ResponseHeaderModifier`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path (the query is kept).
    Full(String),
    /// Replace the part matched by the rule's PREFIX path match.
    Prefix(String),
}

/// A compiled `RequestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// "http" or "https"; `None` = the request's.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

/// A compiled `URLRewrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// Applies a header modifier: `set` replaces every value of a name, `add`
/// appends a value, then `remove` deletes names (so a name both added and
/// removed ends up absent, as written last).
pub fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// The status and `Location` of a redirect. The port follows the Gateway
/// API: the redirect's port if set; otherwise the new scheme's well-known
/// port when the scheme changes; otherwise the request's port. Well-known
/// ports (80 for http, 443 for https) are left out of `Location`. The query
/// is kept.
pub fn redirect(
    r: &Redirect,
    req: &RequestHead,
    scheme: &str,
    matched_prefix: Option<&str>,
) -> (StatusCode, String) {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host = match &r.hostname {
        Some(h) => h.as_str(),
        None => host_without_port(req.host),
    };
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => well_known_port(s),
        (None, None) => req.port,
    };
    let path = match &r.path {
        None => req.path.to_string(),
        Some(m) => modify_path(m, req.path, matched_prefix),
    };
    let mut location = String::with_capacity(host.len() + path.len() + 16);
    location.push_str(new_scheme);
    location.push_str("://");
    if host.contains(':') && !host.starts_with('[') {
        location.push('[');
        location.push_str(host);
        location.push(']');
    } else {
        location.push_str(host);
    }
    if port != well_known_port(new_scheme) {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&path);
    if let Some(q) = req.query {
        location.push('?');
        location.push_str(q);
    }
    (r.status, location)
}

/// Rewrites a request's path and host. Returns the new path-and-query (the
/// query is kept verbatim) and the new host (unchanged when the rewrite has
/// no hostname).
pub fn rewrite(
    r: &Rewrite,
    path_and_query: &str,
    host: &str,
    matched_prefix: Option<&str>,
) -> (String, String) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut new = match &r.path {
        None => path.to_string(),
        Some(m) => modify_path(m, path, matched_prefix),
    };
    if let Some(q) = query {
        new.push('?');
        new.push_str(q);
    }
    let host = r.hostname.clone().unwrap_or_else(|| host.to_string());
    (new, host)
}

fn modify_path(m: &PathModifier, path: &str, matched_prefix: Option<&str>) -> String {
    match m {
        PathModifier::Full(p) => p.clone(),
        // Compilation only accepts a prefix modifier on rules whose matches
        // are all prefix matches, so the prefix is known; if it is not, the
        // path is left alone rather than guessed at.
        PathModifier::Prefix(replacement) => match matched_prefix {
            Some(prefix) => replace_prefix(path, prefix, replacement),
            None => path.to_string(),
        },
    }
}

/// Replaces the path-segment prefix `prefix` of `path` by `replacement`:
/// "/foo" -> "/bar" turns "/foo/x" into "/bar/x"; "/foo" -> "/" turns
/// "/foo/x" into "/x" and "/foo" into "/".
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let replacement = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    if !rest.is_empty() && !rest.starts_with('/') && !out.ends_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    } else if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// The host of a Host header or authority, without its port (IPv6 literals
/// keep their brackets).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn well_known_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

#[cfg(test)]
mod tests;
