//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mTLS
//! (spec section 2). One stream per proxied connection; the client side pools
//! connections, the server side hands each CONNECT to a handler.

pub mod client;
pub mod copy;
pub mod headers;
pub mod server;

use std::net::SocketAddr;

pub use client::{ClientSettings, ConnectRequest, Dialer, PlainDialer, Pool, PoolKey};
pub use copy::{End, Transfer, Tunnel, send_within_window, splice};
pub use server::{Handler, InboundRequest, Peer, ServerSettings, serve_connection, serve_h2};

/// rustls pulls TLS records from the socket 4 KiB at a time; a larger buffer
/// below it turns ~4 reads per 16 KiB record into one read per 64 KiB.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// The transport under TLS: TCP with a read buffer.
pub type Transport = tokio::io::BufReader<tokio::net::TcpStream>;

pub(crate) fn buffered(tcp: tokio::net::TcpStream) -> Transport {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}

/// The HBONE port.
pub const PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    #[error("{0} did not negotiate ALPN h2")]
    Alpn(SocketAddr),
    #[error("HTTP/2 handshake with {addr}: {source}")]
    H2Handshake { addr: SocketAddr, source: h2::Error },
    #[error("HTTP/2 stream: {0}")]
    Stream(h2::Error),
    #[error("{destination} refused the tunnel with {status}")]
    Refused {
        destination: SocketAddr,
        status: http::StatusCode,
    },
    #[error("bad CONNECT authority {authority:?}: {why}")]
    BadAuthority {
        authority: String,
        why: &'static str,
    },
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("cannot build the request: {0}")]
    BadRequest(String),
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

impl HboneError {
    /// The Istio `response_flags` value for this failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } | HboneError::ConnectTimeout(_) => "CONNECT",
            HboneError::Tls { source, .. } if is_identity_error(source) => "IDENTITY_ERROR",
            HboneError::Tls { .. } | HboneError::HandshakeTimeout(_) | HboneError::Alpn(_) => {
                "TLS_FAILURE"
            }
            HboneError::H2Handshake { .. } => "H2_HANDSHAKE_FAILURE",
            HboneError::Refused { status, .. } if *status == http::StatusCode::UNAUTHORIZED => {
                "DENY"
            }
            _ => "CONNECT",
        }
    }
}

fn is_identity_error(e: &std::io::Error) -> bool {
    e.to_string().contains("is not one of the expected")
}
