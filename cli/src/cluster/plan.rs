//! The cluster plan: from a `ClusterSpec` to every name, address and
//! command the runner will create, as plain data. Pure, so the shape of a
//! cluster (node CIDRs, namespace names, pod commands, errors for a pod that
//! cannot run) is tested without creating anything. The plan is saved in
//! the state directory, so the pod runner and `ambit status` read the same.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::spec::ClusterSpec;

/// The fabric joining the nodes: a bridge in its own namespace, where
/// istiod-lite also runs, on the bridge's address.
pub const FABRIC_CIDR: &str = "10.255.0.1/24";
/// Nodes take fabric addresses from here on, in name order.
const FIRST_NODE_HOST: u8 = 10;
/// The most nodes one fabric /24 holds after the first node address.
const MAX_NODES: usize = 200;
/// Nodes without `spec.podCIDR` get `10.244.<index>.0/24`.
const DEFAULT_POD_CIDR_BASE: [u8; 2] = [10, 244];
/// The interface of each pod, as a kubelet names it.
pub const POD_IFNAME: &str = "eth0";

/// Why a directory cannot become a cluster; each names the object to fix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("cluster name {0:?}: use 1 to 20 characters of a-z, 0-9 and '-'")]
    BadClusterName(String),
    #[error("the directory defines no Node: add a `kind: Node` document per node")]
    NoNodes,
    #[error("{} nodes: at most {MAX_NODES} fit on the fabric", .0)]
    TooManyNodes(usize),
    #[error("node {node}: spec.podCIDR {value:?}: {reason}")]
    BadPodCidr {
        node: String,
        value: String,
        reason: String,
    },
    #[error("node {a} and node {b} have overlapping pod CIDRs ({cidr_a}, {cidr_b})")]
    OverlappingCidrs {
        a: String,
        cidr_a: Ipv4Net,
        b: String,
        cidr_b: Ipv4Net,
    },
    #[error("pod {pod}: spec.nodeName is not set; name the node it runs on")]
    PodWithoutNode { pod: String },
    #[error("pod {pod}: spec.nodeName {node:?} is not a Node of this directory (nodes: {known})")]
    UnknownNode {
        pod: String,
        node: String,
        known: String,
    },
    #[error("pod {pod}: spec.containers is empty; the first container's command is what runs")]
    NoContainers { pod: String },
    #[error(
        "pod {pod}: spec.containers[0] has no command; set `command:` (and `args:`), e.g. [ambit, app, server, --port, \"8080\"]"
    )]
    NoCommand { pod: String },
    #[error("pod {pod}: spec.containers[0].env[{index}] ({name}): only `value` is supported")]
    UnsupportedEnv {
        pod: String,
        index: usize,
        name: String,
    },
    #[error("pod {pod}: spec.hostNetwork pods are not supported by the local cluster")]
    HostNetwork { pod: String },
    #[error("pod {0} is defined twice")]
    DuplicatePod(String),
}

/// Everything `ambit up` creates, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub cluster: String,
    /// The cluster directory (canonical).
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    /// Whether istiod-lite, node agents, ztunnels and `ambit-cni` run.
    pub mesh: bool,
    pub fabric: FabricPlan,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FabricPlan {
    pub netns: String,
    pub bridge: String,
    /// The bridge's address; istiod-lite listens there.
    pub address: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    /// The node's address on the fabric (its `eth0`), also the pods' hostIP.
    pub address: Ipv4Net,
    /// The fabric end of the node's veth, inside the fabric namespace.
    pub fabric_port: String,
    pub pod_cidr: Ipv4Net,
    /// Routes to the other nodes' pod CIDRs through their fabric address.
    pub routes: Vec<Route>,
    /// This node's files: conflist, sockets, logs, configs.
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub to: Ipv4Net,
    pub via: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub netns: String,
    /// The sandbox id given to the CNI plugins.
    pub container_id: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports, for Services' named target ports.
    pub ports: BTreeMap<String, u16>,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePortPlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePortPlan {
    pub port: u16,
    pub protocol: String,
    /// A number, or a container port name resolved per pod.
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// Where and under which name a cluster is made.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub cluster: String,
    pub state_dir: PathBuf,
    pub mesh: bool,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn fabric_ip(&self) -> Ipv4Addr {
        self.fabric.address.addr()
    }
}

/// Plans the cluster `spec` describes.
pub fn plan(spec: &ClusterSpec, options: &PlanOptions) -> Result<Plan, PlanError> {
    let cluster = &options.cluster;
    if cluster.is_empty()
        || cluster.len() > 20
        || !cluster
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(PlanError::BadClusterName(cluster.clone()));
    }
    let fabric_address: Ipv4Net = FABRIC_CIDR.parse().expect("a valid constant");
    let nodes = plan_nodes(spec, options, fabric_address)?;
    let mut pods = Vec::new();
    for pod in &spec.pods {
        let planned = plan_pod(pod, cluster, &nodes)?;
        if pods.iter().any(|p: &PodPlan| p.key() == planned.key()) {
            return Err(PlanError::DuplicatePod(planned.key()));
        }
        pods.push(planned);
    }
    let services = spec.services.iter().filter_map(plan_service).collect();
    Ok(Plan {
        cluster: cluster.clone(),
        dir: spec.dir.clone(),
        state_dir: options.state_dir.clone(),
        mesh: options.mesh,
        fabric: FabricPlan {
            netns: format!("ambit-{cluster}-fabric"),
            bridge: "fabric0".into(),
            address: fabric_address,
        },
        nodes,
        pods,
        services,
    })
}

fn plan_nodes(
    spec: &ClusterSpec,
    options: &PlanOptions,
    fabric: Ipv4Net,
) -> Result<Vec<NodePlan>, PlanError> {
    let mut names: Vec<(String, Option<String>)> = spec
        .nodes
        .iter()
        .map(|n| {
            let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            (n.metadata.name.clone().unwrap_or_default(), cidr)
        })
        .collect();
    names.sort();
    names.dedup_by(|a, b| a.0 == b.0);
    if names.is_empty() {
        return Err(PlanError::NoNodes);
    }
    if names.len() > MAX_NODES {
        return Err(PlanError::TooManyNodes(names.len()));
    }
    let mut nodes: Vec<NodePlan> = Vec::new();
    for (index, (name, cidr)) in names.iter().enumerate() {
        let pod_cidr = match cidr {
            Some(value) => parse_pod_cidr(name, value, fabric)?,
            None => Ipv4Net::new(
                Ipv4Addr::new(
                    DEFAULT_POD_CIDR_BASE[0],
                    DEFAULT_POD_CIDR_BASE[1],
                    index as u8,
                    0,
                ),
                24,
            )
            .expect("a /24 is valid"),
        };
        let host = FIRST_NODE_HOST + index as u8;
        let [a, b, c, _] = fabric.network().octets();
        nodes.push(NodePlan {
            name: name.clone(),
            netns: format!("ambit-{}-node-{name}", options.cluster),
            address: Ipv4Net::new(Ipv4Addr::new(a, b, c, host), fabric.prefix_len())
                .expect("same prefix as the fabric"),
            fabric_port: format!("port{index}"),
            pod_cidr,
            routes: Vec::new(),
            dir: options.state_dir.join("nodes").join(name),
        });
    }
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            if a.pod_cidr.contains(&b.pod_cidr) || b.pod_cidr.contains(&a.pod_cidr) {
                return Err(PlanError::OverlappingCidrs {
                    a: a.name.clone(),
                    cidr_a: a.pod_cidr,
                    b: b.name.clone(),
                    cidr_b: b.pod_cidr,
                });
            }
        }
    }
    let all: Vec<(String, Ipv4Net, Ipv4Addr)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.pod_cidr, n.address.addr()))
        .collect();
    for node in &mut nodes {
        node.routes = all
            .iter()
            .filter(|(name, _, _)| *name != node.name)
            .map(|(_, to, via)| Route { to: *to, via: *via })
            .collect();
    }
    Ok(nodes)
}

fn parse_pod_cidr(node: &str, value: &str, fabric: Ipv4Net) -> Result<Ipv4Net, PlanError> {
    let bad = |reason: &str| PlanError::BadPodCidr {
        node: node.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let cidr: Ipv4Net = value
        .parse()
        .map_err(|_| bad("not an IPv4 CIDR such as 10.244.1.0/24"))?;
    if cidr != cidr.trunc() {
        return Err(bad("host bits are set"));
    }
    if cidr.prefix_len() > 29 {
        return Err(bad("too small: use /29 or larger"));
    }
    if cidr.contains(&fabric.network()) || fabric.contains(&cidr.network()) {
        return Err(bad("overlaps the fabric 10.255.0.0/24"));
    }
    Ok(cidr)
}

fn plan_pod(pod: &Pod, cluster: &str, nodes: &[NodePlan]) -> Result<PodPlan, PlanError> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return Err(PlanError::HostNetwork { pod: key });
    }
    let node = match spec.node_name.as_deref() {
        None | Some("") => return Err(PlanError::PodWithoutNode { pod: key }),
        Some(node) if !nodes.iter().any(|n| n.name == node) => {
            return Err(PlanError::UnknownNode {
                pod: key,
                node: node.into(),
                known: nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Some(node) => node.to_string(),
    };
    let Some(container) = spec.containers.first() else {
        return Err(PlanError::NoContainers { pod: key });
    };
    let mut command = container.command.clone().unwrap_or_default();
    command.extend(container.args.clone().unwrap_or_default());
    if command.is_empty() {
        return Err(PlanError::NoCommand { pod: key });
    }
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| stable_uid(&[cluster, &namespace, &name]));
    // What the downward API would give; the pod's own env may override.
    let mut env = vec![
        ("POD_NAME".to_string(), name.clone()),
        ("POD_NAMESPACE".to_string(), namespace.clone()),
        ("POD_UID".to_string(), uid.clone()),
        ("NODE_NAME".to_string(), node.clone()),
        (
            "SERVICE_ACCOUNT".to_string(),
            spec.service_account_name
                .clone()
                .filter(|sa| !sa.is_empty())
                .unwrap_or_else(|| "default".into()),
        ),
    ];
    for (index, var) in container.env.iter().flatten().enumerate() {
        if var.value_from.is_some() {
            return Err(PlanError::UnsupportedEnv {
                pod: key,
                index,
                name: var.name.clone(),
            });
        }
        env.retain(|(k, _)| *k != var.name);
        env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
    }
    Ok(PodPlan {
        netns: format!("ambit-{cluster}-pod-{namespace}.{name}"),
        container_id: container_id(&[cluster, &namespace, &name]),
        namespace,
        name,
        uid,
        node,
        command,
        env,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports: spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect(),
    })
}

fn plan_service(service: &k8s_openapi::api::core::v1::Service) -> Option<ServicePlan> {
    let spec = service.spec.as_ref()?;
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePortPlan {
                port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                target,
            })
        })
        .collect();
    Some(ServicePlan {
        namespace: service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: service.metadata.name.clone().unwrap_or_default(),
        cluster_ip,
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
    })
}

/// How the pods of a re-read directory differ from the running plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodDiff {
    pub added: Vec<PodPlan>,
    /// Keys of pods no longer defined.
    pub removed: Vec<String>,
    /// Pods whose labels changed (applied in place, as on an API server).
    pub relabelled: Vec<PodPlan>,
    /// Keys of pods whose spec changed otherwise: pods are immutable, so
    /// this needs the pod deleted and defined again.
    pub changed: Vec<String>,
}

impl PodDiff {
    pub fn is_empty(&self) -> bool {
        *self == PodDiff::default()
    }
}

pub fn diff_pods(running: &[PodPlan], wanted: &[PodPlan]) -> PodDiff {
    let mut diff = PodDiff::default();
    for pod in wanted {
        match running.iter().find(|p| p.key() == pod.key()) {
            None => diff.added.push(pod.clone()),
            Some(old) if old == pod => {}
            Some(old) => {
                let relabelled = PodPlan {
                    labels: pod.labels.clone(),
                    ..old.clone()
                };
                if relabelled == *pod {
                    diff.relabelled.push(pod.clone());
                } else {
                    diff.changed.push(pod.key());
                }
            }
        }
    }
    diff.removed = running
        .iter()
        .filter(|p| !wanted.iter().any(|w| w.key() == p.key()))
        .map(PodPlan::key)
        .collect();
    diff
}

/// FNV-1a: a stable hash, so a pod without `metadata.uid` keeps the same
/// generated one across runs (the node agent's records key on it).
fn fnv1a(seed: u64, parts: &[&str]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// A UUID-shaped id derived from `parts`.
pub fn stable_uid(parts: &[&str]) -> String {
    let hex = format!("{:016x}{:016x}", fnv1a(1, parts), fnv1a(2, parts));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A 64-hex-digit sandbox id, as container runtimes give CNI.
fn container_id(parts: &[&str]) -> String {
    (0..4)
        .map(|i| format!("{:016x}", fnv1a(10 + i, parts)))
        .collect()
}

/// `<state>/plan.json`.
pub fn plan_path(state_dir: &Path) -> PathBuf {
    state_dir.join("plan.json")
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
