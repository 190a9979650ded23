//! Kubernetes Services: the Service resource, the per-endpoint port map of a
//! pod behind a Service, and endpoints of selector-less Services from
//! EndpointSlices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::istio::workload::{
    AppProtocol, IpFamilies, NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload,
    WorkloadStatus, WorkloadType,
};

use super::labels;
use super::waypoint::{BindingSource, TrafficKind, Waypoints};
use super::{MeshConfig, condition, in_namespace, ip_bytes, service_key};
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

pub fn hostname(name: &str, namespace: &str, mesh: &MeshConfig) -> String {
    format!("{name}.{namespace}.svc.{}", mesh.cluster_domain)
}

fn is_external_name(svc: &KubeService) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// The Service resource of a Kubernetes Service; None for ExternalName.
pub fn service_resource(
    svc: &KubeService,
    store: &Store,
    mesh: &MeshConfig,
    waypoints: &Waypoints,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> Option<Service> {
    if is_external_name(svc) {
        return None;
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let key = NamespacedName::new(&namespace, &name);
    let spec = svc.spec.clone().unwrap_or_default();

    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_ref());
    }
    let mut addresses = Vec::new();
    for raw in ips {
        if raw == "None" || raw.is_empty() {
            continue;
        }
        match raw.parse::<IpAddr>() {
            Ok(ip) => addresses.push(NetworkAddress {
                network: mesh.network.clone(),
                address: ip_bytes(ip),
                length: None,
            }),
            Err(_) => {
                conditions.insert(condition(
                    Kind::Service,
                    &key,
                    "Accepted",
                    false,
                    "InvalidClusterIP",
                    format!(
                        "spec.clusterIPs has \"{raw}\", which is not an IP address; it is left out"
                    ),
                ));
            }
        }
    }

    let mut ports: Vec<Port> = spec.ports.iter().flatten().map(service_port).collect();
    ports.sort_by_key(|p| (p.service_port, p.target_port));

    let ip_families = match spec.ip_families.as_deref().unwrap_or_default() {
        [one] if one == "IPv4" => IpFamilies::Ipv4Only,
        [one] if one == "IPv6" => IpFamilies::Ipv6Only,
        [_, _] => IpFamilies::Dual,
        _ => IpFamilies::Automatic,
    };

    // The waypoint's own Service never goes through a waypoint.
    let own_labels = svc.metadata.labels.as_ref();
    let is_waypoint_service = waypoints.is_waypoint(&key)
        || own_labels.is_some_and(|l| l.contains_key(labels::GATEWAY_NAME));
    let ns_key = NamespacedName::cluster(&namespace);
    let ns_labels = store
        .namespaces
        .get(&ns_key)
        .and_then(|n| n.metadata.labels.as_ref());
    let waypoint = if is_waypoint_service {
        None
    } else {
        waypoints.resolve(
            TrafficKind::Service,
            BindingSource {
                kind: Kind::Service,
                key: &key,
                labels: own_labels,
            },
            BindingSource {
                kind: Kind::Namespace,
                key: &ns_key,
                labels: ns_labels,
            },
            conditions,
        )
    };
    let ingress_use_waypoint = [own_labels, ns_labels]
        .into_iter()
        .find_map(|l| l.and_then(|l| l.get(labels::INGRESS_USE_WAYPOINT)))
        .is_some_and(|v| v == "true");

    Some(Service {
        hostname: hostname(&name, &namespace, mesh),
        name,
        namespace,
        addresses,
        ports,
        waypoint,
        ip_families: ip_families as i32,
        ingress_use_waypoint,
        ..Default::default()
    })
}

/// A Service port: a numbered target port as is, a named one per endpoint (0),
/// an absent one the service port.
fn service_port(p: &ServicePort) -> Port {
    let service_port = u32::try_from(p.port).unwrap_or(0);
    let target_port = match &p.target_port {
        None => service_port,
        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(_)) => 0,
    };
    Port {
        service_port,
        target_port,
        app_protocol: app_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
    }
}

/// `appProtocol` when set, else the port name's protocol prefix.
pub fn app_protocol(app_protocol: Option<&str>, port_name: Option<&str>) -> AppProtocol {
    let by_name = |s: &str| match s.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" | "kubernetes.io/wss" => AppProtocol::Http11,
        "http2" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" | "grpc-web" => AppProtocol::Grpc,
        "tcp" => AppProtocol::Tcp,
        "tls" | "https" => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    };
    if let Some(p) = app_protocol {
        return by_name(p);
    }
    let name = port_name.unwrap_or_default();
    by_name(name.split('-').next().unwrap_or_default())
}

/// The per-endpoint port map of `pod` behind `svc`, when the Service's
/// selector picks the pod. Named target ports resolve against the pod's
/// container ports; a name the pod does not have leaves that port out.
pub fn pod_ports(svc: &KubeService, pod: &Pod) -> Option<PortList> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref()?;
    if is_external_name(svc) || !super::selects(selector, pod.metadata.labels.as_ref()) {
        return None;
    }
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let service_port = u32::try_from(p.port).unwrap_or(0);
        let target_port = match &p.target_port {
            None => Some(service_port),
            Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
            Some(IntOrString::String(name)) => container_port(pod, name),
        };
        if let Some(target_port) = target_port {
            ports.push(Port {
                service_port,
                target_port,
                app_protocol: app_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
            });
        }
    }
    ports.sort_by_key(|p| (p.service_port, p.target_port));
    Some(PortList { ports })
}

fn container_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u32::try_from(p.container_port).ok())
}

/// Endpoints of selector-less Services: an address of a known pod adds the
/// Service to that pod's Workload; any other address becomes a Workload of its
/// own (plain TCP, not captured by ztunnel).
pub fn endpoint_slice_workloads(
    store: &Store,
    mesh: &MeshConfig,
    pods: &mut BTreeMap<NamespacedName, Workload>,
    pods_by_ip: &BTreeMap<IpAddr, NamespacedName>,
) -> Vec<Workload> {
    let mut others: BTreeMap<String, Workload> = BTreeMap::new();
    for (slice_key, slice) in &store.endpoint_slices {
        let Some(svc_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::SERVICE_NAME))
        else {
            continue;
        };
        let svc_key = NamespacedName::new(&slice_key.namespace, svc_name);
        let Some(svc) = store.services.get(&svc_key) else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) || is_external_name(svc) {
            continue;
        }
        let ports = slice_ports(spec.ports.iter().flatten(), slice.ports.iter().flatten());
        let key = service_key(
            &slice_key.namespace,
            &hostname(svc_name, &slice_key.namespace, mesh),
        );
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            for raw in &endpoint.addresses {
                let Ok(ip) = raw.parse::<IpAddr>() else {
                    continue;
                };
                if let Some(pod) = pods_by_ip.get(&ip).and_then(|k| pods.get_mut(k)) {
                    pod.services.insert(key.clone(), ports.clone());
                    continue;
                }
                let uid = format!(
                    "{}/discovery.k8s.io/EndpointSlice/{}/{}/{ip}",
                    mesh.cluster_id, slice_key.namespace, slice_key.name
                );
                let w = others.entry(uid.clone()).or_insert_with(|| Workload {
                    uid,
                    name: slice_key.name.clone(),
                    namespace: slice_key.namespace.clone(),
                    addresses: vec![ip_bytes(ip)],
                    network: mesh.network.clone(),
                    tunnel_protocol: TunnelProtocol::None as i32,
                    trust_domain: mesh.trust_domain.clone(),
                    service_account: "default".to_string(),
                    canonical_name: svc_name.clone(),
                    canonical_revision: "latest".to_string(),
                    workload_type: WorkloadType::Pod as i32,
                    workload_name: slice_key.name.clone(),
                    status: if ready {
                        WorkloadStatus::Healthy
                    } else {
                        WorkloadStatus::Unhealthy
                    } as i32,
                    cluster_id: mesh.cluster_id.clone(),
                    node: endpoint.node_name.clone().unwrap_or_default(),
                    ..Default::default()
                });
                w.services.insert(key.clone(), ports.clone());
            }
        }
    }
    others.into_values().collect()
}

/// Service port -> slice port, matched by port name (both unnamed when the
/// Service has a single port).
fn slice_ports<'a>(
    service_ports: impl Iterator<Item = &'a ServicePort>,
    slice_ports: impl Iterator<Item = &'a k8s_openapi::api::discovery::v1::EndpointPort> + Clone,
) -> PortList {
    let mut ports = Vec::new();
    for sp in service_ports {
        let name = sp.name.clone().unwrap_or_default();
        let target = slice_ports
            .clone()
            .find(|p| p.name.clone().unwrap_or_default() == name)
            .and_then(|p| p.port)
            .and_then(|p| u32::try_from(p).ok());
        if let Some(target_port) = target {
            ports.push(Port {
                service_port: u32::try_from(sp.port).unwrap_or(0),
                target_port,
                app_protocol: app_protocol(sp.app_protocol.as_deref(), sp.name.as_deref()) as i32,
            });
        }
    }
    ports.sort_by_key(|p| (p.service_port, p.target_port));
    PortList { ports }
}

/// Services of one namespace indexed by their first selector entry, so a pod
/// is checked only against Services that could select it.
pub struct SelectorIndex<'a> {
    by_first: BTreeMap<(&'a str, &'a str), Vec<&'a KubeService>>,
}

impl<'a> SelectorIndex<'a> {
    pub fn build(store: &'a Store, namespace: &'a str) -> Self {
        let mut by_first: BTreeMap<(&str, &str), Vec<&KubeService>> = BTreeMap::new();
        for (_, svc) in in_namespace(&store.services, namespace) {
            let first = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.iter().next());
            if let Some((k, v)) = first {
                by_first
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(svc);
            }
        }
        Self { by_first }
    }

    /// Services that select the pod, with its port map.
    pub fn services_of(&self, pod: &Pod, mesh: &MeshConfig) -> BTreeMap<String, PortList> {
        let mut out = BTreeMap::new();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            for svc in self
                .by_first
                .get(&(k.as_str(), v.as_str()))
                .into_iter()
                .flatten()
            {
                if let Some(ports) = pod_ports(svc, pod) {
                    let name = svc.metadata.name.as_deref().unwrap_or_default();
                    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
                    out.insert(service_key(ns, &hostname(name, ns, mesh)), ports);
                }
            }
        }
        out
    }
}
