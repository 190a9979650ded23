//! Forwarding to endpoints: pooled HBONE to the endpoint's ztunnel with the
//! waypoint's own identity (expected peer: the endpoint workload's identity,
//! authority `endpoint_ip:target_port`), and over each CONNECT stream an HTTP
//! client connection. HTTP/1.1 connections are kept alive and reused per
//! endpoint; HTTP/2 is one multiplexed connection per endpoint. A tunnel is
//! opened per connection, never per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
        source: hyper::Error,
    },
    #[error("request to {endpoint}: {source}")]
    Request {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
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
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
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
    ) -> Result<Response<Incoming>, UpstreamError> {
        let conns = self.conns(endpoint.addr);
        let addr = endpoint.addr;
        let request_err = |e| UpstreamError::Request {
            endpoint: addr,
            source: e,
        };
        if h2 {
            let sender = lock(&conns.h2).clone().filter(|s| !s.is_closed());
            let mut sender = match sender {
                Some(s) => s,
                None => {
                    let s = self.open_h2(endpoint).await?;
                    *lock(&conns.h2) = Some(s.clone());
                    s
                }
            };
            sender.ready().await.map_err(request_err)?;
            return sender.send_request(req).await.map_err(request_err);
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
        sender.ready().await.map_err(request_err)?;
        let response = sender.send_request(req);
        // The connection becomes ready again once this response's body is
        // read; it waits in the idle list until then.
        {
            let mut idle = lock(&conns.idle_h1);
            if idle.len() < MAX_IDLE_H1 {
                idle.push(sender);
            }
        }
        response.await.map_err(request_err)
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
                    source: e,
                })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn open_h2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let tunnel = self.tunnel(endpoint).await?;
        let io = TokioIo::new(StreamIo::from_tunnel(tunnel));
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake {
                endpoint: endpoint.addr,
                source: e,
            })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }
}
