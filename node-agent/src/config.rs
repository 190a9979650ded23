//! The node agent's one config: command-line flags, each also readable from
//! an environment variable (shown in `--help`), and the `install-cni`
//! subcommand a DaemonSet runs to put the plugin on the host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where the registry (namespaces and pods) is filled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// A directory of Kubernetes YAML files, watched live (the default).
    Dir,
    /// The Kubernetes API (in-cluster config, or a kubeconfig).
    Kube,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Ambit's node agent: enrols this node's pods in the mesh (redirection rules in each \
             pod's netns, the netns handed to ztunnel over ZDS) and serves the CNI plugin."
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Subcommands>,

    /// This node's name: only pods with this `spec.nodeName` are enrolled.
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,

    /// Where namespaces and pods come from.
    #[arg(long, env = "NODE_AGENT_SOURCE", value_enum, default_value = "dir")]
    pub source: SourceKind,

    /// The directory of YAML files (source `dir`).
    #[arg(long, env = "NODE_AGENT_DIR")]
    pub dir: Option<PathBuf>,

    /// A kubeconfig file (source `kube`); in-cluster config or
    /// `KUBECONFIG`/`~/.kube/config` when unset.
    #[arg(long, env = "NODE_AGENT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The ZDS socket ztunnels connect to.
    #[arg(long, env = "NODE_AGENT_ZDS_SOCKET", default_value = mesh_core::zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,

    /// The socket the CNI plugin talks to.
    #[arg(long, env = "NODE_AGENT_CNI_SOCKET", default_value = crate::cni::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,

    /// Where pod records are kept across restarts.
    #[arg(
        long,
        env = "NODE_AGENT_STATE_DIR",
        default_value = "/var/lib/ambit/node-agent"
    )]
    pub state_dir: PathBuf,

    /// `/ready`, `/metrics`, `/debug/pods`.
    #[arg(long, env = "NODE_AGENT_ADMIN", default_value = "127.0.0.1:15031")]
    pub admin: SocketAddr,

    /// Longest a new pod waits for a ztunnel to take it.
    #[arg(long, env = "NODE_AGENT_ACK_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub ack_timeout: Duration,

    /// ztunnel's packet mark (`PACKET_MARK`), as in the redirection rules.
    #[arg(long, env = "NODE_AGENT_MARK", default_value = "0x539", value_parser = mark)]
    pub mark: u32,

    /// Rewrite the source of kubelet probes to enrolled pods (spec 6.2) with
    /// rules in this process's network namespace (run it in the node's).
    #[arg(long, env = "NODE_AGENT_PROBE_SNAT")]
    pub probe_snat: bool,

    /// How long shutdown waits for requests in flight.
    #[arg(long, env = "NODE_AGENT_DRAIN_DEADLINE", default_value = "5s", value_parser = duration)]
    pub drain_deadline: Duration,

    /// Log filter (`info`, `debug`, `node_agent=debug,info`...).
    #[arg(long, env = "NODE_AGENT_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Subcommands {
    /// Copies `ambit-cni` into the host's CNI bin dir and chains it into the
    /// first network configuration of the conf dir, then exits.
    InstallCni(InstallCni),
}

#[derive(Clone, Debug, Args)]
pub struct InstallCni {
    /// The host's CNI plugin directory (e.g. /opt/cni/bin).
    #[arg(long, env = "NODE_AGENT_CNI_BIN_DIR")]
    pub cni_bin_dir: PathBuf,

    /// The host's CNI configuration directory (e.g. /etc/cni/net.d).
    #[arg(long, env = "NODE_AGENT_CNI_CONF_DIR")]
    pub cni_conf_dir: PathBuf,

    /// The plugin binary to copy; by default `ambit-cni` beside this program.
    #[arg(long, env = "NODE_AGENT_CNI_BINARY")]
    pub cni_binary: Option<PathBuf>,

    /// The socket the plugin is configured to talk to.
    #[arg(long, env = "NODE_AGENT_CNI_SOCKET", default_value = crate::cni::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,

    /// The plugin's `timeout` key.
    #[arg(long, env = "NODE_AGENT_CNI_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub cni_timeout: Duration,

    /// Remove the plugin from the configuration and the bin dir instead.
    #[arg(long)]
    pub uninstall: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s)
}

fn mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a mark like 0x539 or 1337"))
}

impl Config {
    /// Parses the command line (and environment), also refusing what clap
    /// cannot express: running the agent needs `--node`, and `--dir` with
    /// the directory source.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::CommandFactory;
        let config = Config::try_parse_from(args)?;
        if config.command.is_some() {
            return Ok(config);
        }
        if config.node.as_deref().is_none_or(str::is_empty) {
            return Err(Config::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the node agent needs --node NAME (or NODE_NAME): the node whose pods it enrols",
            ));
        }
        if config.source == SourceKind::Dir && config.dir.is_none() {
            return Err(Config::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the directory source needs --dir PATH (or NODE_AGENT_DIR); use --source kube for the Kubernetes API",
            ));
        }
        Ok(config)
    }

    pub fn node(&self) -> &str {
        self.node.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_args(["node-agent", "--node", "n1", "--dir", "/tmp/r"]).unwrap();
        assert_eq!(c.zds_socket, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
        assert_eq!(c.cni_socket, PathBuf::from("/var/run/ambit/cni.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ambit/node-agent"));
        assert_eq!(c.admin.port(), 15031);
        assert_eq!(c.ack_timeout, Duration::from_secs(10));
        assert_eq!(c.mark, 0x539);
        let c = Config::from_args([
            "node-agent",
            "--node",
            "n1",
            "--source",
            "kube",
            "--mark",
            "1337",
        ])
        .unwrap();
        assert_eq!(c.mark, 1337);

        let err = Config::from_args(["node-agent", "--dir", "/tmp/r"]).unwrap_err();
        assert!(err.to_string().contains("--node"), "{err}");
        let err = Config::from_args(["node-agent", "--node", "n1"]).unwrap_err();
        assert!(err.to_string().contains("--dir"), "{err}");
        let err = Config::from_args(["node-agent", "--node", "n", "--dir", "d", "--mark", "x"])
            .unwrap_err();
        assert!(err.to_string().contains("mark"), "{err}");
    }

    #[test]
    fn install_cni_needs_no_node() {
        let c = Config::from_args([
            "node-agent",
            "install-cni",
            "--cni-bin-dir",
            "/opt/cni/bin",
            "--cni-conf-dir",
            "/etc/cni/net.d",
        ])
        .unwrap();
        let Some(Subcommands::InstallCni(install)) = c.command else {
            panic!("install-cni")
        };
        assert_eq!(install.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert!(!install.uninstall);
        assert!(Config::from_args(["node-agent", "install-cni", "--cni-bin-dir", "/b"]).is_err());
    }
}
