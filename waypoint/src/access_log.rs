//! One access-log line per request, key=value, on the `access` log target
//! (enabled at info; `RUST_LOG=access=off` turns it off).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one line reports.
#[derive(Debug)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub grpc_status: Option<&'a str>,
    pub flags: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub source_principal: &'a str,
    pub destination_principal: Option<String>,
    pub route: Option<&'a str>,
    pub decision: &'a str,
    pub trace_id: &'a [u8; 16],
    pub client: Option<SocketAddr>,
}

/// Renders an entry (without writing it): `start=... method=GET ...`.
/// Values with spaces or quotes are quoted so the line stays parseable.
pub fn render(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(384);
    let start = e
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let _ = write!(s, "start_ms={start} method={}", quoted(e.method));
    let _ = write!(
        s,
        " authority={} path={}",
        quoted(e.authority),
        quoted(e.path)
    );
    let _ = write!(s, " protocol={} status={}", e.protocol, e.status);
    if let Some(g) = e.grpc_status {
        let _ = write!(s, " grpc_status={}", quoted(g));
    }
    let _ = write!(
        s,
        " flags={} bytes_in={} bytes_out={} duration_us={}",
        e.flags,
        e.request_bytes,
        e.response_bytes,
        e.duration.as_micros()
    );
    match e.upstream {
        Some(u) => {
            let _ = write!(s, " upstream={u}");
        }
        None => s.push_str(" upstream=-"),
    }
    if let Some(c) = e.client {
        let _ = write!(s, " client={c}");
    }
    let _ = write!(
        s,
        " src={} dst={} route={} decision={} trace_id=",
        quoted(or_dash(e.source_principal)),
        quoted(e.destination_principal.as_deref().unwrap_or("-")),
        quoted(e.route.unwrap_or("-")),
        quoted(e.decision),
    );
    for b in e.trace_id {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn quoted(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=')
    {
        return v.into();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q.into()
}

/// Writes the line for `e`, if the access log is enabled.
pub fn line(e: &Entry<'_>) {
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        tracing::info!(target: "access", "{}", render(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_every_field_and_quotes_odd_values() {
        let e = Entry {
            start: UNIX_EPOCH + Duration::from_millis(1500),
            method: "GET",
            authority: "echo.default",
            path: "/a b\"c",
            protocol: "HTTP/1.1",
            status: 200,
            grpc_status: None,
            flags: "-",
            request_bytes: 3,
            response_bytes: 10,
            duration: Duration::from_micros(250),
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            source_principal: "spiffe://cluster.local/ns/a/sa/b",
            destination_principal: None,
            route: Some("default/r"),
            decision: "allow",
            trace_id: &[0xab; 16],
            client: None,
        };
        let l = render(&e);
        assert_eq!(
            l,
            "start_ms=1500 method=GET authority=echo.default path=\"/a b\\\"c\" protocol=HTTP/1.1 status=200 flags=- bytes_in=3 bytes_out=10 duration_us=250 upstream=10.0.0.1:8080 src=spiffe://cluster.local/ns/a/sa/b dst=- route=default/r decision=allow trace_id=abababababababababababababababab"
        );
    }
}
