//! Wires the node agent together: the registry and its source, the pod
//! records of an earlier run reconciled, then the ZDS and CNI sockets, the
//! registry watch that enrols and removes running pods, and the admin port.
//! `start` returns the bound admin address and a handle, so tests run the
//! same code in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use mesh_core::admin::{self, AdminRequest, AdminResponse};
use mesh_core::drain::{self, DrainTrigger, DrainWatcher};
use mesh_core::readiness::Readiness;
use mesh_core::telemetry::LogControl;
use mesh_core::zds::ZdsListener;
use mesh_registry::Registry;
use mesh_registry::dir::{DirSource, DirWatch};
use mesh_registry::kube::{ClientSource, KubeSource, KubeSourceOptions};
use mesh_registry::model::Kind;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentOptions};
use crate::cni::server as cni_server;
use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use crate::pods::{RecordError, RecordStore};
use crate::redirect::apply::Redirector;

/// How often every pod is re-checked even without a registry change
/// (a netns that vanished, a failed operation to retry).
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error("directory source: {0}")]
    Dir(#[from] mesh_registry::dir::DirError),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] mesh_registry::kube::ClientError),
    #[error("ZDS socket {path}: {source}")]
    Zds {
        path: PathBuf,
        source: mesh_core::zds::ZdsError,
    },
    #[error(transparent)]
    Cni(#[from] cni_server::BindError),
    #[error("cannot bind the admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

enum Source {
    Dir(DirWatch),
    Kube(Box<KubeSource>),
}

/// A running node agent.
pub struct App {
    pub admin: SocketAddr,
    pub agent: Agent,
    source: Source,
    trigger: DrainTrigger,
    deadline: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn start(config: Config, log: LogControl) -> Result<App, AppError> {
        let admin_listener =
            TcpListener::bind(config.admin)
                .await
                .map_err(|source| AppError::Admin {
                    addr: config.admin,
                    source,
                })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| AppError::Admin {
                addr: config.admin,
                source,
            })?;
        let records = RecordStore::open(&config.state_dir)?;
        let registry = Registry::new();
        let readiness = Readiness::new();
        let mut metrics_registry = MetricsRegistry::default();
        let metrics = Metrics::default();
        metrics.register(&mut metrics_registry);
        let (trigger, drain) = drain::channel();
        let mut tasks = Vec::new();
        let not_ready = readiness.register("pods reconciled, sockets bound");

        // Admin first, so /ready and /metrics answer during a long sync.
        let agent = Agent::new(
            AgentOptions {
                ack_timeout: config.ack_timeout,
                probe_snat: config.probe_snat,
                redirector: Redirector {
                    mark: config.mark,
                    ..Redirector::default()
                },
                ..AgentOptions::new(config.node())
            },
            registry.clone(),
            records,
            metrics.clone(),
        );
        let kube_options = (config.source == SourceKind::Kube).then(|| {
            let options = KubeSourceOptions {
                kinds: vec![Kind::Namespace, Kind::Pod],
                readiness: Some(readiness.clone()),
                ..KubeSourceOptions::default()
            };
            options.metrics.register(&mut metrics_registry);
            options
        });
        let metrics_registry = Arc::new(metrics_registry);
        let router: admin::Router = {
            let (readiness, agent) = (readiness.clone(), agent.clone());
            Arc::new(move |req: AdminRequest| {
                let response = route_admin(&req, &readiness, &metrics_registry, &agent, &log);
                async move { response }.boxed()
            })
        };
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            router,
            drain.clone(),
        )));

        let source = match config.source {
            SourceKind::Dir => {
                let dir = config.dir.clone().unwrap_or_default();
                let watch = DirSource::new(&dir, registry.clone())?.spawn()?;
                watch.synced().await?;
                Source::Dir(watch)
            }
            SourceKind::Kube => {
                let from = match &config.kubeconfig {
                    Some(path) => ClientSource::Kubeconfig(path.clone()),
                    None => ClientSource::Infer,
                };
                let options = kube_options.unwrap_or_default();
                let source = KubeSource::connect(&from, registry.clone(), options).await?;
                source.wait_synced().await;
                Source::Kube(Box::new(source))
            }
        };

        let restored = agent.restore();
        agent.reconcile_all(true).await;
        agent.sync_probe_snat().await;
        tracing::info!(restored, "pod records reconciled");

        let zds_listener =
            ZdsListener::bind(&config.zds_socket).map_err(|source| AppError::Zds {
                path: config.zds_socket.clone(),
                source,
            })?;
        tasks.push(agent.zds().serve(zds_listener, drain.clone()));

        let cni_listener = cni_server::bind(&config.cni_socket)?;
        let handler: cni_server::Handler = {
            let agent = agent.clone();
            Arc::new(move |request| {
                let agent = agent.clone();
                async move { agent.handle_cni(request).await }.boxed()
            })
        };
        let invalid = metrics.clone();
        tasks.push(cni_server::serve(
            cni_listener,
            handler,
            move || invalid.cni("unknown", "invalid"),
            drain.clone(),
        ));
        tasks.push(tokio::spawn(follow_registry(
            agent.clone(),
            registry,
            drain.clone(),
        )));
        drop(not_ready);
        drop(drain);
        tracing::info!(
            node = config.node(),
            zds = %config.zds_socket.display(),
            cni = %config.cni_socket.display(),
            admin = %admin_addr,
            "node agent serving"
        );
        Ok(App {
            admin: admin_addr,
            agent,
            source,
            trigger,
            deadline: config.drain_deadline,
            tasks,
        })
    }

    /// Stops accepting on every socket, lets CNI requests in flight finish
    /// within the deadline, closes ztunnel connections (ztunnels keep their
    /// pods and reconnect to the next agent) and stops the source. Rules
    /// stay: pods remain enrolled across agent restarts.
    pub async fn shutdown(self) {
        let started = tokio::time::Instant::now();
        self.trigger.drain(self.deadline).await;
        self.agent.stop().await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let left = self
            .deadline
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        match self.source {
            Source::Dir(watch) => {
                if let Err(error) = watch.shutdown(left).await {
                    tracing::warn!(%error, "directory source shutdown");
                }
            }
            Source::Kube(source) => {
                if let Err(error) = source.shutdown(left).await {
                    tracing::warn!(%error, "Kubernetes source shutdown");
                }
            }
        }
        tracing::info!(elapsed = ?started.elapsed(), "node agent stopped");
    }
}

/// Enrols and removes running pods as labels change, and re-checks every
/// pod now and then.
async fn follow_registry(agent: Agent, registry: Registry, drain: DrainWatcher) {
    let mut changes = registry.subscribe();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                changes.borrow_and_update();
            }
            _ = resync.tick() => {}
            _ = drain.draining() => return,
        }
        agent.reconcile_changed();
    }
}

fn route_admin(
    req: &AdminRequest,
    readiness: &Readiness,
    metrics: &MetricsRegistry,
    agent: &Agent,
    log: &LogControl,
) -> AdminResponse {
    match req.path.as_str() {
        "/ready" | "/healthz/ready" => admin::readiness(readiness),
        "/metrics" | "/stats/prometheus" => admin::metrics(metrics, req),
        "/debug/pods" => admin::json(&agent.debug_pods()),
        "/logging" => admin::logging(log, req),
        _ => admin::text(
            http::StatusCode::NOT_FOUND,
            "not found; try /ready, /metrics, /debug/pods, /logging\n",
        ),
    }
}
