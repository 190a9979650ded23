//! Shared (in-pod) mode: one ztunnel serves every pod the node agent hands it
//! over ZDS, with a full listener set (15001, 15006, 15008) inside each pod's
//! network namespace and upstream sockets created there too, so traffic leaves
//! with the pod's address and the pod's redirection rules, keyed on the packet
//! mark, let it through. Admin, metrics and readiness stay in ztunnel's own
//! namespace. Pods come and go without touching each other: each has its own
//! listeners, HBONE pool and drain.
//!
//! `session` decides (pure), `client` talks ZDS, `pods` keeps the set of
//! served pods, `pod` starts one pod's proxy. Not done here: the DNS proxy
//! (15053) and the self-listener of ztunnel's own pod.

mod client;
pub mod pod;
pub mod pods;
pub mod session;

pub use client::ZdsClient;
pub use pod::{PodContext, PodError, PodPorts};
pub use pods::{PodStatus, Pods, PodsView};

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::netns::Netns;
use mesh_core::readiness::Readiness;
use mesh_core::tls::CertStore;

use crate::app::Shutdown;
use crate::config::{Config, InpodConfig};
use crate::metrics::Metrics;
use crate::state::StateStore;

/// The packet mark when the config sets none (validation requires one).
const DEFAULT_MARK: u32 = 0x539;
/// How long a new pod may wait for its certificate before its Add is NACKed.
const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

/// What in-pod mode shares with the rest of ztunnel.
#[derive(Debug)]
pub struct Shared {
    /// ztunnel's own netns, from [`home_netns`].
    pub home: Arc<Netns>,
    pub state: Arc<StateStore>,
    pub certs: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    /// The xDS model's state generations; `None` with file config.
    pub updates: Option<tokio::sync::watch::Receiver<u64>>,
}

/// ztunnel's own netns, after checking that a netns can be entered and
/// sockets marked: every pod needs both, so without them ztunnel fails at
/// start rather than at the first pod (spec 5).
pub fn home_netns(config: &Config) -> io::Result<Arc<Netns>> {
    let home = Netns::current()?;
    let mark = config.proxy.packet_mark.unwrap_or(DEFAULT_MARK);
    crate::sockets::check_inpod_capabilities(&home, mark)?;
    Ok(Arc::new(home))
}

/// The ZDS client serving pods as `config` says; run it with
/// [`ZdsClient::run`].
pub fn client(config: &Config, inpod: &InpodConfig, shared: Shared) -> ZdsClient {
    let l = &config.proxy.listeners;
    let ctx = Arc::new(PodContext {
        state: shared.state,
        certs: shared.certs,
        metrics: shared.metrics.clone(),
        home: shared.home,
        mark: config.proxy.packet_mark.unwrap_or(DEFAULT_MARK),
        ports: PodPorts {
            outbound: l.outbound.port(),
            inbound: l.inbound.port(),
            plaintext: l.inbound_plaintext.port(),
        },
        trust_domain: inpod.trust_domain.clone(),
        cluster_id: config.proxy.cluster_id.clone(),
        original_source: inpod.original_source,
        connect_timeout: config.proxy.connect_timeout.0,
        certificate_wait: CERTIFICATE_WAIT,
        updates: shared.updates,
        local_workload_wait: crate::proxy::LOCAL_WORKLOAD_WAIT,
    });
    ZdsClient {
        socket: inpod.socket.clone(),
        pods: Pods::new(ctx, shared.readiness),
        shutdown: shared.shutdown,
        metrics: shared.metrics,
        deadline: config.drain_deadline(),
    }
}
