//! The server side of the control-plane connection: gRPC over TLS (port
//! 15012), rustls accepting and tonic serving whatever services the router
//! holds (the CA, xDS). Clients verify this server by DNS name; they present
//! no certificate, their bearer token authenticates them. istiod-lite serves
//! with it, and tests stand up control planes of their own with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};

/// A client that connects and stalls does not hold a task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serving certificate: {0}")]
    Certificate(String),
    #[error("serving key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("connections were still open after the {0:?} shutdown deadline; they were closed")]
    DeadlinePassed(Duration),
    #[error("the server task ended abnormally: {0}")]
    Task(String),
}

/// A TLS 1.3 server configuration with ALPN h2, from PEM (chain and PKCS#8 key).
pub fn tls_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, ServeError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(ServeError::Certificate("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ServeError::Key(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![crate::tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS connection as tonic sees it: the TCP peer is the connect info.
#[derive(Debug)]
pub struct TlsConnection(pub TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A running server: its address, and how to stop it. Dropping the handle
/// also stops it (gracefully, without a deadline).
#[derive(Debug)]
pub struct ServingHandle {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServingHandle {
    /// Stops accepting, lets open calls finish, and closes whatever is
    /// still open after `deadline`.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(deadline, &mut self.task).await {
            Ok(Ok(result)) => result.map_err(ServeError::Server),
            Ok(Err(join)) => Err(ServeError::Task(join.to_string())),
            Err(_) => {
                self.task.abort();
                Err(ServeError::DeadlinePassed(deadline))
            }
        }
    }
}

/// Serves `router` over TLS on `listener` until the handle is shut down.
pub fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
) -> Result<ServingHandle, ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let (stop, stopped) = watch::channel(false);
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept(listener, tls, tx, stopped.clone()));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut signal = stopped;
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = signal.wait_for(|stop| *stop).await;
    }));
    Ok(ServingHandle { addr, stop, task })
}

/// Accepts TCP connections and hands TLS connections to tonic; a failed
/// handshake costs only its own task.
async fn accept(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    tx: mpsc::Sender<Result<TlsConnection, std::io::Error>>,
    mut stopped: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = async { stopped.wait_for(|stop| *stop).await.is_err() } => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(TlsConnection(stream))).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
