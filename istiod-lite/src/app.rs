//! Wires istiod-lite together: the registry and its source, the key sets of
//! RequestAuthentications fetched in the background, translation of both
//! published as xDS snapshots, the xDS and CA services on one TLS port, status
//! write-back and the admin port. `start` returns the bound addresses and a
//! handle, so tests run the same code in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use mesh_core::admin::{self, AdminRequest, AdminResponse};
use mesh_core::drain::{self, DrainTrigger, DrainWatcher};
use mesh_core::readiness::Readiness;
use mesh_core::telemetry::LogControl;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Authenticate;
use crate::auth::kube::KubeTokenReview;
use crate::auth::tokens::{NodeTokens, follow_nodes};
use crate::ca::{CaMetrics, CaPolicy, CaServer, root};
use crate::config::{Config, SourceKind};
use crate::jwks::{self, JwksCache, fetch::Fetcher, resolver::ResolverConfig};
use crate::model::Store;
use crate::provision::{self, kube::KubeProvisioner, status::ProvisionStatus};
use crate::registry::Registry;
use crate::registry::dir::{DirSource, DirWatch};
use crate::registry::kube::{ClientSource, KubeSource, KubeSourceOptions, build_client};
use crate::translate;
use crate::xds::{self, Snapshot, XdsMetrics, XdsServer};
use crate::xds_snapshot::SnapshotBuilder;
use mesh_core::control::server::{self, ServingHandle};

/// Lifetime of the gRPC port's serving certificate; it is issued anew at
/// every start, so it only has to outlive one run.
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA root: {0}")]
    Root(#[from] root::RootError),
    #[error("serving certificate: {0}")]
    Serving(#[from] mesh_core::tls::TlsError),
    #[error("gRPC server: {0}")]
    Serve(#[from] server::ServeError),
    #[error("directory source: {0}")]
    Dir(#[from] crate::registry::dir::DirError),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] crate::registry::kube::ClientError),
    #[error("node tokens: {0}")]
    Tokens(#[from] crate::auth::tokens::TokenError),
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} must be `namespace/serviceaccount`")]
    TrustedAccount(String),
}

enum Source {
    Dir { source: DirSource, watch: DirWatch },
    Kube(Arc<KubeSource>),
}

/// A running istiod-lite.
pub struct App {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    serving: ServingHandle,
    source: Source,
    trigger: DrainTrigger,
    deadline: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc", &self.grpc)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn start(config: Config, log: LogControl) -> Result<App, AppError> {
        let state_dir = config.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(|source| AppError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let ca = Arc::new(match (&config.root_cert, &config.root_key) {
            (Some(cert), Some(key)) => root::from_files(cert, key)?,
            _ => root::load_or_create(&state_dir)?,
        });
        let (chain, key) = ca.issue_server(&config.serving_names, SERVING_CERT_TTL)?;
        let tls = server::tls_config(&chain, &key)?;
        let grpc_listener = bind("gRPC", config.grpc_listen).await?;
        let admin_listener = bind("admin", config.admin_listen).await?;

        let registry = Registry::new();
        let readiness = Readiness::new();
        let mut metrics = MetricsRegistry::default();
        let (trigger, drain) = drain::channel();
        let mut tasks = Vec::new();

        let kube_client = match config.source {
            SourceKind::Kube => {
                let from = match &config.kubeconfig {
                    Some(path) => ClientSource::Kubeconfig(path.clone()),
                    None => ClientSource::Infer,
                };
                Some(build_client(&from).await?)
            }
            SourceKind::Dir => None,
        };
        let synced = readiness.register("registry synced");
        let source = match config.source {
            SourceKind::Dir => {
                let dir = config.dir.clone().unwrap_or_default();
                let source = DirSource::new(&dir, registry.clone())?;
                let watch = source.spawn()?;
                watch.synced().await?;
                Source::Dir { source, watch }
            }
            SourceKind::Kube => {
                let options = KubeSourceOptions {
                    readiness: Some(readiness.clone()),
                    ..KubeSourceOptions::default()
                };
                options.metrics.register(&mut metrics);
                let client = kube_client.clone().expect("built for the kube source");
                let source = KubeSource::start(client, registry.clone(), options);
                source.wait_synced().await;
                Source::Kube(Arc::new(source))
            }
        };
        drop(synced);

        let provision_client = kube_client.clone();
        let auth: Arc<dyn Authenticate> = match kube_client {
            Some(client) => Arc::new(KubeTokenReview::new(
                client,
                config.trust_domain.clone(),
                registry.clone(),
            )),
            None => {
                let tokens = Arc::new(NodeTokens::load_or_create(
                    &state_dir.join("node-tokens.yaml"),
                    &node_names(&registry.snapshot()),
                )?);
                let (stop_tx, stop) = watch::channel(false);
                let draining = drain.clone();
                tasks.push(tokio::spawn(async move {
                    draining.draining().await;
                    let _ = stop_tx.send(true);
                }));
                tasks.push(tokio::spawn(follow_nodes(
                    tokens.clone(),
                    registry.clone(),
                    stop,
                )));
                tokens
            }
        };

        // Translation, published as debounced snapshots; conditions go to status.
        let mesh = config.mesh();
        let translation_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        metrics.register(
            "istiod_translation_duration_seconds",
            "Time to translate the registry to xDS resources after a change (the namespaces it touched, or all of it)",
            translation_seconds.clone(),
        );
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (conditions_tx, conditions_rx) = watch::channel(ProvisionStatus::default());
        let first_snapshot = readiness.register("first snapshot published");
        {
            let mut first_snapshot = Some(first_snapshot);
            let mut published = snapshot_rx.clone();
            tasks.push(tokio::spawn(async move {
                if published
                    .wait_for(|s| s.published_at.is_some())
                    .await
                    .is_ok()
                {
                    first_snapshot.take();
                }
            }));
        }
        // Key sets of RequestAuthentications' jwksUris, fetched in the
        // background; each change is translated and pushed like a store change.
        let (keys_tx, keys_rx) = watch::channel(Arc::new(JwksCache::default()));
        tasks.push(tokio::spawn(jwks::resolver::run(
            registry.subscribe(),
            Fetcher::with_system_roots(),
            ResolverConfig::default(),
            keys_tx,
            drain.clone(),
        )));
        let (inputs_tx, inputs_rx) =
            watch::channel((registry.snapshot(), keys_rx.borrow().clone()));
        tasks.push(tokio::spawn(xds::join(
            registry.subscribe(),
            keys_rx,
            inputs_tx,
            drain.clone(),
        )));
        // Only the publish task builds, so the lock is never contended; it
        // exists because `publish` takes a `Fn`.
        let cluster_domain = mesh.cluster_domain.clone();
        let building =
            std::sync::Mutex::new((translate::Translator::new(mesh), SnapshotBuilder::new()));
        tasks.push(tokio::spawn(xds::publish(
            inputs_rx,
            move |(store, keys): &(Arc<Store>, Arc<JwksCache>)| {
                let mut building = building
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (translator, builder) = &mut *building;
                let started = Instant::now();
                translator.set_keys(keys);
                let touched = translator.update(store);
                translation_seconds.observe(started.elapsed().as_secs_f64());
                let translation = translator.translation();
                let provisioned = provision::status::status(store, &cluster_domain);
                let report = ProvisionStatus {
                    conditions: provision::status::merge(
                        &translation.conditions,
                        &provisioned.conditions,
                    ),
                    addresses: provisioned.addresses,
                };
                conditions_tx.send_if_modified(|current| {
                    let changed = *current != report;
                    if changed {
                        *current = report;
                    }
                    changed
                });
                builder.update(translation, &touched)
            },
            config.debounce,
            config.debounce_max,
            snapshot_tx,
            drain.clone(),
        )));
        let settings = provision::Settings {
            root_cert_pem: ca.root_pem().to_string(),
            ..config.waypoint_settings()
        };
        let (status_sink, provision_sink) = match &source {
            Source::Dir { source, .. } => (
                StatusSink::Dir(source.clone()),
                ProvisionSink::Dir(source.root().to_path_buf()),
            ),
            Source::Kube(source) => {
                let client = provision_client.expect("built for the kube source");
                (
                    StatusSink::Kube(
                        source.clone(),
                        Box::new(KubeProvisioner::new(client.clone(), settings.clone())),
                    ),
                    ProvisionSink::Kube(Box::new(KubeProvisioner::new(client, settings))),
                )
            }
        };
        tasks.push(tokio::spawn(write_status(
            status_sink,
            conditions_rx,
            drain.clone(),
        )));
        tasks.push(tokio::spawn(provision_waypoints(
            provision_sink,
            registry.subscribe(),
            drain.clone(),
        )));

        let xds_metrics = Arc::new(XdsMetrics::new(&mut metrics));
        let xds_server = XdsServer::new(
            snapshot_rx.clone(),
            Some(auth.clone()),
            xds_metrics,
            drain.clone(),
        );
        let clients = xds_server.connected_clients();
        let ca_server = CaServer::new(
            ca,
            auth,
            registry.clone(),
            CaPolicy {
                trust_domain: config.trust_domain.clone(),
                trusted_node_accounts: trusted_accounts(&config.trusted_node_accounts)?,
                default_ttl: config.cert_ttl,
                max_ttl: config.max_cert_ttl,
                ..CaPolicy::default()
            },
            CaMetrics::new(&mut metrics),
        );
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(xds_server.into_service())
            .add_service(ca_server.into_service());
        let serving = server::serve_tls(grpc_listener, tls, router)?;

        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                listener: "admin",
                addr: config.admin_listen,
                source,
            })?;
        let metrics = Arc::new(metrics);
        let dir_source = match &source {
            Source::Dir { source, .. } => Some(source.clone()),
            Source::Kube(_) => None,
        };
        let router: admin::Router = Arc::new(move |req: AdminRequest| {
            let response = route_admin(
                &req,
                &readiness,
                &metrics,
                &snapshot_rx,
                &clients,
                &registry,
                dir_source.as_ref(),
                &log,
            );
            async move { response }.boxed()
        });
        tasks.push(tokio::spawn(admin::serve(admin_listener, router, drain)));

        tracing::info!(grpc = %serving.addr, admin = %admin_addr, "istiod-lite serving");
        Ok(App {
            grpc: serving.addr,
            admin: admin_addr,
            serving,
            source,
            trigger,
            deadline: config.drain_deadline,
            tasks,
        })
    }

    /// Stops accepting, ends xDS streams, lets CA calls finish within the
    /// deadline, and stops the source.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let drained = tokio::spawn(self.trigger.drain(self.deadline));
        if let Err(error) = self.serving.shutdown(self.deadline).await {
            tracing::warn!(%error, "gRPC server shutdown");
        }
        // Background tasks (publishing, status, admin) end on drain; the
        // status writer holds the Kubernetes source, so it goes first.
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let left = self.deadline.saturating_sub(started.elapsed());
        match self.source {
            Source::Dir { watch, .. } => {
                if let Err(error) = watch.shutdown(left).await {
                    tracing::warn!(%error, "directory source shutdown");
                }
            }
            Source::Kube(source) => match Arc::try_unwrap(source) {
                Ok(source) => {
                    if let Err(error) = source.shutdown(left).await {
                        tracing::warn!(%error, "Kubernetes source shutdown");
                    }
                }
                // Dropping the last handle stops the watchers.
                Err(shared) => drop(shared),
            },
        }
        let _ = drained.await;
        tracing::info!(elapsed = ?started.elapsed(), "istiod-lite stopped");
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind {
            listener,
            addr,
            source,
        })
}

fn trusted_accounts(accounts: &[String]) -> Result<Vec<(String, String)>, AppError> {
    accounts
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| match a.trim().split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok((ns.to_string(), sa.to_string()))
            }
            _ => Err(AppError::TrustedAccount(a.clone())),
        })
        .collect()
}

fn node_names(store: &Store) -> Vec<String> {
    store.nodes.keys().map(|k| k.name.clone()).collect()
}

/// The xDS resources of a translation.
pub fn snapshot_of(translation: &translate::Translation) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.declare(mesh_api::ADDRESS_TYPE_URL);
    snapshot.declare(mesh_api::AUTHORIZATION_TYPE_URL);
    snapshot.declare(mesh_api::WAYPOINT_TYPE_URL);
    for (name, address) in &translation.addresses {
        snapshot.insert(mesh_api::ADDRESS_TYPE_URL, name.clone(), address);
    }
    for (name, policy) in &translation.authorizations {
        snapshot.insert(mesh_api::AUTHORIZATION_TYPE_URL, name.clone(), policy);
    }
    for (name, waypoint) in &translation.waypoints {
        snapshot.insert(mesh_api::WAYPOINT_TYPE_URL, name.clone(), waypoint);
    }
    snapshot
}

enum StatusSink {
    Dir(DirSource),
    Kube(Arc<KubeSource>, Box<KubeProvisioner>),
}

enum ProvisionSink {
    Dir(PathBuf),
    Kube(Box<KubeProvisioner>),
}

/// How long a failed Kubernetes write waits before it is tried again when
/// nothing else changes.
const PROVISION_RETRY: Duration = Duration::from_secs(5);

/// Keeps the waypoints' objects in step with the waypoint Gateways: the
/// generated file in directory mode, server-side apply on Kubernetes.
async fn provision_waypoints(
    mut sink: ProvisionSink,
    mut stores: watch::Receiver<Arc<Store>>,
    drain: DrainWatcher,
) {
    loop {
        let store = stores.borrow_and_update().clone();
        let failed = match &mut sink {
            ProvisionSink::Dir(dir) => {
                let dir = dir.clone();
                let written = tokio::task::spawn_blocking(move || {
                    provision::dir::write(&dir, &provision::dir::render(&store))
                })
                .await;
                match written {
                    Ok(Ok(true)) => {
                        tracing::info!(file = provision::dir::GENERATED_FILE, "waypoints written");
                        false
                    }
                    Ok(Ok(false)) => false,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "waypoint provisioning");
                        true
                    }
                    Err(_) => true,
                }
            }
            ProvisionSink::Kube(provisioner) => provisioner.apply(&store).await.is_err(),
        };
        let retry = async {
            if failed {
                tokio::time::sleep(PROVISION_RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = stores.changed() => if changed.is_err() { return },
            _ = retry => {}
            _ = drain.draining() => return,
        }
    }
}

/// Writes conditions (and Gateway addresses) back whenever they change.
async fn write_status(
    mut sink: StatusSink,
    mut conditions: watch::Receiver<ProvisionStatus>,
    drain: DrainWatcher,
) {
    loop {
        tokio::select! {
            changed = conditions.changed() => if changed.is_err() { return },
            _ = drain.draining() => return,
        }
        let current = conditions.borrow_and_update().clone();
        match &mut sink {
            StatusSink::Dir(source) => {
                let source = source.clone();
                let written = tokio::task::spawn_blocking(move || {
                    source.write_status_with_addresses(&current.conditions, &current.addresses)
                })
                .await;
                if let Ok(Err(error)) = written {
                    tracing::warn!(%error, "writing status files");
                }
            }
            StatusSink::Kube(writer, addresses) => {
                if let Err(error) = writer.write_status(&current.conditions).await {
                    tracing::warn!(%error, "writing status");
                }
                if let Err(error) = addresses.write_addresses(&current.addresses).await {
                    tracing::warn!(%error, "writing Gateway addresses");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn route_admin(
    req: &AdminRequest,
    readiness: &Readiness,
    metrics: &MetricsRegistry,
    snapshot: &watch::Receiver<Arc<Snapshot>>,
    clients: &xds::ConnectedClients,
    registry: &Registry,
    dir: Option<&DirSource>,
    log: &LogControl,
) -> AdminResponse {
    use http::StatusCode;
    match req.path.as_str() {
        "/ready" | "/healthz/ready" => admin::readiness(readiness),
        "/metrics" | "/stats/prometheus" => admin::metrics(metrics, req),
        "/debug/clients" => admin::json(&clients.to_json()),
        "/debug/config_dump" => admin::json(&crate::debug::config_dump(&snapshot.borrow())),
        "/debug/registry" => admin::json(&crate::debug::registry(
            &registry.snapshot(),
            dir.map(|d| d.errors()).unwrap_or_default(),
        )),
        "/logging" => admin::logging(log, req),
        _ => admin::text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /metrics, /debug/config_dump, /debug/clients, /debug/registry, /logging\n",
        ),
    }
}
