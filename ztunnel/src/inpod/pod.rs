//! One pod's proxy: its three listeners bound inside the pod's netns, its
//! certificate, its own HBONE pool dialling from the pod, and a drain of its
//! own so that removing the pod touches nothing else.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::istio::workload::zds::WorkloadInfo;
use mesh_core::Identity;
use mesh_core::drain::{self, DrainOutcome, DrainTrigger};
use mesh_core::hbone::{ClientSettings, Pool};
use mesh_core::netns::{Netns, NetnsId};
use mesh_core::tls::CertStore;

use crate::config::{TunnelProtocol, Workload, WorkloadRef};
use crate::metrics::Metrics;
use crate::proxy::listeners::DataListeners;
use crate::proxy::{LocalWorkload, Proxy};
use crate::sockets::{FactoryDialer, SocketFactory};
use crate::state::{StateStore, WorkloadEntry};

/// What every pod proxy is built from.
#[derive(Debug)]
pub struct PodContext {
    pub state: Arc<StateStore>,
    pub certs: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    /// ztunnel's own netns, where threads return after creating pod sockets.
    pub home: Arc<Netns>,
    pub mark: u32,
    pub ports: PodPorts,
    pub trust_domain: String,
    pub cluster_id: String,
    pub original_source: bool,
    pub connect_timeout: Duration,
    /// How long a pod may wait for its certificate before the Add is NACKed.
    pub certificate_wait: Duration,
    /// The xDS model's state generations, for inbound to wait on a new
    /// pod's record; `None` with file config, where none will come.
    pub updates: Option<tokio::sync::watch::Receiver<u64>>,
    /// How long inbound to a pod waits for its record (spec 2.8 step 2).
    pub local_workload_wait: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct PodPorts {
    pub outbound: u16,
    pub inbound: u16,
    pub plaintext: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}: {source}")]
    Identity {
        pod: String,
        source: mesh_core::identity::IdentityError,
    },
    #[error(
        "pod {pod}: cannot bind the {listener} listener on port {port} in the pod's network namespace: {source}"
    )]
    Bind {
        pod: String,
        listener: &'static str,
        port: u16,
        source: std::io::Error,
    },
    #[error("pod {pod}: no certificate for {identity}: {reason}")]
    Certificate {
        pod: String,
        identity: Identity,
        reason: String,
    },
    #[error("pod {pod}: cannot keep a handle on its network namespace: {source}")]
    Netns { pod: String, source: std::io::Error },
}

/// A pod's proxy, serving until drained.
#[derive(Debug)]
pub struct RunningPod {
    pub info: WorkloadInfo,
    pub identity: Identity,
    pub netns: NetnsId,
    trigger: DrainTrigger,
}

impl RunningPod {
    /// Stops accepting, then closes what is still open after `deadline`
    /// (zero: at once).
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        self.trigger.drain(deadline).await
    }
}

pub fn identity_of(ctx: &PodContext, info: &WorkloadInfo) -> Result<Identity, PodError> {
    Identity::for_workload(&ctx.trust_domain, &info.namespace, &info.service_account).map_err(
        |source| PodError::Identity {
            pod: pod_name(info),
            source,
        },
    )
}

pub fn pod_name(info: &WorkloadInfo) -> String {
    format!("{}/{}", info.namespace, info.name)
}

/// Binds the pod's listeners and gets its certificate, then serves. Returns
/// only once both are done, so the node agent's ACK means "serving".
pub async fn start(
    ctx: &PodContext,
    uid: &str,
    info: &WorkloadInfo,
    netns: &Netns,
) -> Result<RunningPod, PodError> {
    let pod = pod_name(info);
    let identity = identity_of(ctx, info)?;
    let netns_id = netns.id();
    let handle = netns.try_clone().map_err(|source| PodError::Netns {
        pod: pod.clone(),
        source,
    })?;
    let sockets = SocketFactory::in_pod(handle, ctx.home.clone(), ctx.mark);
    let bind = |listener: &'static str, port: u16| {
        sockets.pod_listener(port).map_err(|source| PodError::Bind {
            pod: pod.clone(),
            listener,
            port,
            source,
        })
    };
    if let Err(error) = sockets.migrate_queued_connections() {
        // Older kernels lack it: upgrades may then reset a few queued connections.
        tracing::debug!(%pod, %error, "cannot enable tcp_migrate_req in the pod");
    }
    let listeners = DataListeners {
        outbound: bind("outbound", ctx.ports.outbound)?,
        inbound: bind("inbound HBONE", ctx.ports.inbound)?,
        plaintext: bind("inbound plaintext", ctx.ports.plaintext)?,
    };
    let cert = async {
        match ctx.certs.current(&identity) {
            Some(c) if !c.is_expired(std::time::SystemTime::now()) => Ok(()),
            _ => ctx.certs.prefetch(&identity).await.map(|_| ()),
        }
    };
    let fetched = tokio::time::timeout(ctx.certificate_wait, cert)
        .await
        .map_err(|_| format!("not issued within {:?}", ctx.certificate_wait))
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(reason) = fetched {
        return Err(PodError::Certificate {
            pod,
            identity,
            reason,
        });
    }
    let pool = Pool::new(
        ctx.certs.clone(),
        Arc::new(FactoryDialer {
            sockets: sockets.clone(),
            timeout: ctx.connect_timeout,
        }),
        ClientSettings {
            connect_timeout: ctx.connect_timeout,
            ..Default::default()
        },
    );
    let announced = Arc::new(WorkloadEntry {
        spec: announced_workload(ctx, uid, info),
        identity: identity.clone(),
    });
    let proxy = Arc::new(Proxy {
        state: ctx.state.clone(),
        certs: ctx.certs.clone(),
        pool,
        metrics: ctx.metrics.clone(),
        local: LocalWorkload {
            name: WorkloadRef {
                namespace: info.namespace.clone(),
                name: info.name.clone(),
            },
            announced: Some(announced),
            updates: ctx.updates.clone(),
            wait: ctx.local_workload_wait,
        },
        sockets,
        original_source: ctx.original_source,
        connect_timeout: ctx.connect_timeout,
    });
    let (trigger, watcher) = drain::channel();
    listeners.serve(proxy, identity.clone(), watcher);
    tracing::info!(%uid, %pod, %identity, netns = %netns_id, "pod proxy serving");
    Ok(RunningPod {
        info: info.clone(),
        identity,
        netns: netns_id,
        trigger,
    })
}

/// The pod as far as ZDS knows it: enough to present its identity and to
/// label its telemetry until the control plane sends the full record.
fn announced_workload(ctx: &PodContext, uid: &str, info: &WorkloadInfo) -> Workload {
    Workload {
        uid: uid.to_string(),
        name: info.name.clone(),
        namespace: info.namespace.clone(),
        addresses: Vec::new(),
        service_account: info.service_account.clone(),
        trust_domain: ctx.trust_domain.clone(),
        node: String::new(),
        tunnel_protocol: TunnelProtocol::Hbone,
        canonical_name: String::new(),
        canonical_revision: String::new(),
        workload_name: String::new(),
        workload_type: Default::default(),
        cluster_id: ctx.cluster_id.clone(),
        status: Default::default(),
        services: Default::default(),
        authorization_policies: Vec::new(),
        labels: Default::default(),
        capacity: None,
        locality: Default::default(),
        waypoint: None,
    }
}
