//! `ambit app http-client`: sends requests over one kept-alive connection
//! (HTTP/1.1, or HTTP/2 with prior knowledge), reconnecting after a failure,
//! and reports each response's status, the backend that answered and the
//! latency.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::APP_HEADER;
use super::tally::{Outcome, Summary};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--url {0:?}: need http://HOST[:PORT]/PATH")]
    BadUrl(String),
    #[error("--header {0:?}: need NAME:VALUE with a valid name and value")]
    BadHeader(String),
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub url: Uri,
    pub method: Method,
    /// Requests to send.
    pub count: u64,
    /// The interval between request starts (zero: back to back).
    pub every: Duration,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub h2c: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per request, from sending to the end of the body.
    pub timeout: Duration,
}

/// Checks `url` is `http://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<Uri, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(ClientError::BadUrl(url.into()));
    }
    Ok(uri)
}

/// Parses `NAME:VALUE`.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), ClientError> {
    let bad = || ClientError::BadHeader(text.into());
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// Runs the requests, calling `report` with each outcome as it comes, and
/// returns the summary.
pub async fn run(config: &ClientConfig, mut report: impl FnMut(&Outcome)) -> Summary {
    let mut sender: Option<Sender> = None;
    let mut outcomes = Vec::with_capacity(config.count.min(100_000) as usize);
    for _ in 0..config.count {
        let start = Instant::now();
        let result = tokio::time::timeout(config.timeout, once(config, &mut sender)).await;
        let latency = start.elapsed();
        let outcome = match result {
            Ok(Ok((status, backend, body))) => Outcome::Response {
                status,
                backend,
                latency,
                body,
            },
            Ok(Err(why)) => Outcome::Failed { why, latency },
            Err(_) => Outcome::Failed {
                why: format!("timed out after {:?}", config.timeout),
                latency,
            },
        };
        if matches!(outcome, Outcome::Failed { .. }) {
            sender = None;
        }
        report(&outcome);
        outcomes.push(outcome);
        if !config.every.is_zero() {
            tokio::time::sleep(config.every.saturating_sub(start.elapsed())).await;
        }
    }
    Summary::of(&outcomes)
}

async fn once(
    config: &ClientConfig,
    sender: &mut Option<Sender>,
) -> Result<(u16, String, String), String> {
    let usable = match sender {
        Some(Sender::H1(s)) => s.ready().await.is_ok(),
        Some(Sender::H2(s)) => s.ready().await.is_ok(),
        None => false,
    };
    if !usable {
        *sender = Some(connect(config).await?);
    }
    let authority = config.url.authority().ok_or("no authority")?.clone();
    let path = config
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let response = match sender.as_mut().ok_or("no connection")? {
        Sender::H1(s) => {
            let request = build(config, path.parse().map_err(|e| format!("{e}"))?)?;
            let mut request = request;
            request.headers_mut().insert(
                header::HOST,
                HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            );
            s.send_request(request).await
        }
        Sender::H2(s) => {
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| e.to_string())?;
            s.send_request(build(config, uri)?).await
        }
    }
    .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get(APP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {}", describe(&e)))?
        .to_bytes();
    Ok((status, backend, String::from_utf8_lossy(&body).into_owned()))
}

fn build(config: &ClientConfig, uri: Uri) -> Result<Request<Empty<Bytes>>, String> {
    let mut request = Request::builder()
        .method(config.method.clone())
        .uri(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    for (name, value) in &config.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    Ok(request)
}

async fn connect(config: &ClientConfig) -> Result<Sender, String> {
    let host = config.url.host().ok_or("no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = config.url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if config.h2c {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {}", describe(&e)))?;
        tokio::spawn(connection);
        Ok(Sender::H2(sender))
    } else {
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {}", describe(&e)))?;
        tokio::spawn(connection);
        Ok(Sender::H1(sender))
    }
}

/// The error and its causes on one line (hyper's own message is terse).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
