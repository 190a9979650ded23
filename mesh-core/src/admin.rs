//! The small HTTP/1.1 server behind the admin, metrics and readiness ports.
//! Each binary supplies a router; this module owns the accept loop, drain and
//! the shared responses (metrics, readiness, log level).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::drain::DrainWatcher;
use crate::readiness::Readiness;
use crate::telemetry::{self, LogControl};

pub type AdminResponse = Response<Full<Bytes>>;

/// Admin requests bodies are small; anything larger is refused.
const MAX_BODY: usize = 64 * 1024;

/// A parsed admin request.
#[derive(Debug)]
pub struct AdminRequest {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Router = Arc<dyn Fn(AdminRequest) -> BoxFuture<'static, AdminResponse> + Send + Sync>;

/// Serves until drain starts; open admin connections are then dropped.
pub async fn serve(listener: TcpListener, router: Router, drain: DrainWatcher) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = drain.draining() => return,
        };
        let router = router.clone();
        let watcher = drain.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(handle(req, router).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = watcher.forced() => {}
            }
        });
    }
}

async fn handle(req: http::Request<Incoming>, router: Router) -> AdminResponse {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
    };
    let query = parts.uri.query().map(parse_query).unwrap_or_default();
    router(AdminRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body,
    })
    .await
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn text(status: StatusCode, body: impl Into<String>) -> AdminResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("static response")
}

pub fn json(value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// `/metrics` and `/stats/prometheus`.
pub fn metrics(registry: &Registry, req: &AdminRequest) -> AdminResponse {
    let accept = req
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, telemetry::content_type(accept))
        .body(Full::new(Bytes::from(telemetry::render(registry))))
        .expect("static response")
}

/// `/healthz/ready`: 200 `ready`, or 500 naming what is pending.
pub fn readiness(r: &Readiness) -> AdminResponse {
    let pending = r.pending();
    if pending.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not ready, pending: {}\n", pending.join(", ")),
        )
    }
}

/// `/logging` (POST): no query prints the level; `?level=` sets; `?reset` restores.
pub fn logging(control: &LogControl, req: &AdminRequest) -> AdminResponse {
    if req.method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let result = if req.query.contains_key("reset") {
        control.reset()
    } else if let Some(level) = req.query.get("level") {
        control.set(level)
    } else {
        Ok(control.current())
    };
    match result {
        Ok(level) => text(StatusCode::OK, format!("current log level is {level}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query("level=ztunnel%3Ddebug%2Ch2%3Dinfo&reset&x=a+b&bad=%zz");
        assert_eq!(q["level"], "ztunnel=debug,h2=info");
        assert_eq!(q["reset"], "");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
    }
}
