//! The HBONE client: a pool of mTLS HTTP/2 connections keyed as in spec 2.5,
//! each carrying up to `max_streams` CONNECT streams.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{HboneError, Tunnel, headers};
use crate::identity::Identity;
use crate::tls::{CertStore, client_config};

/// What makes two connections interchangeable (spec 2.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity we present.
    pub source: Identity,
    /// The identities the server may present; kept sorted and deduplicated.
    pub expected: Vec<Identity>,
    /// The peer's HBONE address (`ip:15008`).
    pub destination: SocketAddr,
    /// The source IP the connection is dialled from, when it matters.
    pub source_ip: Option<IpAddr>,
}

impl PoolKey {
    pub fn new(
        source: Identity,
        mut expected: Vec<Identity>,
        destination: SocketAddr,
        source_ip: Option<IpAddr>,
    ) -> Self {
        expected.sort();
        expected.dedup();
        PoolKey {
            source,
            expected,
            destination,
            source_ip,
        }
    }
}

/// Opens the TCP connection to a peer: ztunnel supplies one that marks its
/// sockets so they are not captured again.
pub trait Dialer: Send + Sync + std::fmt::Debug + 'static {
    fn dial(
        &self,
        destination: SocketAddr,
        source_ip: Option<IpAddr>,
    ) -> BoxFuture<'_, std::io::Result<TcpStream>>;
}

/// Plain `connect` with a timeout.
#[derive(Debug, Default)]
pub struct PlainDialer;

impl Dialer for PlainDialer {
    fn dial(
        &self,
        destination: SocketAddr,
        _source_ip: Option<IpAddr>,
    ) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(destination))
    }
}

/// HTTP/2 settings of the client side (spec 2.2).
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
    /// Data queued per stream before the sender waits. Local only (not a wire
    /// setting); it bounds memory: 8 busy streams at 4 MiB each were most of
    /// the client's footprint.
    pub max_send_buffer: usize,
    pub max_streams: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 1 << 20,
            max_header_list_size: 16 << 10,
            max_send_buffer: 1 << 20,
            max_streams: 100,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug)]
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
}

/// Holds one stream's place on a pooled connection.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    active: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A CONNECT to send: the target and the extra headers.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub authority: SocketAddr,
    pub headers: HeaderMap,
}

#[derive(Debug)]
pub struct Pool {
    store: Arc<CertStore>,
    dialer: Arc<dyn Dialer>,
    settings: ClientSettings,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
}

impl Pool {
    pub fn new(
        store: Arc<CertStore>,
        dialer: Arc<dyn Dialer>,
        settings: ClientSettings,
    ) -> Arc<Self> {
        Arc::new(Pool {
            store,
            dialer,
            settings,
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a CONNECT stream to `key.destination`, reusing a pooled connection
    /// with room for another stream or dialling a new one. Returns the tunnel
    /// and the response headers.
    pub async fn connect(
        &self,
        key: &PoolKey,
        req: ConnectRequest,
    ) -> Result<(Tunnel, HeaderMap), HboneError> {
        if let Some((conn, slot)) = self.checkout(key) {
            match self.request(&conn, slot, key, req.clone()).await {
                Err(HboneError::Stream(e)) if not_processed(&e) => {
                    // The peer is closing this connection (a draining proxy's
                    // GOAWAY) and never saw the request: one more try on a
                    // new connection, so a peer's hand-over fails nothing.
                    conn.closed.store(true, Ordering::Release);
                    tracing::debug!(destination = %key.destination, error = %e, "pooled HBONE connection going away; retrying on a new one");
                }
                done => return done,
            }
        }
        let (conn, slot) = self.open(key).await?;
        self.request(&conn, slot, key, req).await
    }

    async fn request(
        &self,
        conn: &Conn,
        slot: StreamSlot,
        key: &PoolKey,
        req: ConnectRequest,
    ) -> Result<(Tunnel, HeaderMap), HboneError> {
        let mut send = conn.send.clone();
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(headers::authority(req.authority))
            .body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))?;
        *request.headers_mut() = req.headers;
        let dst = key.destination;
        let send_ready = async {
            send = send.ready().await?;
            send.send_request(request, false)
        };
        let (response, stream) = send_ready.await.map_err(|e| {
            conn.closed.store(true, Ordering::Release);
            HboneError::Stream(e)
        })?;
        let response = response.await.map_err(HboneError::Stream)?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(HboneError::Refused {
                destination: dst,
                status,
            });
        }
        let (parts, recv) = response.into_parts();
        Ok((
            Tunnel {
                send: stream,
                recv,
                _slot: Some(slot),
            },
            parts.headers,
        ))
    }

    /// Number of open pooled connections (for metrics and tests).
    pub fn connections(&self) -> usize {
        let conns = lock(&self.conns);
        conns
            .values()
            .flatten()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .count()
    }

    /// Drops idle and closed connections; run periodically.
    pub fn sweep(&self) {
        let idle = self.settings.idle_timeout;
        let mut conns = lock(&self.conns);
        conns.retain(|_, list| {
            list.retain(|c| {
                !c.closed.load(Ordering::Acquire)
                    && (c.active.load(Ordering::Acquire) > 0 || lock(&c.last_used).elapsed() < idle)
            });
            !list.is_empty()
        });
    }

    fn checkout(&self, key: &PoolKey) -> Option<(Arc<Conn>, StreamSlot)> {
        let mut conns = lock(&self.conns);
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Acquire));
        let max = self.settings.max_streams;
        for conn in list.iter() {
            // Reserve the slot atomically so concurrent checkouts never exceed the cap.
            let reserved = conn
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n + 1 < max).then_some(n + 1)
                })
                .is_ok();
            if reserved {
                *lock(&conn.last_used) = Instant::now();
                return Some((
                    conn.clone(),
                    StreamSlot {
                        active: conn.active.clone(),
                    },
                ));
            }
        }
        None
    }

    async fn open(&self, key: &PoolKey) -> Result<(Arc<Conn>, StreamSlot), HboneError> {
        let dst = key.destination;
        let tcp = tokio::time::timeout(
            self.settings.connect_timeout,
            self.dialer.dial(dst, key.source_ip),
        )
        .await
        .map_err(|_| HboneError::ConnectTimeout(dst))?
        .map_err(|e| HboneError::Connect {
            addr: dst,
            source: e,
        })?;
        let _ = tcp.set_nodelay(true);
        let config = client_config(
            self.store.clone(),
            self.store.roots().clone(),
            key.source.clone(),
            key.expected.clone(),
        );
        // No SNI is sent; the name only satisfies the API.
        let name = rustls_pki_types::ServerName::IpAddress(dst.ip().into());
        let tls = tokio::time::timeout(
            self.settings.connect_timeout,
            TlsConnector::from(config).connect(name, super::buffered(tcp)),
        )
        .await
        .map_err(|_| HboneError::HandshakeTimeout(dst))?
        .map_err(|e| HboneError::Tls {
            addr: dst,
            source: e,
        })?;
        if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            return Err(HboneError::Alpn(dst));
        }
        let s = &self.settings;
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_frame_size(s.max_frame_size)
            .max_header_list_size(s.max_header_list_size)
            .enable_push(false)
            .max_send_buffer_size(s.max_send_buffer)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| HboneError::H2Handshake {
                addr: dst,
                source: e,
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let (interval, timeout) = (s.ping_interval, s.ping_timeout);
        let closed_flag = closed.clone();
        tokio::spawn(async move {
            let keepalive = async move {
                let Some(mut ping) = ping else {
                    return std::future::pending::<()>().await;
                };
                loop {
                    tokio::time::sleep(interval).await;
                    match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                r = &mut connection => {
                    if let Err(error) = r {
                        tracing::debug!(%dst, %error, "HBONE connection ended");
                    }
                }
                _ = keepalive => tracing::warn!(%dst, "HBONE peer stopped answering pings; closing"),
            }
            closed_flag.store(true, Ordering::Release);
        });
        let conn = Arc::new(Conn {
            send,
            active: Arc::new(AtomicUsize::new(1)),
            closed,
            last_used: Mutex::new(Instant::now()),
        });
        let slot = StreamSlot {
            active: conn.active.clone(),
        };
        lock(&self.conns)
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        Ok((conn, slot))
    }
}

/// Whether a stream failed because the peer refused it unprocessed: a
/// GOAWAY that left it out, or REFUSED_STREAM (RFC 9113, 8.7), so that
/// sending it again cannot do anything twice.
fn not_processed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        format!("spiffe://cluster.local/ns/default/sa/{s}")
            .parse()
            .unwrap()
    }

    #[test]
    fn pool_keys_ignore_the_order_of_expected_identities() {
        let dst: SocketAddr = "10.0.0.2:15008".parse().unwrap();
        let a = PoolKey::new(id("a"), vec![id("x"), id("y")], dst, None);
        let b = PoolKey::new(id("a"), vec![id("y"), id("x"), id("y")], dst, None);
        assert_eq!(a, b);
    }

    #[test]
    fn pool_keys_separate_what_must_not_share_a_connection() {
        let dst: SocketAddr = "10.0.0.2:15008".parse().unwrap();
        let base = PoolKey::new(id("a"), vec![id("x")], dst, None);
        let variants = [
            PoolKey::new(id("b"), vec![id("x")], dst, None),
            PoolKey::new(id("a"), vec![id("z")], dst, None),
            PoolKey::new(
                id("a"),
                vec![id("x")],
                "10.0.0.3:15008".parse().unwrap(),
                None,
            ),
            PoolKey::new(
                id("a"),
                vec![id("x")],
                dst,
                Some("10.0.0.9".parse().unwrap()),
            ),
        ];
        for v in variants {
            assert_ne!(base, v);
        }
    }
}
