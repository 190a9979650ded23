//! Forwarding to endpoints: pooled HBONE to the endpoint's ztunnel with the
//! waypoint's own identity (expected peer: the endpoint workload's identity,
//! authority `endpoint_ip:target_port`), and over each CONNECT stream an HTTP
//! client connection. HTTP/1.1 connections (hyper) are kept alive and reused
//! per endpoint; HTTP/2 (the h2 crate, see [`h2`]) is one multiplexed
//! connection per endpoint. A tunnel is opened per connection, never per
//! request.

mod h2;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_core::Identity;
use mesh_core::hbone::{ConnectRequest, HboneError, Pool, PoolKey, Tunnel};

use crate::discovery::Endpoint;
use crate::stream_io::StreamIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What is sent upstream: the caller's body, or a buffered copy (retries, mirrors).
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// HTTP/1.1 connections kept per endpoint beyond the ones in use.
const MAX_IDLE_H1: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("HBONE to {endpoint}: {source}")]
    Tunnel {
        endpoint: SocketAddr,
        source: HboneError,
    },
    #[error("HTTP handshake with {endpoint} over HBONE: {source}")]
    Handshake {
        endpoint: SocketAddr,
        source: BoxError,
    },
    #[error("request to {endpoint}: {source}")]
    Request {
        endpoint: SocketAddr,
        source: BoxError,
    },
}

/// An endpoint's response body, from an HTTP/1.1 connection or an HTTP/2 stream.
#[derive(Debug)]
pub enum EndpointBody {
    Http1(Incoming),
    Http2(h2::ResponseBody),
}

impl Body for EndpointBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            EndpointBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            EndpointBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EndpointBody::Http1(b) => b.is_end_stream(),
            EndpointBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EndpointBody::Http1(b) => b.size_hint(),
            EndpointBody::Http2(b) => b.size_hint(),
        }
    }
}

impl UpstreamError {
    /// Istio's `response_flags` for this failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::Tunnel { .. } | UpstreamError::Handshake { .. } => "UF",
            UpstreamError::Request { .. } => "UC",
        }
    }

    /// Whether the endpoint could not be reached at all (vs. failing a request).
    pub fn is_connect_failure(&self) -> bool {
        !matches!(self, UpstreamError::Request { .. })
    }
}

#[derive(Debug, Default)]
struct EndpointConns {
    idle_h1: Mutex<Vec<http1::SendRequest<UpstreamBody>>>,
    h2: Mutex<Option<h2::Connection>>,
}

#[derive(Debug)]
pub struct Upstream {
    pool: Arc<Pool>,
    identity: Identity,
    /// The destination ztunnel's HBONE port (15008; tests move it).
    hbone_port: u16,
    conns: Mutex<HashMap<SocketAddr, Arc<EndpointConns>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upstream {
    pub fn new(pool: Arc<Pool>, identity: Identity, hbone_port: u16) -> Self {
        Upstream {
            pool,
            identity,
            hbone_port,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Opens a CONNECT stream to the endpoint through its ztunnel.
    pub async fn tunnel(&self, endpoint: &Endpoint) -> Result<Tunnel, UpstreamError> {
        let key = PoolKey::new(
            self.identity.clone(),
            vec![endpoint.workload.identity.clone()],
            SocketAddr::new(endpoint.addr.ip(), self.hbone_port),
            None,
        );
        let (tunnel, _) = self
            .pool
            .connect(
                &key,
                ConnectRequest {
                    authority: endpoint.addr,
                    headers: HeaderMap::new(),
                },
            )
            .await
            .map_err(|e| UpstreamError::Tunnel {
                endpoint: endpoint.addr,
                source: e,
            })?;
        Ok(tunnel)
    }

    fn conns(&self, endpoint: SocketAddr) -> Arc<EndpointConns> {
        lock(&self.conns).entry(endpoint).or_default().clone()
    }

    /// Sends one request to `endpoint` over HTTP/2 (`h2`) or HTTP/1.1.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        h2: bool,
        req: Request<UpstreamBody>,
    ) -> Result<Response<EndpointBody>, UpstreamError> {
        let conns = self.conns(endpoint.addr);
        let addr = endpoint.addr;
        let request_err = |e: BoxError| UpstreamError::Request {
            endpoint: addr,
            source: e,
        };
        if h2 {
            let conn = lock(&conns.h2).clone().filter(|c| !c.is_closed());
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = self.open_h2(endpoint).await?;
                    *lock(&conns.h2) = Some(c.clone());
                    c
                }
            };
            let resp = conn.send(req).await.map_err(|e| request_err(e.into()))?;
            return Ok(resp.map(EndpointBody::Http2));
        }
        let reused = {
            let mut idle = lock(&conns.idle_h1);
            idle.retain(|s| !s.is_closed());
            idle.iter()
                .position(|s| s.is_ready())
                .map(|i| idle.swap_remove(i))
        };
        let mut sender = match reused {
            Some(s) => s,
            None => self.open_h1(endpoint).await?,
        };
        sender.ready().await.map_err(|e| request_err(e.into()))?;
        let response = sender.send_request(req);
        // The connection becomes ready again once this response's body is
        // read; it waits in the idle list until then.
        {
            let mut idle = lock(&conns.idle_h1);
            if idle.len() < MAX_IDLE_H1 {
                idle.push(sender);
            }
        }
        let resp = response.await.map_err(|e| request_err(e.into()))?;
        Ok(resp.map(EndpointBody::Http1))
    }

    async fn open_h1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let tunnel = self.tunnel(endpoint).await?;
        let io = TokioIo::new(StreamIo::from_tunnel(tunnel));
        let (sender, conn) =
            http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Handshake {
                    endpoint: endpoint.addr,
                    source: e.into(),
                })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn open_h2(&self, endpoint: &Endpoint) -> Result<h2::Connection, UpstreamError> {
        let tunnel = self.tunnel(endpoint).await?;
        h2::Connection::handshake(StreamIo::from_tunnel(tunnel))
            .await
            .map_err(|e| UpstreamError::Handshake {
                endpoint: endpoint.addr,
                source: e.into(),
            })
    }
}
