//! The waypoint's settings: flags, each also read from the environment
//! variable a waypoint pod is given (the shared contract's names).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s)
}

/// Ambit's waypoint: the shared L7 proxy of a namespace or service account.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "waypoint", version)]
pub struct Settings {
    /// The Gateway this waypoint serves; its `Waypoint` config is `<namespace>/<name>`.
    #[arg(long, env = "GATEWAY_NAME")]
    pub gateway_name: String,
    /// The Gateway's (and this pod's) namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub gateway_namespace: String,
    /// The control plane (xDS and CA), e.g. `https://10.255.0.1:15012`.
    #[arg(long, env = "ISTIOD_ADDRESS")]
    pub xds_address: String,
    /// The name checked against the control plane's certificate (default: the address's host).
    #[arg(long, env = "ISTIOD_SERVER_NAME")]
    pub xds_server_name: Option<String>,
    /// PEM roots that verify the control plane.
    #[arg(long, env = "ISTIOD_ROOT_CERT")]
    pub root_cert: PathBuf,
    /// Bearer token file for the control plane (re-read on every call).
    #[arg(long, env = "ISTIOD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    /// The identity's service account (default: the gateway name).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Ask the CA for this identity by impersonation (a node's token standing
    /// in for the pod's own, as on the local cluster).
    #[arg(long, env = "CA_IMPERSONATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub ca_impersonate: bool,
    /// The HBONE listener (default `[::]:15008`, or `0.0.0.0:15008` without IPv6).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin: /ready, /healthz, /metrics, /config_dump.
    #[arg(long, env = "WAYPOINT_ADMIN", default_value = "127.0.0.1:15021")]
    pub admin: SocketAddr,
    /// How long in-flight requests get to finish on SIGTERM.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub drain_deadline: Duration,
    /// How long a client has to send a complete HTTP/1.1 request head.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2) accepted.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// HTTP/2 streams one client connection may have open.
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent_streams: u32,
    /// The destination ztunnels' HBONE port.
    #[arg(long, default_value_t = mesh_core::hbone::PORT, hide = true)]
    pub upstream_hbone_port: u16,
    /// Certificate lifetime asked of the CA.
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,
}

impl Settings {
    /// `<namespace>/<gateway>`: the `Waypoint` resource name.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.gateway_namespace, self.gateway_name)
    }

    pub fn service_account(&self) -> &str {
        self.service_account
            .as_deref()
            .unwrap_or(&self.gateway_name)
    }
}
