//! Replies the waypoint makes itself (denials, missing routes, failed
//! upstreams). A gRPC caller gets HTTP 200 with `grpc-status` and
//! `grpc-message` in a trailers-only response, as gRPC clients expect.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;

/// Why the waypoint answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    BadRequest,
    /// A JWT no RequestAuthentication rule validates, with Envoy's words
    /// for why.
    Unauthenticated(&'static str),
    Denied,
    NoRoute,
    NoHealthyUpstream,
    UpstreamFailed,
    Timeout,
    /// Fault injection: the HTTP status and the gRPC status for gRPC callers.
    Fault(u16, u16),
}

impl LocalReply {
    pub fn status(self) -> StatusCode {
        match self {
            LocalReply::BadRequest => StatusCode::BAD_REQUEST,
            LocalReply::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            LocalReply::Denied => StatusCode::FORBIDDEN,
            LocalReply::NoRoute => StatusCode::NOT_FOUND,
            LocalReply::NoHealthyUpstream | LocalReply::UpstreamFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LocalReply::Timeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReply::Fault(code, _) => {
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The body text, as Envoy words it where apps and tests look for it.
    pub fn message(self) -> &'static str {
        match self {
            LocalReply::BadRequest => "bad request",
            LocalReply::Unauthenticated(why) => why,
            LocalReply::Denied => "RBAC: access denied",
            LocalReply::NoRoute => "route not found",
            LocalReply::NoHealthyUpstream => "no healthy upstream",
            LocalReply::UpstreamFailed => {
                "upstream connect error or disconnect/reset before headers"
            }
            LocalReply::Timeout => "upstream request timeout",
            LocalReply::Fault(..) => "fault filter abort",
        }
    }

    /// The gRPC status for a gRPC caller.
    pub fn grpc_status(self) -> u16 {
        match self {
            LocalReply::BadRequest => 13,
            LocalReply::Unauthenticated(_) => 16,
            LocalReply::Denied => 7,
            LocalReply::NoRoute => 12,
            LocalReply::NoHealthyUpstream | LocalReply::UpstreamFailed => 14,
            LocalReply::Timeout => 4,
            LocalReply::Fault(_, grpc) => grpc,
        }
    }

    /// Istio's `response_flags` value.
    pub fn response_flag(self) -> &'static str {
        match self {
            LocalReply::BadRequest | LocalReply::Unauthenticated(_) => "-",
            LocalReply::Denied => "UAEX",
            LocalReply::NoRoute => "NR",
            LocalReply::NoHealthyUpstream => "UH",
            LocalReply::UpstreamFailed => "UF",
            LocalReply::Timeout => "UT",
            LocalReply::Fault(..) => "FI",
        }
    }

    pub fn response(self, grpc: bool) -> Response<ResponseBody> {
        if grpc {
            return grpc_reply(self.grpc_status(), self.message());
        }
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain")
            .body(ResponseBody::local(self.message()))
            .expect("static response")
    }
}

/// A trailers-only gRPC response carrying `status`.
pub fn grpc_reply(status: u16, message: &str) -> Response<ResponseBody> {
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", status)
        .body(ResponseBody::empty())
        .expect("static response");
    if let Ok(v) = HeaderValue::from_str(message) {
        r.headers_mut().insert("grpc-message", v);
    }
    r
}

/// The gRPC status for an HTTP status (gRPC's HTTP-to-gRPC mapping).
pub fn http_to_grpc(code: u16) -> u16 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_is_403_or_permission_denied() {
        let r = LocalReply::Denied.response(false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let g = LocalReply::Denied.response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "7");
        assert_eq!(
            LocalReply::NoHealthyUpstream.response(true).headers()["grpc-status"],
            "14"
        );
    }

    #[test]
    fn a_refused_jwt_is_401_or_unauthenticated() {
        let r = LocalReply::Unauthenticated("Jwt is expired");
        assert_eq!(r.response(false).status(), StatusCode::UNAUTHORIZED);
        let g = r.response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "16");
        assert_eq!(g.headers()["grpc-message"], "Jwt is expired");
    }
}
