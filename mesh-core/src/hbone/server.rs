//! The HBONE server (port 15008): accepts mTLS, speaks HTTP/2 with the settings
//! of spec 2.2, checks each request is a CONNECT with an `ip:port` authority,
//! and hands it to a [`Handler`] that decides and carries it out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{HboneError, Tunnel, headers};
use crate::drain::DrainWatcher;
use crate::identity::Identity;

/// How long a peer has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings of the server side (spec 2.2).
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
    pub max_concurrent_streams: u32,
    pub max_send_buffer: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 1 << 20,
            max_header_list_size: 64 << 10,
            max_concurrent_streams: 200,
            max_send_buffer: 400 << 10,
        }
    }
}

/// Who is on the other end of an HBONE connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The TCP peer address.
    pub addr: SocketAddr,
    /// Our local address on the accepted socket.
    pub local: SocketAddr,
    /// The first SPIFFE identity in the client certificate.
    pub identity: Option<Identity>,
}

/// One CONNECT request, already checked for method and authority shape.
#[derive(Debug)]
pub struct InboundRequest {
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    pub peer: Arc<Peer>,
    respond: SendResponse<Bytes>,
    recv: h2::RecvStream,
}

impl InboundRequest {
    /// Refuses the tunnel with a status (400, 401, 503...).
    pub fn refuse(mut self, status: StatusCode) {
        let resp = Response::builder()
            .status(status)
            .body(())
            .expect("static response");
        let _ = self.respond.send_response(resp, true);
    }

    /// Opens the tunnel: sends 200 with `headers` and returns the stream.
    pub fn accept(mut self, headers: HeaderMap) -> Result<Tunnel, HboneError> {
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("static response");
        *resp.headers_mut() = headers;
        let send = self
            .respond
            .send_response(resp, false)
            .map_err(HboneError::Stream)?;
        Ok(Tunnel {
            send,
            recv: self.recv,
            _slot: None,
        })
    }
}

/// Decides and serves each CONNECT request of a connection.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: InboundRequest) -> impl Future<Output = ()> + Send;
    /// A request was refused before reaching `handle` (bad method or authority).
    fn malformed(&self, _peer: &Peer, _error: &HboneError) {}
}

/// Serves one accepted TCP connection: TLS, HTTP/2, then a task per stream.
/// Returns when the peer closes or drain finishes.
pub async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    settings: &ServerSettings,
    handler: Arc<H>,
    drain: DrainWatcher,
) -> Result<(), HboneError> {
    // Dual-stack listeners see IPv4 peers as IPv4-mapped IPv6; report them as IPv4.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let addr = canonical(tcp.peer_addr().map_err(HboneError::Io)?);
    let local = canonical(tcp.local_addr().map_err(HboneError::Io)?);
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(super::buffered(tcp)))
        .await
        .map_err(|_| HboneError::HandshakeTimeout(addr))?
        .map_err(|e| HboneError::Tls { addr, source: e })?;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(crate::tls::ALPN_H2) {
        return Err(HboneError::Alpn(addr));
    }
    let peer = Peer {
        addr,
        local,
        identity: crate::tls::peer_identity(conn.peer_certificates()),
    };
    serve_h2(tls, peer, settings, handler, drain).await
}

/// Serves HTTP/2 CONNECT requests over an established (authenticated) stream.
/// Separate from TLS so the request handling can be exercised directly.
pub async fn serve_h2<IO, H>(
    io: IO,
    peer: Peer,
    settings: &ServerSettings,
    handler: Arc<H>,
    drain: DrainWatcher,
) -> Result<(), HboneError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let addr = peer.addr;
    let peer = Arc::new(peer);
    let mut h2 = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_send_buffer_size(settings.max_send_buffer)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| HboneError::H2Handshake { addr, source: e })?;
    let mut draining = false;
    loop {
        tokio::select! {
            next = h2.accept() => match next {
                Some(Ok((req, respond))) => {
                    let handler = handler.clone();
                    let peer = peer.clone();
                    let watcher = drain.clone();
                    tokio::spawn(async move {
                        if let Some(request) = check_request(req, respond, &peer, &*handler) {
                            handler.handle(request).await;
                        }
                        drop(watcher);
                    });
                }
                Some(Err(e)) => {
                    if e.is_go_away() || e.is_io() || e.is_remote() {
                        return Ok(());
                    }
                    return Err(HboneError::Stream(e));
                }
                None => return Ok(()),
            },
            _ = drain.draining(), if !draining => {
                draining = true;
                h2.graceful_shutdown();
            }
            _ = drain.forced(), if draining => {
                h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
        }
    }
}

fn check_request<H: Handler>(
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: &Arc<Peer>,
    handler: &H,
) -> Option<InboundRequest> {
    let refuse = |respond: &mut SendResponse<Bytes>, status| {
        let resp = Response::builder()
            .status(status)
            .body(())
            .expect("static response");
        let _ = respond.send_response(resp, true);
    };
    if req.method() != Method::CONNECT {
        handler.malformed(peer, &HboneError::NotConnect(req.method().to_string()));
        refuse(&mut respond, StatusCode::BAD_REQUEST);
        return None;
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let authority = match headers::parse_authority(authority) {
        Ok(a) => a,
        Err(e) => {
            handler.malformed(peer, &e);
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return None;
        }
    };
    let (parts, recv) = req.into_parts();
    Some(InboundRequest {
        authority,
        headers: parts.headers,
        peer: peer.clone(),
        respond,
        recv,
    })
}
