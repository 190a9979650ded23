//! A stand-in for a waypoint (or a pod's HBONE port): an HBONE server with
//! a real certificate that records each CONNECT and tunnels it to an echo
//! server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http::{HeaderMap, StatusCode};
use mesh_core::Identity;
use mesh_core::drain;
use mesh_core::hbone::{self, Handler, InboundRequest};
use mesh_core::tls::{CertStore, CertificateAuthority, LocalCa, TrustBundle};
use mesh_testkit::EchoServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(10);

/// Certificates for the test side (waypoint stand-in, test clients) from the
/// same CA ztunnel uses.
pub fn cert_store(ca: &CertificateAuthority) -> Arc<CertStore> {
    let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
    let source = LocalCa {
        ca: CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem()).unwrap(),
        ttl: Duration::from_secs(3600),
    };
    CertStore::new(Arc::new(source), roots)
}

/// What an HBONE server saw of one CONNECT.
#[derive(Debug, Clone)]
pub struct Seen {
    pub authority: SocketAddr,
    pub forwarded: Option<String>,
    pub peer_identity: Option<Identity>,
}

/// Records each CONNECT and tunnels it to an echo server.
struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
    echo: SocketAddr,
}

impl Handler for Recorder {
    async fn handle(&self, req: InboundRequest) {
        let _ = self.seen.send(Seen {
            authority: req.authority,
            forwarded: req
                .headers
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            peer_identity: req.peer.identity.clone(),
        });
        let Ok(mut upstream) = TcpStream::connect(self.echo).await else {
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        };
        let Ok(tunnel) = req.accept(HeaderMap::new()) else {
            return;
        };
        hbone::splice(&mut upstream, tunnel, None).await;
    }
}

/// An HBONE server with `identity`'s certificate: the stand-in waypoint (or
/// a destination pod's HBONE port).
pub struct HboneServer {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    _echo: EchoServer,
    _stop: drain::DrainTrigger,
}

impl HboneServer {
    /// Serves HBONE on `listener` (bound wherever the test needs it).
    pub async fn serve(
        ca: &CertificateAuthority,
        identity: &Identity,
        listener: TcpListener,
    ) -> Result<Self> {
        let store = cert_store(ca);
        store.prefetch(identity).await?;
        let acceptor =
            tokio_rustls::TlsAcceptor::from(mesh_core::tls::server_config(store, identity.clone()));
        let addr = listener.local_addr()?;
        let echo = EchoServer::start(TcpListener::bind("127.0.0.1:0").await?);
        let (tx, seen) = mpsc::unbounded_channel();
        let handler = Arc::new(Recorder {
            seen: tx,
            echo: echo.addr,
        });
        let (stop, watcher) = drain::channel();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = watcher.draining() => return,
                };
                let Ok((tcp, _)) = accepted else { return };
                let (acceptor, h, w) = (acceptor.clone(), handler.clone(), watcher.clone());
                tokio::spawn(async move {
                    let _ = hbone::serve_connection(tcp, acceptor, &Default::default(), h, w).await;
                });
            }
        });
        Ok(HboneServer {
            addr,
            seen,
            _echo: echo,
            _stop: stop,
        })
    }

    pub async fn next(&mut self) -> Result<Seen> {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .context("no CONNECT arrived in time")?
            .ok_or_else(|| anyhow!("the server stopped"))
    }
}
