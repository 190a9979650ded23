//! Request and response header rules the waypoint applies to every request:
//! hop-by-hop headers stripped, `x-forwarded-client-cert` replaced by the
//! caller's proven identity (Envoy's format), `x-forwarded-proto`, a request
//! id, and W3C trace context continued with the waypoint's own span.

use std::fmt::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, including any
/// the `Connection` header names. `te: trailers` survives: gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too; collect them first
    // (rare, so the allocation happens only when the header is there).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            if n != header::TE {
                headers.remove(n);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for n in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The XFCC value for a caller, in Envoy's format:
/// `By=<waypoint SPIFFE URI>;Hash=<hex SHA-256 of the caller's leaf DER>;URI=<caller SPIFFE URI>`.
pub fn xfcc_value(by: &str, caller_cert_sha256: &[u8; 32], caller_uri: &str) -> String {
    let mut v = String::with_capacity(by.len() + caller_uri.len() + 80);
    v.push_str("By=");
    v.push_str(by);
    v.push_str(";Hash=");
    for b in caller_cert_sha256 {
        let _ = write!(v, "{b:02x}");
    }
    v.push_str(";URI=");
    v.push_str(caller_uri);
    v
}

/// The hex SHA-256 of a certificate's DER encoding.
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// W3C trace context of one request as the waypoint forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span (the parent of ours), if the caller sent one.
    pub parent_id: Option<[u8; 8]>,
    /// The waypoint's span: the parent id it forwards.
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex_into<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` header (version 00, or a later version read as 00).
/// Returns (trace id, parent id, flags); `None` when it is not valid, in
/// which case a new trace starts (W3C trace context, section 4.3).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id: [u8; 16] = hex_into(trace)?;
    let parent_id: [u8; 8] = hex_into(parent)?;
    let [flags]: [u8; 1] = hex_into(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

impl TraceContext {
    /// Continues the caller's trace with a new span, or starts a trace.
    pub fn continue_or_start(headers: &HeaderMap, rng: &mut impl rand::Rng) -> TraceContext {
        let mut span_id = [0u8; 8];
        while span_id == [0; 8] {
            rng.fill(&mut span_id);
        }
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                flags,
            },
            None => {
                let mut trace_id = [0u8; 16];
                while trace_id == [0; 16] {
                    rng.fill(&mut trace_id);
                }
                TraceContext {
                    trace_id,
                    parent_id: None,
                    span_id,
                    flags: 1,
                }
            }
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` to forward: our span as the parent.
    pub fn header_value(&self) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        );
        HeaderValue::from_str(&v).expect("hex is a valid header value")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A new request id: 128 random bits formatted as a UUID (version 4).
pub fn new_request_id(rng: &mut impl rand::Rng) -> HeaderValue {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    let v = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    HeaderValue::from_str(&v).expect("hex is a valid header value")
}

/// Whether a request is gRPC: its content type is `application/grpc` or a
/// subtype (`application/grpc+proto`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn xfcc_is_envoys_format() {
        let hash = cert_sha256(b"leaf");
        let v = xfcc_value(
            "spiffe://cluster.local/ns/default/sa/waypoint",
            &hash,
            "spiffe://cluster.local/ns/default/sa/client",
        );
        assert_eq!(
            v,
            format!(
                "By=spiffe://cluster.local/ns/default/sa/waypoint;Hash={};URI=spiffe://cluster.local/ns/default/sa/client",
                hex(&hash)
            )
        );
        assert_eq!(hex(&hash).len(), 64);
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut rng = rand::rng();
        let t = TraceContext::continue_or_start(&h, &mut rng);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let out = t.header_value();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!out.contains("00f067aa0ba902b7"));
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let t = TraceContext::continue_or_start(&HeaderMap::new(), &mut rand::rng());
        assert_eq!(t.parent_id, None);
        assert_ne!(t.trace_id, [0; 16]);
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        let mut h = HeaderMap::new();
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }
}
