//! `ambit app http-server`: HTTP/1.1 and HTTP/2 with prior knowledge (h2c)
//! on one port. Every response carries the app's name (header and JSON body)
//! and echoes the request, so a test sees which backend answered and what a
//! proxy did to the request on the way.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::faults::Faults;
use super::{APP_HEADER, XFCC_HEADER};

/// How the server answers.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Named in every response.
    pub name: String,
    /// Serve HTTP/2 with prior knowledge only (an HTTP/1.1 request fails),
    /// so a test proves HTTP/2 reached the app end to end.
    pub h2c_only: bool,
    pub faults: Faults,
    /// Waited before every response.
    pub delay: Duration,
}

/// What the server saw, as the JSON body of every response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Echo {
    pub name: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The TCP peer (in a mesh: the local ztunnel or proxy, not the caller).
    pub peer: String,
    pub xfcc: Option<String>,
    /// Request headers, lowercase names; repeated headers joined by `, `.
    pub headers: BTreeMap<String, String>,
    pub body_bytes: usize,
    /// This request's number at this server, from 1.
    pub request: u64,
    /// Whether the server failed this request on purpose.
    pub injected_failure: bool,
}

struct State {
    config: ServerConfig,
    requests: AtomicU64,
}

/// Accepts connections until the listener fails; each connection is served
/// on its own task.
pub async fn serve(listener: TcpListener, config: ServerConfig) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if config.h2c_only {
        builder = builder.http2_only();
    }
    let state = Arc::new(State {
        config,
        requests: AtomicU64::new(0),
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, peer, state.clone()));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let index = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = request.into_parts();
    let body_bytes = match body.collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(e) => {
            eprintln!("request body from {peer}: {e}");
            0
        }
    };
    if !state.config.delay.is_zero() {
        tokio::time::sleep(state.config.delay).await;
    }
    let injected_failure = state.config.faults.fails(index, rand::random::<f64>());
    let echo = Echo {
        name: state.config.name.clone(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        version: version_name(parts.version).into(),
        peer: peer.to_string(),
        xfcc: parts
            .headers
            .get(XFCC_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        headers: header_map(&parts.headers),
        body_bytes,
        request: index,
        injected_failure,
    };
    let status = if injected_failure {
        state.config.faults.status
    } else {
        StatusCode::OK
    };
    Ok(respond(status, &echo))
}

fn respond(status: StatusCode, echo: &Echo) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(echo).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(name) = header::HeaderValue::from_str(&echo.name) {
        headers.insert(APP_HEADER, name);
    }
    response
}

pub fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn header_map(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}
