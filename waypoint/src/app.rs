//! Wires the waypoint together: identity and certificates, the xDS client,
//! the HBONE listener, admin and drain. `build` binds every port (or fails
//! naming the one it could not bind) and returns the addresses and a
//! shutdown handle, so tests run the same code in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_core::Identity;
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::drain::{self, DrainOutcome, DrainTrigger, DrainWatcher};
use mesh_core::hbone::{ClientSettings, PlainDialer, Pool};
use mesh_core::readiness::{BlockReady, Readiness};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{self, CertStore, CertificateSource, IstioCaClient, TrustBundle};
use mesh_core::xds::{NodeInfo, XdsClient, XdsMetrics, XdsStatus};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::admin::{self, AdminState};
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::proxy::{Limits, Proxy};
use crate::settings::Settings;
use crate::upstream::Upstream;
use crate::xds::{AddressHandler, WaypointHandler};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--root-cert {path}: {source}")]
    Roots {
        path: PathBuf,
        source: tls::TlsError,
    },
    #[error(
        "the waypoint identity (trust domain {trust_domain:?}, namespace {namespace:?}, service account {service_account:?}): {reason}"
    )]
    Identity {
        trust_domain: String,
        namespace: String,
        service_account: String,
        reason: String,
    },
    #[error("certificates: {0}")]
    Certificates(#[from] tls::TlsError),
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("xDS: {0}")]
    Xds(#[from] mesh_core::xds::XdsError),
}

/// The bound addresses.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
}

/// Asks the app to drain and stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    asked: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    fn new() -> Self {
        Shutdown {
            asked: Arc::new(watch::channel(false).0),
        }
    }

    pub fn trigger(&self) {
        self.asked.send_replace(true);
    }
}

/// What tests substitute: certificates from a CA held in the test instead of
/// the control plane's CA.
#[derive(Debug, Default)]
pub struct Overrides {
    pub certificates: Option<(Arc<dyn CertificateSource>, Arc<TrustBundle>)>,
}

#[derive(Debug)]
pub struct App {
    pub addresses: Addresses,
    pub metrics: Arc<Metrics>,
    pub proxy: Arc<Proxy>,
    pub readiness: Readiness,
    shutdown: Shutdown,
    trigger: DrainTrigger,
    deadline: Duration,
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, AppError> {
    tokio::fs::read(path).await.map_err(|e| AppError::Read {
        path: path.clone(),
        source: e,
    })
}

fn control_plane(settings: &Settings, roots: Vec<CertificateDer<'static>>) -> ControlPlane {
    ControlPlane {
        address: settings.xds_address.clone(),
        server_name: settings.xds_server_name.clone(),
        roots,
        token: settings.token_file.clone().map(TokenSource::File),
        cluster_id: settings.cluster_id.clone(),
        headers: Vec::new(),
        mark: None,
    }
}

impl App {
    pub async fn build(
        settings: Settings,
        log: LogControl,
        overrides: Overrides,
    ) -> Result<App, AppError> {
        let sa = settings.service_account().to_string();
        let identity = Identity::new(&settings.trust_domain, &settings.gateway_namespace, &sa)
            .map_err(|e| AppError::Identity {
                trust_domain: settings.trust_domain.clone(),
                namespace: settings.gateway_namespace.clone(),
                service_account: sa.clone(),
                reason: e.to_string(),
            })?;
        let root_pem = read(&settings.root_cert).await?;
        let control_roots =
            tls::parse_certs(&root_pem, "control plane roots").map_err(|e| AppError::Roots {
                path: settings.root_cert.clone(),
                source: e,
            })?;
        let control = control_plane(&settings, control_roots);
        let (source, roots) = match overrides.certificates {
            Some(c) => c,
            None => {
                // Peer roots start empty and follow the CA's answers (spec 4).
                let bundle = Arc::new(TrustBundle::new(Vec::new())?);
                let client =
                    IstioCaClient::new(control.clone(), settings.ca_impersonate, settings.cert_ttl)
                        .updating_trust_bundle(bundle.clone(), Vec::new());
                (Arc::new(client) as Arc<dyn CertificateSource>, bundle)
            }
        };
        let certs = CertStore::new(source, roots);

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let xds_metrics = XdsMetrics::register(&mut registry);
        let registry = Arc::new(registry);

        let pool = Pool::new(
            certs.clone(),
            Arc::new(PlainDialer),
            ClientSettings::default(),
        );
        let proxy = Arc::new(Proxy {
            discovery: ArcSwap::from_pointee(Discovery::default()),
            config: ArcSwapOption::empty(),
            balancer: crate::balance::Balancer::default(),
            budget: crate::retry::Budget::default(),
            upstream: Upstream::new(pool.clone(), identity.clone(), settings.upstream_hbone_port),
            metrics: metrics.clone(),
            access_log: Arc::default(),
            identity_uri: identity.to_string(),
            identity: identity.clone(),
            certs: certs.clone(),
            limits: Limits {
                header_read_timeout: settings.header_read_timeout,
                max_header_bytes: settings.max_header_bytes,
                max_concurrent_streams: settings.max_concurrent_streams,
                ..Limits::default()
            },
        });

        let hbone_l = match settings.listen {
            Some(addr) => bind("HBONE", addr).await?,
            None => match bind("HBONE", "[::]:15008".parse().expect("static address")).await {
                Ok(l) => l,
                Err(_) => bind("HBONE", "0.0.0.0:15008".parse().expect("static address")).await?,
            },
        };
        let admin_l = bind("admin", settings.admin).await?;
        let addr = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        let addresses = Addresses {
            hbone: addr(&hbone_l),
            admin: addr(&admin_l),
        };

        let node = NodeInfo {
            proxy_type: "waypoint".into(),
            pod_name: settings.pod_name.clone(),
            pod_namespace: settings.gateway_namespace.clone(),
            instance_ip: settings.instance_ip,
            node_name: settings.node_name.clone(),
            cluster_id: settings.cluster_id.clone(),
            metadata: Default::default(),
        }
        .to_node();
        // Address first, then the waypoint's own config (spec 3.3 order).
        let client = XdsClient::new(
            control,
            node,
            vec![
                Arc::new(AddressHandler::new(proxy.clone())),
                Arc::new(WaypointHandler::new(
                    proxy.clone(),
                    settings.resource_name(),
                )),
            ],
        )?
        .with_metrics(xds_metrics);

        let (trigger, watcher) = drain::channel();
        let shutdown = Shutdown::new();
        let readiness = Readiness::new();
        let admin_state = Arc::new(AdminState {
            proxy: proxy.clone(),
            registry,
            readiness: readiness.clone(),
            log,
            shutdown: shutdown.clone(),
            xds: client.status(),
            resource_name: settings.resource_name(),
        });
        tokio::spawn(mesh_core::admin::serve(
            admin_l,
            admin::router(admin_state),
            watcher.clone(),
        ));

        let synced = readiness.register("xDS sync");
        tokio::spawn(release_when_synced(
            client.status(),
            synced,
            watcher.clone(),
        ));
        client.spawn(watcher.clone());

        let cert_ready = readiness.register("waypoint certificate");
        tokio::spawn(serve_once_certified(
            proxy.clone(),
            hbone_l,
            cert_ready,
            watcher.clone(),
        ));
        tokio::spawn(crate::access_log::flush_periodically(
            proxy.access_log.clone(),
            watcher.clone(),
        ));
        tokio::spawn(sweep_pool(pool, watcher));

        Ok(App {
            addresses,
            metrics,
            proxy,
            readiness,
            shutdown,
            trigger,
            deadline: settings.drain_deadline,
        })
    }

    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until shutdown is asked for, then drains within the deadline.
    pub async fn run(self) -> DrainOutcome {
        let mut rx = self.shutdown.asked.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        tracing::info!(deadline = ?self.deadline, "shutting down: draining connections");
        let outcome = self.trigger.drain(self.deadline).await;
        // Lines of requests that finished during the drain.
        self.proxy.access_log.flush().await;
        tracing::info!(?outcome, "drained");
        outcome
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    let err = |source| AppError::Bind {
        listener,
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    let _ = socket.set_reuseaddr(true);
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Readiness waits for every subscribed xDS type to be applied once.
async fn release_when_synced(
    mut status: watch::Receiver<XdsStatus>,
    token: BlockReady,
    drain: DrainWatcher,
) {
    tokio::select! {
        _ = status.wait_for(|s| s.synced) => drop(token),
        _ = drain.draining() => {}
    }
}

/// Fetches the waypoint's certificate (retrying with back-off while the CA
/// is unreachable), then serves HBONE with it; renewal runs in the store.
async fn serve_once_certified(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    ready: BlockReady,
    drain: DrainWatcher,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let fetched = tokio::select! {
            r = proxy.certs.prefetch(&proxy.identity) => r,
            _ = drain.draining() => return,
        };
        match fetched {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, identity = %proxy.identity, retry_in = ?delay, "cannot get the waypoint's certificate");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = drain.draining() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!(identity = %proxy.identity, "certificate obtained; serving HBONE");
    drop(ready);
    let acceptor = TlsAcceptor::from(tls::server_config(
        proxy.certs.clone(),
        proxy.identity.clone(),
    ));
    crate::listener::serve(listener, acceptor, proxy, drain).await;
}

async fn sweep_pool(pool: Arc<Pool>, drain: DrainWatcher) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => pool.sweep(),
            _ = drain.draining() => return,
        }
    }
}
