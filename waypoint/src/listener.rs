//! HBONE termination (port 15008): mTLS with the waypoint's certificate, the
//! caller's identity from its certificate, one CONNECT stream per proxied
//! connection. The CONNECT authority picks the destination (a service VIP and
//! port, or a workload's IP and port); the protocol comes from the service
//! port or is detected from the first bytes; the HTTP connection is then
//! served by hyper inside the CONNECT stream.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::Identity;
use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::headers::Forwarded;
use mesh_core::hbone::{self, Handler, HboneError, InboundRequest, Peer, ServerSettings};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::discovery::{Service, Workload};
use crate::headers;
use crate::in_connection;
use crate::metrics::{Rejection, RequestMetricsCache};
use crate::pipeline;
use crate::proxy::Proxy;
use crate::stream_io::StreamIo;
use crate::tcp;

/// How long a peer has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Who called, as proven by mTLS and told by the caller's ztunnel. Computed
/// once per HBONE connection (the XFCC value included), shared by its streams.
#[derive(Debug)]
pub struct Caller {
    pub identity: Option<Identity>,
    /// The caller's SPIFFE URI (empty if its certificate had none).
    pub uri: String,
    /// `x-forwarded-client-cert` as set on every request of this caller.
    pub xfcc: Option<HeaderValue>,
    pub peer: SocketAddr,
}

/// Where a CONNECT stream goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Service traffic: the service and the service port.
    Service(Arc<Service>, u16),
    /// Workload traffic: that pod, on that port.
    Workload(Arc<Workload>, SocketAddr),
}

impl Destination {
    /// The CONNECT authority: the address and port the caller dialled.
    pub fn addr(&self) -> (IpAddr, u16) {
        match self {
            Destination::Service(s, port) => (
                s.vips
                    .first()
                    .copied()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                *port,
            ),
            Destination::Workload(_, addr) => (addr.ip(), addr.port()),
        }
    }
}

impl StreamContext {
    /// The original client's IP: `forwarded: for=`, else the HBONE peer.
    pub fn client_ip(&self) -> IpAddr {
        self.client.map(|c| c.ip()).unwrap_or(self.caller.peer.ip())
    }
}

/// The protocol a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

/// Everything about one CONNECT stream its requests need.
#[derive(Debug)]
pub struct StreamContext {
    pub proxy: Arc<Proxy>,
    pub caller: Arc<Caller>,
    pub destination: Destination,
    /// The caller's workload, when the caller's address is a known workload.
    pub source: Option<Arc<Workload>>,
    /// The original client address from `forwarded: for=`.
    pub client: Option<SocketAddr>,
    pub downstream: Protocol,
    pub drain: DrainWatcher,
    /// The request metrics of the label sets this stream used last.
    pub request_metrics: RequestMetricsCache,
}

/// Tells the protocol from a stream's first bytes: the HTTP/2 preface, an
/// HTTP/1.x request line (`TOKEN SP`), or anything else.
pub fn detect(first: &[u8]) -> Detected {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Detected::Is(Protocol::Http2)
        } else {
            Detected::NeedMore
        };
    }
    // A method is 1-20 token characters followed by a space.
    for (i, b) in first.iter().enumerate() {
        match b {
            b' ' if i > 0 => return Detected::Is(Protocol::Http1),
            b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_' if i < 20 => {}
            _ => return Detected::Is(Protocol::Tcp),
        }
    }
    if first.len() >= 20 {
        Detected::Is(Protocol::Tcp)
    } else {
        Detected::NeedMore
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Is(Protocol),
    NeedMore,
}

/// Accepts HBONE connections until drain starts.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Arc<Proxy>,
    drain: DrainWatcher,
) {
    let settings = Arc::new(ServerSettings {
        max_header_list_size: proxy.limits.max_header_bytes as u32,
        ..ServerSettings::default()
    });
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "HBONE accept failed");
                    continue;
                }
            },
            _ = drain.draining() => return,
        };
        let (acceptor, proxy, settings, drain) = (
            acceptor.clone(),
            proxy.clone(),
            settings.clone(),
            drain.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) = serve_connection(tcp, acceptor, &settings, proxy, drain).await {
                tracing::debug!(%error, "HBONE connection ended with an error");
            }
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    settings: &ServerSettings,
    proxy: Arc<Proxy>,
    drain: DrainWatcher,
) -> Result<(), HboneError> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let addr = canonical(tcp.peer_addr().map_err(HboneError::Io)?);
    let local = canonical(tcp.local_addr().map_err(HboneError::Io)?);
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| HboneError::HandshakeTimeout(addr))?
        .map_err(|e| HboneError::Tls { addr, source: e })?;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(mesh_core::tls::ALPN_H2) {
        return Err(HboneError::Alpn(addr));
    }
    let certs = conn.peer_certificates();
    let identity = mesh_core::tls::peer_identity(certs);
    let uri = identity.as_ref().map(|i| i.to_string()).unwrap_or_default();
    let xfcc = certs.and_then(|c| c.first()).and_then(|leaf| {
        let hash = headers::cert_sha256(leaf.as_ref());
        HeaderValue::from_str(&headers::xfcc_value(&proxy.identity_uri, &hash, &uri)).ok()
    });
    let caller = Arc::new(Caller {
        identity: identity.clone(),
        uri,
        xfcc,
        peer: addr,
    });
    let peer = Peer {
        addr,
        local,
        identity,
    };
    let handler = Arc::new(ConnectionHandler {
        proxy,
        caller,
        drain: drain.clone(),
    });
    hbone::serve_h2(tls, peer, settings, handler, drain).await
}

/// Handles the CONNECT streams of one caller connection.
struct ConnectionHandler {
    proxy: Arc<Proxy>,
    caller: Arc<Caller>,
    drain: DrainWatcher,
}

impl Handler for ConnectionHandler {
    async fn handle(&self, request: InboundRequest) {
        let proxy = self.proxy.clone();
        let discovery = proxy.discovery.load();
        let authority = request.authority;
        let destination = if let Some(s) = discovery.service_at(authority) {
            Destination::Service(s.clone(), authority.port())
        } else if let Some(w) = discovery.workload_at(authority.ip()) {
            Destination::Workload(w.clone(), authority)
        } else {
            proxy.metrics.reject(Rejection::bad_authority);
            tracing::debug!(%authority, caller = %self.caller.uri, "CONNECT to an address that is neither a service VIP nor a workload here; refused");
            request.refuse(StatusCode::BAD_REQUEST);
            return;
        };
        // Only the client address is kept: the header itself goes with the request.
        let (for_ip, for_addr) = request
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .map(Forwarded::parse)
            .map_or((None, None), |f| (f.for_ip, f.for_addr));
        let source_ip = for_ip.unwrap_or(self.caller.peer.ip());
        let source = discovery.workload_at(source_ip).cloned();
        drop(discovery);
        let declared = declared_protocol(&proxy, &destination);
        if declared == Some(Protocol::Tcp) {
            let client_ip = for_ip.unwrap_or(self.caller.peer.ip());
            if tcp::authorize(&proxy, &self.caller, &destination, client_ip).is_err() {
                // A declared TCP port is decided before the tunnel opens.
                request.refuse(StatusCode::FORBIDDEN);
                return;
            }
        }
        let tunnel = match request.accept(HeaderMap::new()) {
            Ok(t) => t,
            Err(error) => {
                tracing::debug!(%error, "CONNECT stream closed before it was accepted");
                return;
            }
        };
        let mut io = StreamIo::from_tunnel(tunnel);
        let downstream = match declared {
            Some(p) => p,
            None => detect_stream(&mut io, proxy.limits.detect_timeout).await,
        };
        // Lets the HTTP connection inside react to drain itself (GOAWAY,
        // `Connection: close`), not only the HBONE connection around it.
        let drain = self.drain.clone();
        let ctx = Arc::new(StreamContext {
            proxy,
            caller: self.caller.clone(),
            destination,
            source,
            client: for_addr,
            downstream,
            drain,
            request_metrics: RequestMetricsCache::default(),
        });
        match downstream {
            Protocol::Tcp => tcp::serve(io, ctx).await,
            Protocol::Http1 | Protocol::Http2 => serve_http(io, ctx).await,
        }
    }

    fn malformed(&self, _peer: &Peer, error: &HboneError) {
        let reason = match error {
            HboneError::NotConnect(_) => Rejection::not_connect,
            _ => Rejection::bad_authority,
        };
        self.proxy.metrics.reject(reason);
    }
}

/// The protocol the service port declares, if it declares one.
fn declared_protocol(proxy: &Proxy, destination: &Destination) -> Option<Protocol> {
    let Destination::Service(service, port) = destination else {
        return None;
    };
    pipeline::port_protocol(proxy, service, *port)
}

/// Peeks at the first bytes; a caller silent past `patience` is opaque TCP.
async fn detect_stream(io: &mut StreamIo, patience: Duration) -> Protocol {
    let deadline = tokio::time::Instant::now() + patience;
    let mut want = 1;
    loop {
        let peeked = tokio::time::timeout_at(deadline, io.peek(want)).await;
        let first = match peeked {
            Ok(Ok(b)) => b,
            Ok(Err(_)) | Err(_) => return Protocol::Tcp,
        };
        if first.is_empty() {
            return Protocol::Tcp;
        }
        let (detected, seen) = (detect(first), first.len());
        match detected {
            Detected::Is(p) => return p,
            Detected::NeedMore if io.is_read_closed() => return Protocol::Tcp,
            Detected::NeedMore => want = seen + 1,
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 inside the stream until the caller closes it,
/// a limit ends it, or drain closes it gracefully.
async fn serve_http(io: StreamIo, ctx: Arc<StreamContext>) {
    let limits = ctx.proxy.limits.clone();
    let metrics = ctx.proxy.metrics.clone();
    let drain = ctx.drain.clone();
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req: http::Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(req, ctx).await) }
    });
    let io = TokioIo::new(io);
    let result = match ctx.downstream {
        Protocol::Http2 => {
            let executor = in_connection::Executor::default();
            let conn = hyper::server::conn::http2::Builder::new(executor.clone())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(limits.max_header_bytes as u32)
                .serve_connection(io, service);
            let mut conn = in_connection::Connection::new(conn, executor);
            tokio::select! {
                r = &mut conn => r,
                _ = drain.draining() => {
                    // GOAWAY; in-flight streams finish.
                    conn.conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = &mut conn => r,
                        _ = drain.forced() => Ok(()),
                    }
                }
            }
        }
        _ => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.draining() => {
                    // Keep-alive off: the in-flight response carries
                    // `Connection: close`, then the connection ends.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = drain.forced() => Ok(()),
                    }
                }
            }
        }
    };
    if let Err(error) = result {
        let reason = if error.is_parse_too_large() {
            Some(Rejection::header_too_large)
        } else if error.is_parse() || error.is_parse_status() {
            Some(Rejection::malformed)
        } else if error.is_timeout() {
            Some(Rejection::slow_client)
        } else if ctx.downstream == Protocol::Http2
            && !error.is_closed()
            && !error.is_incomplete_message()
        {
            h2_violation(&error).then_some(Rejection::h2_protocol)
        } else {
            None
        };
        if let Some(reason) = reason {
            metrics.reject(reason);
            tracing::debug!(%error, ?reason, caller = %ctx.caller.uri, "client connection refused");
        } else {
            tracing::debug!(%error, "client connection ended");
        }
    }
}

/// Whether an HTTP/2 connection error was the client breaking the protocol
/// (as opposed to an I/O failure or the client going away).
fn h2_violation(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            let clean_close = h2e.is_remote() && h2e.reason() == Some(h2::Reason::NO_ERROR);
            return !(h2e.is_io() || clean_close);
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_told_from_the_first_bytes() {
        assert_eq!(detect(H2_PREFACE), Detected::Is(Protocol::Http2));
        assert_eq!(detect(b"PRI * HT"), Detected::NeedMore);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Is(Protocol::Http1));
        assert_eq!(detect(b"POST"), Detected::NeedMore);
        assert_eq!(detect(b"\x16\x03\x01"), Detected::Is(Protocol::Tcp));
        assert_eq!(detect(b"SSH-2.0-OpenSSH"), Detected::Is(Protocol::Tcp));
        assert_eq!(
            detect(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Detected::Is(Protocol::Tcp)
        );
        assert_eq!(detect(b" GET"), Detected::Is(Protocol::Tcp));
    }
}
