//! Whether one compiled `Match` matches a request.

use super::{Match, PathMatch, RequestHead, ValueMatch};
use crate::authz::hex;

pub(super) fn matches(m: &Match, req: &RequestHead) -> bool {
    if !path_matches(&m.path, req.path) {
        return false;
    }
    if let Some(method) = &m.method
        && method != req.method
    {
        return false;
    }
    for (name, want) in &m.headers {
        let mut values = req.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return false;
        }
        // Repeated headers are compared as one comma-joined value, the
        // HTTP meaning of a repeated field.
        let joined = values
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        if !value_matches(want, &joined) {
            return false;
        }
    }
    for (name, want) in &m.query {
        match query_value(req.query, name) {
            Some(v) if value_matches(want, &v) => {}
            _ => return false,
        }
    }
    true
}

/// Prefix matches work on whole path segments: "/foo" (or "/foo/") matches
/// "/foo", "/foo/" and "/foo/bar" but not "/foobar".
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(v) => v == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::Regex(r) => r.is_match(path),
    }
}

fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Exact(v) => v == value,
        ValueMatch::Regex(r) => r.is_match(value),
    }
}

/// The first value of query parameter `name` (case-sensitive), percent- and
/// plus-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k) == name).then(|| decode_component(v))
    })
}

/// A query-string component with `%XX` escapes and `+` decoded; an invalid
/// escape is kept as it is.
pub(crate) fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
