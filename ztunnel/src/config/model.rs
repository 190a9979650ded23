//! The workload model as YAML: workloads, services, authorization policies and
//! peer authentications, shaped like the workload xDS resources (spec 3.4 and
//! 10.1) so the control plane fills the same model later.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    /// Plain TCP to the workload.
    None,
    #[default]
    Hbone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    #[default]
    Deployment,
    Cronjob,
    Pod,
    Job,
}

impl WorkloadType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Deployment => "deployment",
            WorkloadType::Cronjob => "cronjob",
            WorkloadType::Pod => "pod",
            WorkloadType::Job => "job",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub service_port: u16,
    #[serde(default)]
    pub target_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub subzone: String,
}

/// Where a waypoint (or gateway) is (spec 3.4 GatewayAddress): a Service by
/// hostname, resolved to one of its endpoints, or a fixed address. In YAML
/// exactly one of `hostname: {namespace, hostname}` or `address: {network,
/// address}`, plus `hboneMtlsPort` (default 15008).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GatewayAddressYaml", into = "GatewayAddressYaml")]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    /// The gateway's HBONE port.
    pub hbone_mtls_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayDestination {
    /// The waypoint Service, by namespace and hostname (what istiod sends).
    Hostname { namespace: String, hostname: String },
    /// A fixed address; the network is kept for completeness (one network here).
    Address { network: String, address: IpAddr },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespacedHostnameYaml {
    namespace: String,
    hostname: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkAddressYaml {
    #[serde(default)]
    network: String,
    address: IpAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayAddressYaml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<NamespacedHostnameYaml>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<NetworkAddressYaml>,
    #[serde(default = "default_hbone_port")]
    hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    mesh_core::hbone::PORT
}

impl TryFrom<GatewayAddressYaml> for GatewayAddress {
    type Error = String;
    fn try_from(y: GatewayAddressYaml) -> Result<Self, String> {
        if y.hbone_mtls_port == 0 {
            return Err("hboneMtlsPort: port 0".into());
        }
        let destination = match (y.hostname, y.address) {
            (Some(h), None) => {
                if h.namespace.is_empty() || h.hostname.is_empty() {
                    return Err("hostname: namespace and hostname must both be set".into());
                }
                GatewayDestination::Hostname {
                    namespace: h.namespace,
                    hostname: h.hostname,
                }
            }
            (None, Some(a)) => GatewayDestination::Address {
                network: a.network,
                address: a.address,
            },
            _ => return Err("a waypoint sets exactly one of hostname and address".into()),
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port: y.hbone_mtls_port,
        })
    }
}

impl From<GatewayAddress> for GatewayAddressYaml {
    fn from(g: GatewayAddress) -> Self {
        let (hostname, address) = match g.destination {
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => (
                Some(NamespacedHostnameYaml {
                    namespace,
                    hostname,
                }),
                None,
            ),
            GatewayDestination::Address { network, address } => {
                (None, Some(NetworkAddressYaml { network, address }))
            }
        };
        GatewayAddressYaml {
            hostname,
            address,
            hbone_mtls_port: g.hbone_mtls_port,
        }
    }
}

impl std::fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.destination {
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => {
                // `<name>.<ns>.svc...` shows as `<ns>/<name>`, the Gateway's key.
                let name = hostname.split('.').next().unwrap_or(hostname);
                write!(f, "{namespace}/{name}")
            }
            GatewayDestination::Address { address, .. } => {
                write!(
                    f,
                    "{}",
                    std::net::SocketAddr::new(*address, self.hbone_mtls_port)
                )
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Primary key; defaults to `<cluster>//Pod/<namespace>/<name>`.
    #[serde(default)]
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub tunnel_protocol: TunnelProtocol,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: WorkloadType,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub status: HealthStatus,
    /// `namespace/hostname` of each service this workload is an endpoint of.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<PortMapping>>,
    /// `namespace/name` keys of the selector-scoped policies that apply.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// Labels, used only to select PeerAuthentications in a local file.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: Option<u32>,
    #[serde(default)]
    pub locality: Locality,
    /// Traffic addressed to this workload's IP goes via this waypoint, and
    /// this workload accepts HBONE only from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancingMode {
    #[default]
    UnspecifiedMode,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancing {
    #[serde(default)]
    pub mode: LoadBalancingMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Defaults to `<name>.<namespace>.svc.cluster.local`.
    #[serde(default)]
    pub hostname: String,
    /// Virtual IPs; empty for a headless service.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub subject_alt_names: Vec<mesh_core::Identity>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Traffic to this service goes via this waypoint, and its endpoints
    /// accept HBONE only from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    Global,
    #[default]
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Logged only; never changes the decision.
    Audit,
}

/// A string condition: `{exact|prefix|suffix: s}`, `{presence: {}}`, or the
/// AuthorizationPolicy shorthand (`*` = presence, `*x` = suffix, `x*` = prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }

    pub fn from_shorthand(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err(
                "an empty string match would match nothing or everything; write \"*\" for presence"
                    .into(),
            );
        }
        Ok(if s == "*" {
            StringMatch::Presence
        } else if let Some(rest) = s.strip_prefix('*') {
            StringMatch::Suffix(rest.to_string())
        } else if let Some(rest) = s.strip_suffix('*') {
            StringMatch::Prefix(rest.to_string())
        } else {
            StringMatch::Exact(s.to_string())
        })
    }
}

/// Written in the same map form it is read from (`{exact: s}`, `{presence: {}}`),
/// so a config round-trips through YAML and `/config_dump` shows the xDS shape.
impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            StringMatch::Exact(v) => m.serialize_entry("exact", v)?,
            StringMatch::Prefix(v) => m.serialize_entry("prefix", v)?,
            StringMatch::Suffix(v) => m.serialize_entry("suffix", v)?,
            StringMatch::Presence => {
                m.serialize_entry("presence", &BTreeMap::<String, String>::new())?
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Obj {
            exact: Option<String>,
            prefix: Option<String>,
            suffix: Option<String>,
            presence: Option<serde_yaml::Value>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Short(String),
            Obj(Obj),
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d).map_err(|_| {
            D::Error::custom(
                "expected a string or one of {exact|prefix|suffix: <string>} or {presence: {}}",
            )
        })?;
        match raw {
            Raw::Short(s) => StringMatch::from_shorthand(&s).map_err(D::Error::custom),
            Raw::Obj(o) => {
                let set = [
                    o.exact.is_some(),
                    o.prefix.is_some(),
                    o.suffix.is_some(),
                    o.presence.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if set != 1 {
                    return Err(D::Error::custom(
                        "a string match sets exactly one of exact, prefix, suffix, presence",
                    ));
                }
                Ok(match o {
                    Obj { exact: Some(s), .. } => StringMatch::Exact(s),
                    Obj {
                        prefix: Some(s), ..
                    } => StringMatch::Prefix(s),
                    Obj {
                        suffix: Some(s), ..
                    } => StringMatch::Suffix(s),
                    _ => StringMatch::Presence,
                })
            }
        }
    }
}

/// An IP or CIDR; a bare IP is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address or CIDR")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// The fields of one Match. Every kind present must hold (AND); within a kind,
/// a positive list needs any element, a negative list none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub namespaces: Vec<StringMatch>,
    #[serde(default)]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(default)]
    pub principals: Vec<StringMatch>,
    #[serde(default)]
    pub not_principals: Vec<StringMatch>,
    #[serde(default)]
    pub source_ips: Vec<Cidr>,
    #[serde(default)]
    pub not_source_ips: Vec<Cidr>,
    #[serde(default)]
    pub destination_ips: Vec<Cidr>,
    #[serde(default)]
    pub not_destination_ips: Vec<Cidr>,
    #[serde(default)]
    pub destination_ports: Vec<u16>,
    #[serde(default)]
    pub not_destination_ports: Vec<u16>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default)]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// L7 attributes ztunnel cannot check. They are accepted so a policy
    /// written for a waypoint parses, and they only ever narrow an ALLOW or
    /// widen a DENY (see `authz`).
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
}

impl Match {
    /// Names of the L7-only fields that are set.
    pub fn l7_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, set) in [
            ("hosts", !self.hosts.is_empty()),
            ("notHosts", !self.not_hosts.is_empty()),
            ("methods", !self.methods.is_empty()),
            ("notMethods", !self.not_methods.is_empty()),
            ("paths", !self.paths.is_empty()),
            ("notPaths", !self.not_paths.is_empty()),
            ("requestPrincipals", !self.request_principals.is_empty()),
            (
                "notRequestPrincipals",
                !self.not_request_principals.is_empty(),
            ),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }

    /// Whether any L4 field is set.
    pub fn has_l4_fields(&self) -> bool {
        !(self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clause {
    #[serde(default)]
    pub matches: Vec<Match>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub clauses: Vec<Clause>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub dry_run: bool,
}

impl Authorization {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    Permissive,
    Strict,
    Disable,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's PeerAuthentication: `STRICT` refuses plaintext to the selected
/// workloads. In the root namespace it applies mesh-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Mtls,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, Mtls>,
}
