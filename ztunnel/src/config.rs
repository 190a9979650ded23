//! The one ztunnel configuration: a YAML file with the proxy's own settings
//! (`proxy:`) and, for a mesh without a control plane, the workload model
//! (`workloads`, `services`, `authorizationPolicies`, `peerAuthentications`).
//! It is parsed and validated before any port is bound; an error names the
//! field and the line.

mod duration;
mod inpod;
pub mod model;
mod xds;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::HumanDuration;
pub use inpod::InpodConfig;
pub use model::*;
pub use xds::XdsConfig;

/// The root namespace: a PeerAuthentication or GLOBAL policy there is mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub authorization_policies: Vec<Authorization>,
    #[serde(default)]
    pub peer_authentications: Vec<PeerAuthentication>,
}

/// The proxy's own settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// `namespace/name` of the workload this ztunnel serves (dedicated mode).
    #[serde(default)]
    pub workload: Option<WorkloadRef>,
    /// Serve every pod the node agent hands over ZDS, with listeners inside
    /// each pod's network namespace (shared, in-pod mode).
    #[serde(default)]
    pub inpod: Option<InpodConfig>,
    /// Where certificates come from.
    pub certificates: Certificates,
    #[serde(default)]
    pub listeners: Listeners,
    /// `SO_MARK` on every socket ztunnel opens towards peers and apps, so
    /// redirection rules can exempt ztunnel's own traffic.
    #[serde(default = "default_mark")]
    pub packet_mark: Option<u32>,
    /// How long open connections may take to finish after SIGTERM.
    #[serde(default = "default_drain")]
    pub drain_deadline: HumanDuration,
    /// The name of this cluster in telemetry.
    #[serde(default = "default_cluster")]
    pub cluster_id: String,
    /// Proxy worker threads; 0 = one per CPU this process may run on.
    #[serde(default)]
    pub worker_threads: usize,
    /// Timeout for TCP connects to peers and apps.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Take workloads, services and policies from a control plane over
    /// workload xDS instead of this file.
    #[serde(default)]
    pub xds: Option<XdsConfig>,
}

fn default_mark() -> Option<u32> {
    Some(0x539)
}
fn default_drain() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_cluster() -> String {
    "Kubernetes".into()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
}

impl<'de> Deserialize<'de> for WorkloadRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(WorkloadRef {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(serde::de::Error::custom(format!(
                "workload {s:?} is not <namespace>/<name>"
            ))),
        }
    }
}

impl Serialize for WorkloadRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.namespace, self.name))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificates {
    /// Issue certificates locally from this CA (root certificate and key, PEM).
    #[serde(default)]
    pub ca: Option<LocalCaConfig>,
    /// Or use fixed certificates.
    #[serde(default)]
    pub files: Vec<CertFiles>,
    /// Or fetch them from the control plane's CA (istiod or istiod-lite).
    #[serde(default)]
    pub control_plane: Option<ControlPlaneCa>,
    /// Extra trust roots (PEM files) besides those of the certificates.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalCaConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
}

fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

/// The control plane's CA (spec 4): certificates for the served workloads'
/// identities, renewed at half-life; peers are verified with the roots the CA
/// returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneCa {
    /// `https://host:port` (15012).
    pub address: String,
    /// Name to verify the server certificate against; the address's host when unset.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM root(s) that sign the control plane's serving certificate.
    pub root_cert: PathBuf,
    /// Bearer token, literally...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or read from this file on every request (rotated tokens).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `clusterid` metadata; `proxy.clusterId` when unset.
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// Ask for workload identities with this proxy's own credential (a node
    /// proxy serving many workloads).
    #[serde(default)]
    pub impersonate: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

/// Listen addresses (spec section 1). Port 0 picks a free port (tests).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    #[serde(default = "l_outbound")]
    pub outbound: SocketAddr,
    #[serde(default = "l_inbound")]
    pub inbound: SocketAddr,
    #[serde(default = "l_plaintext")]
    pub inbound_plaintext: SocketAddr,
    #[serde(default = "l_admin")]
    pub admin: SocketAddr,
    #[serde(default = "l_metrics")]
    pub metrics: SocketAddr,
    #[serde(default = "l_readiness")]
    pub readiness: SocketAddr,
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
}
fn l_outbound() -> SocketAddr {
    any(15001)
}
fn l_inbound() -> SocketAddr {
    any(15008)
}
fn l_plaintext() -> SocketAddr {
    any(15006)
}
fn l_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn l_metrics() -> SocketAddr {
    any(15020)
}
fn l_readiness() -> SocketAddr {
    any(15021)
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            outbound: l_outbound(),
            inbound: l_inbound(),
            inbound_plaintext: l_plaintext(),
            admin: l_admin(),
            metrics: l_metrics(),
            readiness: l_readiness(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{message}", prefix(path))]
    Parse { path: PathBuf, message: String },
    #[error("{}{field}: {message}", prefix(path))]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are taken
    /// from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut config = Self::parse(&text).map_err(|e| e.at(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: describe(&e),
        })?;
        config.fill_defaults();
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let c = &mut self.proxy.certificates;
        if let Some(ca) = &mut c.ca {
            fix(&mut ca.cert);
            fix(&mut ca.key);
        }
        for f in &mut c.files {
            fix(&mut f.cert);
            fix(&mut f.key);
            fix(&mut f.roots);
        }
        c.roots.iter_mut().for_each(fix);
        if let Some(cp) = &mut c.control_plane {
            fix(&mut cp.root_cert);
            if let Some(t) = &mut cp.token_file {
                fix(t);
            }
        }
        if let Some(x) = &mut self.proxy.xds {
            fix(&mut x.root_cert);
            if let Some(t) = &mut x.token_file {
                fix(t);
            }
        }
    }

    fn fill_defaults(&mut self) {
        let cluster = self.proxy.cluster_id.clone();
        for w in &mut self.workloads {
            if w.uid.is_empty() {
                w.uid = format!("{cluster}//Pod/{}/{}", w.namespace, w.name);
            }
            if w.cluster_id.is_empty() {
                w.cluster_id = cluster.clone();
            }
        }
        for s in &mut self.services {
            if s.hostname.is_empty() {
                s.hostname = format!("{}.{}.svc.cluster.local", s.name, s.namespace);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            field,
            message,
        };
        inpod::validate(&self.proxy).map_err(|(field, message)| invalid(field, message))?;
        let certs = &self.proxy.certificates;
        let sources = usize::from(certs.ca.is_some())
            + usize::from(!certs.files.is_empty())
            + usize::from(certs.control_plane.is_some());
        if sources != 1 {
            return Err(invalid(
                "proxy.certificates".into(),
                "set exactly one of ca (a root certificate and key to issue from), files, or controlPlane".into(),
            ));
        }
        if let Some(cp) = &certs.control_plane {
            let field = |f: &str| format!("proxy.certificates.controlPlane.{f}");
            if !cp.address.starts_with("https://") {
                return Err(invalid(
                    field("address"),
                    format!("{:?} must be an https:// URL", cp.address),
                ));
            }
            if cp.token.is_some() && cp.token_file.is_some() {
                return Err(invalid(
                    field("token"),
                    "set token or tokenFile, not both".into(),
                ));
            }
            if cp.ttl.0 < Duration::from_secs(60) {
                return Err(invalid(
                    field("ttl"),
                    format!("{:?} is too short; at least 1m", cp.ttl.0),
                ));
            }
        }
        if let Some(x) = &self.proxy.xds {
            x.validate()
                .map_err(|(field, message)| invalid(field, message))?;
            for (field, set) in [
                ("workloads", !self.workloads.is_empty()),
                ("services", !self.services.is_empty()),
                (
                    "authorizationPolicies",
                    !self.authorization_policies.is_empty(),
                ),
                ("peerAuthentications", !self.peer_authentications.is_empty()),
            ] {
                if set {
                    return Err(invalid(
                        field.into(),
                        "must be empty when proxy.xds is set: the control plane supplies \
                         workloads, services and policies"
                            .into(),
                    ));
                }
            }
        }
        let mut uids = HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let field = |f: &str| format!("workloads[{i}].{f}");
            if !uids.insert(&w.uid) {
                return Err(invalid(
                    field("uid"),
                    format!("{:?} is used by another workload", w.uid),
                ));
            }
            if w.addresses.is_empty() {
                return Err(invalid(
                    field("addresses"),
                    "a workload needs at least one address".into(),
                ));
            }
            mesh_core::Identity::for_workload(&w.trust_domain, &w.namespace, &w.service_account)
                .map_err(|e| invalid(field("serviceAccount"), e.to_string()))?;
            for (key, ports) in &w.services {
                if !key.contains('/') {
                    return Err(invalid(
                        field("services"),
                        format!("{key:?} is not <namespace>/<hostname>"),
                    ));
                }
                for p in ports {
                    if p.service_port == 0 {
                        return Err(invalid(field("services"), format!("{key}: servicePort 0")));
                    }
                }
            }
        }
        let mut vips = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            for p in &s.ports {
                if p.service_port == 0 {
                    return Err(invalid(
                        format!("services[{i}].ports"),
                        "servicePort 0".into(),
                    ));
                }
            }
            for a in &s.addresses {
                if !vips.insert((s.namespace.clone(), *a)) {
                    return Err(invalid(
                        format!("services[{i}].addresses"),
                        format!("{a} is already a VIP of another service in {}", s.namespace),
                    ));
                }
            }
        }
        let mut keys = HashSet::new();
        for (i, p) in self.authorization_policies.iter().enumerate() {
            if !keys.insert(p.key()) {
                return Err(invalid(
                    format!("authorizationPolicies[{i}].name"),
                    format!("{} is defined twice", p.key()),
                ));
            }
        }
        Ok(())
    }

    /// The configured drain deadline.
    pub fn drain_deadline(&self) -> Duration {
        self.proxy.drain_deadline.0
    }
}

fn prefix(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

impl ConfigError {
    fn at(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { field, message, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            },
            other => other,
        }
    }
}

/// "<field path>: <what is wrong> at line L column C". serde_yaml names only the
/// parent of a field whose value failed a custom check, so the exact path comes
/// from serde_path_to_error and serde_yaml's own prefix is dropped.
fn describe(e: &serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner();
    let mut msg = inner.to_string();
    if let Some((prefix, rest)) = msg.split_once(": ")
        && !prefix.contains(' ')
        && path.starts_with(
            prefix.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '['),
        )
    {
        msg = rest.to_string();
    }
    if let Some(loc) = inner.location()
        && !msg.contains("line ")
    {
        msg = format!("{msg} at line {} column {}", loc.line(), loc.column());
    }
    if path.is_empty() || path == "." {
        msg
    } else {
        format!("{path}: {msg}")
    }
}

#[cfg(test)]
mod tests;
