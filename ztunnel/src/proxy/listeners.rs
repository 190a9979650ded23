//! Serving one workload's three data listeners (outbound, HBONE inbound,
//! plaintext inbound) until its drain starts: the dedicated ztunnel's own,
//! or one pod's in in-pod mode.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::Identity;
use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::{self, Pool};
use mesh_core::tls;
use tokio::net::TcpListener;

use super::inbound::Inbound;
use super::{Proxy, accept_loop};
use crate::metrics::Metrics;

/// The bound data listeners of one workload.
#[derive(Debug)]
pub struct DataListeners {
    pub outbound: TcpListener,
    pub inbound: TcpListener,
    pub plaintext: TcpListener,
}

impl DataListeners {
    /// Spawns the accept loops; HBONE is served with `local`'s certificate.
    pub fn serve(self, proxy: Arc<Proxy>, local: Identity, watcher: DrainWatcher) {
        let p = proxy.clone();
        tokio::spawn(accept_loop(
            "outbound",
            self.outbound,
            watcher.clone(),
            move |s, peer, w| super::outbound::handle(p.clone(), s, peer, w),
        ));
        let p = proxy.clone();
        tokio::spawn(accept_loop(
            "inbound plaintext",
            self.plaintext,
            watcher.clone(),
            move |s, peer, w| super::plaintext::handle(p.clone(), s, peer, w),
        ));
        tokio::spawn(sweep(proxy.pool.clone(), watcher.clone()));
        spawn_hbone(self.inbound, proxy, local, watcher);
    }
}

fn spawn_hbone(listener: TcpListener, proxy: Arc<Proxy>, local: Identity, watcher: DrainWatcher) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(proxy.certs.clone(), local));
    let handler = Arc::new(Inbound {
        proxy: proxy.clone(),
        drain: watcher.clone(),
    });
    let settings = Arc::new(hbone::ServerSettings::default());
    tokio::spawn(accept_loop(
        "inbound HBONE",
        listener,
        watcher,
        move |tcp, peer, w| {
            let (acceptor, handler, settings, metrics) = (
                acceptor.clone(),
                handler.clone(),
                settings.clone(),
                proxy.metrics.clone(),
            );
            async move {
                if let Err(error) =
                    hbone::serve_connection(tcp, acceptor, &settings, handler, w).await
                {
                    let reason = match &error {
                        hbone::HboneError::Tls { .. } | hbone::HboneError::HandshakeTimeout(_) => {
                            "tls"
                        }
                        hbone::HboneError::Alpn(_) => "alpn",
                        hbone::HboneError::H2Handshake { .. } => "http2",
                        _ => "other",
                    };
                    Metrics::count_reason(&metrics.handshake_failures, reason);
                    tracing::info!(%peer, %error, "inbound HBONE connection refused");
                }
            }
        },
    ));
}

/// Releases idle pooled connections until the drain starts.
async fn sweep(pool: Arc<Pool>, drain: DrainWatcher) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => pool.sweep(),
            _ = drain.draining() => return,
        }
    }
}
