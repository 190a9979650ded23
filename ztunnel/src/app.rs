//! Wires ztunnel together: certificates, state (from the file or xDS), listeners, admin. `build`
//! binds every port (or fails naming the one it could not bind) and returns
//! the addresses and a shutdown handle, so tests run the same code in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::drain::{self, DrainOutcome, DrainTrigger, DrainWatcher};
use mesh_core::hbone::{ClientSettings, Pool};
use mesh_core::readiness::{BlockReady, Readiness};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{
    self, CertStore, CertificateAuthority, CertificateSource, IstioCaClient, LocalCa,
    StaticCertificates, TrustBundle,
};
use mesh_core::xds::XdsMetrics;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::{Config, ControlPlaneCa, WorkloadRef};
use crate::inpod::{Shared, ZdsClient};
use crate::metrics::Metrics;
use crate::proxy::listeners::DataListeners;
use crate::proxy::{LocalWorkload, Proxy};
use crate::sockets::{FactoryDialer, SocketFactory};
use crate::state::{State, StateError, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Certificates(#[from] tls::TlsError),
    #[error("proxy.certificates.controlPlane.rootCert {path}: {source}")]
    ControlPlaneRoots {
        path: PathBuf,
        source: tls::TlsError,
    },
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    State(#[from] StateError),
    #[error("proxy.workload {0}: no workload with that namespace and name in the config")]
    UnknownLocalWorkload(String),
    #[error(transparent)]
    Xds(#[from] crate::xds::XdsSetupError),
    #[error("cannot start the control-plane thread: {0}")]
    ControlThread(std::io::Error),
    #[error("proxy.inpod: {0}")]
    InpodCapabilities(std::io::Error),
}

/// The bound addresses (ports resolved when the config asked for port 0). In
/// in-pod mode the three data addresses are the ones bound inside every pod.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

/// Asks the app to shut down (SIGTERM, `/quitquitquit`, tests), or to stop
/// because something it depends on broke (the process then exits with 1).
#[derive(Debug, Clone)]
pub struct Shutdown {
    asked: Arc<watch::Sender<bool>>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl Shutdown {
    fn new() -> Self {
        Shutdown {
            asked: Arc::new(watch::channel(false).0),
            failure: Arc::default(),
        }
    }

    pub fn trigger(&self) {
        // `send` drops the value when nobody subscribed yet (a trigger before
        // `run`); `send_replace` always keeps it.
        self.asked.send_replace(true);
    }

    /// Shuts down because of `reason`; the first reason is kept.
    pub fn fail(&self, reason: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.trigger();
    }

    /// Why the app stopped, if it stopped on a failure rather than on request.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug)]
pub struct App {
    pub addresses: Addresses,
    pub metrics: Arc<Metrics>,
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

/// The certificate source and the peer-verification roots.
async fn certificate_source(
    config: &Config,
) -> Result<(Arc<dyn CertificateSource>, Arc<TrustBundle>), AppError> {
    let c = &config.proxy.certificates;
    let mut roots = Vec::new();
    for r in &c.roots {
        roots.extend(read(r).await?);
        roots.push(b'\n');
    }
    if let Some(cp) = &c.control_plane {
        // Until the first answer the bundle holds the configured roots only;
        // the client then keeps it at those plus the CA's roots (spec 4).
        let extra = if roots.iter().all(u8::is_ascii_whitespace) {
            Vec::new()
        } else {
            tls::parse_certs(&roots, "trust roots")?
        };
        let bundle = Arc::new(TrustBundle::new(extra.clone())?);
        let client = control_plane_ca(cp, &config.proxy.cluster_id, config.proxy.packet_mark)
            .await?
            .updating_trust_bundle(bundle.clone(), extra);
        return Ok((Arc::new(client), bundle));
    }
    if let Some(ca) = &c.ca {
        let cert = String::from_utf8_lossy(&read(&ca.cert).await?).into_owned();
        let key = String::from_utf8_lossy(&read(&ca.key).await?).into_owned();
        let ca_obj = CertificateAuthority::from_pem(&cert, &key)?;
        roots.extend(ca_obj.root_pem().as_bytes());
        return Ok((
            Arc::new(LocalCa {
                ca: ca_obj,
                ttl: ca.ttl.0,
            }),
            bundle_of(&roots)?,
        ));
    }
    let mut files = StaticCertificates::default();
    for f in &c.files {
        let root = read(&f.roots).await?;
        roots.extend(&root);
        roots.push(b'\n');
        files.insert_pem(read(&f.cert).await?, read(&f.key).await?, root)?;
    }
    Ok((Arc::new(files), bundle_of(&roots)?))
}

fn bundle_of(roots_pem: &[u8]) -> Result<Arc<TrustBundle>, AppError> {
    Ok(Arc::new(TrustBundle::new(tls::parse_certs(
        roots_pem,
        "trust roots",
    )?)?))
}

async fn control_plane_ca(
    cp: &ControlPlaneCa,
    cluster_id: &str,
    mark: Option<u32>,
) -> Result<IstioCaClient, AppError> {
    let root_pem = read(&cp.root_cert).await?;
    let roots = tls::parse_certs(&root_pem, "controlPlane.rootCert").map_err(|e| {
        AppError::ControlPlaneRoots {
            path: cp.root_cert.clone(),
            source: e,
        }
    })?;
    let token = match (&cp.token, &cp.token_file) {
        (Some(t), _) => Some(TokenSource::Literal(t.clone())),
        (None, Some(path)) => Some(TokenSource::File(path.clone())),
        (None, None) => None,
    };
    let control = ControlPlane {
        address: cp.address.clone(),
        server_name: cp.server_name.clone(),
        roots,
        token,
        cluster_id: cp
            .cluster_id
            .clone()
            .unwrap_or_else(|| cluster_id.to_string()),
        headers: Vec::new(),
        mark,
    };
    Ok(IstioCaClient::new(control, cp.impersonate, cp.ttl.0))
}

impl App {
    pub async fn build(config: Config, log: LogControl) -> Result<App, AppError> {
        let deadline = config.drain_deadline();
        // In-pod mode enters every pod's netns: find out now if it cannot.
        let home = match &config.proxy.inpod {
            Some(_) => {
                Some(crate::inpod::home_netns(&config).map_err(AppError::InpodCapabilities)?)
            }
            None => None,
        };
        let (source, roots) = certificate_source(&config).await?;
        let certs = CertStore::new(source, roots);
        // With a control plane the state starts empty and the workloads
        // arrive later; from a file they are there now.
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let (state, xds) = match &config.proxy.xds {
            Some(x) => {
                let state = Arc::new(StateStore::new(State::default()));
                let (client, model) =
                    crate::xds::client(x, state.clone(), config.proxy.packet_mark).await?;
                let client = client.with_metrics(XdsMetrics::register(&mut registry));
                (state, Some((client, model)))
            }
            None => (
                Arc::new(StateStore::new(State::from_config(&config)?)),
                None,
            ),
        };
        let xds_status = xds.as_ref().map(|(client, _)| client.status());
        let registry = Arc::new(registry);
        let readiness = Readiness::new();

        let l = &config.proxy.listeners;
        let admin_l = bind("admin", l.admin).await?;
        let metrics_l = bind("metrics", l.metrics).await?;
        let ready_l = bind("readiness", l.readiness).await?;
        let (trigger, watcher) = drain::channel();
        let shutdown = Shutdown::new();

        let (mode, data) = match (&config.proxy.inpod, home) {
            (Some(inpod), Some(home)) => {
                let client = crate::inpod::client(
                    &config,
                    inpod,
                    Shared {
                        home,
                        state: state.clone(),
                        certs: certs.clone(),
                        metrics: metrics.clone(),
                        readiness: readiness.clone(),
                        shutdown: shutdown.clone(),
                        updates: xds.as_ref().map(|(_, model)| model.updates()),
                    },
                );
                let view = client.pods.view();
                // Each pod listens on these ports inside its own netns.
                let bound = (l.outbound, l.inbound, l.inbound_plaintext);
                (Mode::Inpod(client), (bound, Some(view)))
            }
            _ => {
                let local = local_source(&config, &state, xds.as_ref().map(|(_, m)| m.clone()))?;
                let outbound = bind("outbound", l.outbound).await?;
                let inbound = bind("inbound HBONE", l.inbound).await?;
                let plaintext = bind("inbound plaintext", l.inbound_plaintext).await?;
                let addr = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
                let bound = (addr(&outbound), addr(&inbound), addr(&plaintext));
                let listeners = DataListeners {
                    outbound,
                    inbound,
                    plaintext,
                };
                (Mode::Dedicated(local, listeners), (bound, None))
            }
        };
        let ((outbound, inbound, inbound_plaintext), pods_view) = data;
        let addr = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        let addresses = Addresses {
            outbound,
            inbound,
            inbound_plaintext,
            admin: addr(&admin_l),
            metrics: addr(&metrics_l),
            readiness: addr(&ready_l),
        };

        let admin_state = Arc::new(AdminState {
            config: config.clone(),
            state: state.clone(),
            certs: certs.clone(),
            log,
            shutdown: shutdown.clone(),
            xds: xds_status,
            pods: pods_view,
        });
        tokio::spawn(mesh_core::admin::serve(
            admin_l,
            admin::admin_router(admin_state),
            watcher.clone(),
        ));
        tokio::spawn(mesh_core::admin::serve(
            metrics_l,
            admin::metrics_router(registry),
            watcher.clone(),
        ));
        tokio::spawn(mesh_core::admin::serve(
            ready_l,
            admin::readiness_router(readiness.clone()),
            watcher.clone(),
        ));

        if let Some((client, _)) = xds {
            let synced = readiness.register("xDS sync");
            tokio::spawn(release_when_synced(
                client.status(),
                synced,
                watcher.clone(),
            ));
            spawn_on_control_thread(client, watcher.clone())?;
        }
        match mode {
            Mode::Inpod(client) => {
                tokio::spawn(client.run(watcher));
            }
            Mode::Dedicated(local, listeners) => {
                let proxy = Arc::new(Proxy {
                    state,
                    certs: certs.clone(),
                    pool: Pool::new(
                        certs.clone(),
                        Arc::new(FactoryDialer {
                            sockets: SocketFactory::here(config.proxy.packet_mark),
                            timeout: config.proxy.connect_timeout.0,
                        }),
                        ClientSettings {
                            connect_timeout: config.proxy.connect_timeout.0,
                            ..Default::default()
                        },
                    ),
                    metrics: metrics.clone(),
                    local: LocalWorkload {
                        name: local.name().clone(),
                        announced: None,
                        updates: None,
                        wait: crate::proxy::LOCAL_WORKLOAD_WAIT,
                    },
                    sockets: SocketFactory::here(config.proxy.packet_mark),
                    original_source: false,
                    connect_timeout: config.proxy.connect_timeout.0,
                });
                let cert_ready = readiness.register("workload certificate");
                match local {
                    LocalSource::Static(_, local) => {
                        certs.prefetch(&local.identity).await?;
                        drop(cert_ready);
                        listeners.serve(proxy, local.identity.clone(), watcher);
                    }
                    LocalSource::Xds(_, model) => {
                        tokio::spawn(serve_once_local_known(
                            model, proxy, listeners, cert_ready, watcher,
                        ));
                    }
                }
            }
        }

        Ok(App {
            addresses,
            metrics,
            shutdown,
            trigger,
            deadline,
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
        tracing::info!(?outcome, "drained");
        outcome
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| AppError::Bind {
        listener,
        addr,
        source: e,
    })?;
    let _ = socket.set_reuseaddr(true);
    socket.bind(addr).map_err(|e| AppError::Bind {
        listener,
        addr,
        source: e,
    })?;
    socket.listen(1024).map_err(|e| AppError::Bind {
        listener,
        addr,
        source: e,
    })
}

/// What the data path serves.
enum Mode {
    /// One workload, with listeners in ztunnel's own netns.
    Dedicated(LocalSource, DataListeners),
    /// The pods the node agent hands over ZDS.
    Inpod(ZdsClient),
}

/// Where the dedicated workload comes from.
enum LocalSource {
    /// The config file, looked up at build.
    Static(WorkloadRef, Arc<crate::state::WorkloadEntry>),
    /// The control plane, once it sends it.
    Xds(WorkloadRef, Arc<crate::xds::XdsModel>),
}

impl LocalSource {
    fn name(&self) -> &WorkloadRef {
        match self {
            LocalSource::Static(r, _) | LocalSource::Xds(r, _) => r,
        }
    }
}

fn local_source(
    config: &Config,
    state: &StateStore,
    model: Option<Arc<crate::xds::XdsModel>>,
) -> Result<LocalSource, AppError> {
    // Validation guarantees a workload outside in-pod mode.
    let local_ref = config
        .proxy
        .workload
        .clone()
        .ok_or_else(|| AppError::UnknownLocalWorkload("(not set)".into()))?;
    if let Some(model) = model {
        return Ok(LocalSource::Xds(local_ref, model));
    }
    let entry = state
        .load()
        .workload_named(&local_ref.namespace, &local_ref.name)
        .cloned()
        .ok_or_else(|| {
            AppError::UnknownLocalWorkload(format!("{}/{}", local_ref.namespace, local_ref.name))
        })?;
    Ok(LocalSource::Static(local_ref, entry))
}

/// The xDS client runs on a small runtime of its own so that decoding and
/// state rebuilds never take a proxy worker (style guide, point 10). It stops
/// when the drain starts, which drops its drain watcher.
fn spawn_on_control_thread(
    client: mesh_core::xds::XdsClient,
    drain: DrainWatcher,
) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::ControlThread)?;
    std::thread::Builder::new()
        .name("ztunnel-xds".into())
        .spawn(move || {
            runtime.block_on(client.run(async move { drain.draining().await }));
        })
        .map_err(AppError::ControlThread)?;
    Ok(())
}

/// Readiness waits for every subscribed xDS type to be applied once (spec 3.3).
async fn release_when_synced(
    mut status: watch::Receiver<mesh_core::xds::XdsStatus>,
    token: BlockReady,
    drain: DrainWatcher,
) {
    tokio::select! {
        _ = status.wait_for(|s| s.synced) => drop(token),
        _ = drain.draining() => {}
    }
}

/// With xDS the local workload is not known at start: wait for the control
/// plane to send it, then fetch its certificate and start serving.
async fn serve_once_local_known(
    model: Arc<crate::xds::XdsModel>,
    proxy: Arc<Proxy>,
    listeners: DataListeners,
    cert_ready: BlockReady,
    drain: DrainWatcher,
) {
    let mut updates = model.updates();
    let local = proxy.local.name.clone();
    let found = async {
        loop {
            if let Some(w) = proxy
                .state
                .load()
                .workload_named(&local.namespace, &local.name)
                .cloned()
            {
                return Some(w);
            }
            if updates.changed().await.is_err() {
                return None;
            }
        }
    };
    let workload = tokio::select! {
        w = found => w,
        _ = drain.draining() => None,
    };
    let Some(workload) = workload else { return };
    tracing::info!(
        workload = %format!("{}/{}", local.namespace, local.name),
        identity = %workload.identity,
        "local workload received from the control plane"
    );
    let prefetch = tokio::select! {
        r = proxy.certs.prefetch(&workload.identity) => r,
        _ = drain.draining() => return,
    };
    if let Err(error) = prefetch {
        tracing::error!(%error, "cannot get the local workload's certificate; not serving");
        return;
    }
    drop(cert_ready);
    listeners.serve(proxy, workload.identity.clone(), drain);
}
