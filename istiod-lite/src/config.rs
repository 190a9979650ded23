//! istiod-lite's one config: command-line flags, each also readable from an
//! environment variable (the name is shown in `--help`), so the same binary
//! runs as a local process and as a Kubernetes Deployment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::translate::MeshConfig;

/// Where the registry is filled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// A directory of Kubernetes YAML files, watched live (the default).
    Dir,
    /// The Kubernetes API (in-cluster config, or a kubeconfig).
    Kube,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "istiod-lite",
    version,
    about = "Ambit's control plane: workload xDS (delta ADS) and the CA on one TLS port, \
             fed by a directory of Kubernetes YAML or by the Kubernetes API."
)]
pub struct Config {
    /// Where the resources come from.
    #[arg(long, env = "ISTIOD_SOURCE", value_enum, default_value = "dir")]
    pub source: SourceKind,

    /// The directory of YAML files (source `dir`).
    #[arg(long, env = "ISTIOD_DIR")]
    pub dir: Option<PathBuf>,

    /// A kubeconfig file (source `kube`); in-cluster config or
    /// `KUBECONFIG`/`~/.kube/config` when unset.
    #[arg(long, env = "ISTIOD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// xDS and CA (gRPC over TLS).
    #[arg(long, env = "ISTIOD_GRPC_LISTEN", default_value = "[::]:15012")]
    pub grpc_listen: SocketAddr,

    /// `/ready`, `/metrics`, `/debug/config_dump`, `/debug/clients`.
    #[arg(long, env = "ISTIOD_ADMIN_LISTEN", default_value = "127.0.0.1:15014")]
    pub admin_listen: SocketAddr,

    /// Trust domain of issued identities and translated workloads.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Cluster id in workload uids (`<cluster>//Pod/<ns>/<name>`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "ISTIOD_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// DNS suffix of service hostnames (`<svc>.<ns>.svc.<domain>`).
    #[arg(long, env = "ISTIOD_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Where the CA root and the node tokens are kept (created if missing).
    /// Default: `<dir>/../.istiod-lite` for source `dir`, `/var/lib/istiod-lite` otherwise.
    #[arg(long, env = "ISTIOD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Root certificate (PEM) to sign with instead of the one in the state dir.
    #[arg(long, env = "ISTIOD_ROOT_CERT", requires = "root_key")]
    pub root_cert: Option<PathBuf>,

    /// Root key (PEM, PKCS#8) that goes with `--root-cert`.
    #[arg(long, env = "ISTIOD_ROOT_KEY", requires = "root_cert")]
    pub root_key: Option<PathBuf>,

    /// Lifetime of workload certificates when a request does not say.
    #[arg(long, env = "ISTIOD_CERT_TTL", default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,

    /// Longest lifetime a request may ask for.
    #[arg(long, env = "ISTIOD_MAX_CERT_TTL", default_value = "168h", value_parser = duration)]
    pub max_cert_ttl: Duration,

    /// DNS names in the serving certificate of the gRPC port.
    #[arg(
        long,
        env = "ISTIOD_SERVING_NAMES",
        value_delimiter = ',',
        default_value = "istiod.istio-system.svc,istiod-lite.istio-system.svc,localhost"
    )]
    pub serving_names: Vec<String>,

    /// Service accounts (`ns/sa`) allowed to ask for other identities of pods
    /// on their node (Kubernetes source).
    #[arg(
        long,
        env = "CA_TRUSTED_NODE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "istio-system/ztunnel"
    )]
    pub trusted_node_accounts: Vec<String>,

    /// Container image of provisioned waypoint Deployments (Kubernetes source).
    #[arg(long, env = "ISTIOD_WAYPOINT_IMAGE", default_value_t = crate::provision::default_image())]
    pub waypoint_image: String,

    /// The xDS and CA address provisioned waypoints are given (Kubernetes
    /// source; the local cluster's pod runner sets its own).
    #[arg(
        long,
        env = "ISTIOD_WAYPOINT_XDS_ADDRESS",
        default_value = "https://istiod.istio-system.svc:15012"
    )]
    pub waypoint_xds_address: String,

    /// Quiet time after a change before a push.
    #[arg(long, env = "ISTIOD_DEBOUNCE", default_value = "10ms", value_parser = duration)]
    pub debounce: Duration,

    /// Longest a push waits under a stream of changes.
    #[arg(long, env = "ISTIOD_DEBOUNCE_MAX", default_value = "100ms", value_parser = duration)]
    pub debounce_max: Duration,

    /// How long open streams get to finish on SIGTERM.
    #[arg(long, env = "ISTIOD_DRAIN_DEADLINE", default_value = "5s", value_parser = duration)]
    pub drain_deadline: Duration,

    /// Log filter (`info`, `debug`, `istiod_lite=debug,info`...).
    #[arg(long, env = "ISTIOD_LOG", default_value = "info")]
    pub log: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s)
}

impl Config {
    /// Parses the command line (and environment); also refuses combinations
    /// clap cannot express, such as the default `dir` source without `--dir`.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::CommandFactory;
        let config = Config::try_parse_from(args)?;
        if config.source == SourceKind::Dir && config.dir.is_none() {
            return Err(Config::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the directory source needs --dir PATH (or ISTIOD_DIR); use --source kube for the Kubernetes API",
            ));
        }
        Ok(config)
    }

    pub fn mesh(&self) -> MeshConfig {
        MeshConfig {
            trust_domain: self.trust_domain.clone(),
            cluster_id: self.cluster_id.clone(),
            root_namespace: self.root_namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
            ..MeshConfig::default()
        }
    }

    /// What provisioned waypoints are given.
    pub fn waypoint_settings(&self) -> crate::provision::Settings {
        crate::provision::Settings {
            image: self.waypoint_image.clone(),
            xds_address: self.waypoint_xds_address.clone(),
            xds_server_name: self
                .serving_names
                .first()
                .cloned()
                .unwrap_or_else(|| "istiod.istio-system.svc".into()),
            trust_domain: self.trust_domain.clone(),
            ..crate::provision::Settings::default()
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        match (&self.source, &self.dir) {
            (SourceKind::Dir, Some(dir)) => dir
                .parent()
                .map(|p| p.join(".istiod-lite"))
                .unwrap_or_else(|| PathBuf::from(".istiod-lite")),
            _ => PathBuf::from("/var/lib/istiod-lite"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_args(["istiod-lite", "--dir", "/tmp/cluster/resources"]).unwrap();
        assert_eq!(c.source, SourceKind::Dir);
        assert_eq!(c.grpc_listen.port(), 15012);
        assert_eq!(c.cert_ttl, Duration::from_secs(86400));
        assert_eq!(c.state_dir(), PathBuf::from("/tmp/cluster/.istiod-lite"));
        assert_eq!(c.trusted_node_accounts, vec!["istio-system/ztunnel"]);

        let err = Config::from_args(["istiod-lite"]).unwrap_err();
        assert!(err.to_string().contains("--dir"), "{err}");
        let err = Config::from_args(["istiod-lite", "--dir", "d", "--cert-ttl", "3d"]).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let err = Config::from_args(["istiod-lite", "--dir", "d", "--root-cert", "c"]).unwrap_err();
        assert!(err.to_string().contains("--root-key"), "{err}");
        assert!(Config::from_args(["istiod-lite", "--source", "kube"]).is_ok());
    }
}
