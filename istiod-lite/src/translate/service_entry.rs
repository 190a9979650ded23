//! ServiceEntry: a Service per host, its static endpoints as Workloads, or the
//! pods its workloadSelector picks. DNS resolution and wildcard hosts are not
//! covered; such entries get a condition saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use mesh_api::istio::workload::{
    NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::service::app_protocol;
use super::waypoint::{BindingSource, TrafficKind, Waypoints};
use super::{MeshConfig, condition, in_namespace, ip_bytes, selects, service_key};
use crate::model::istio::{ServiceEntryEndpoint, ServiceEntryPort, ServiceEntryResolution};
use crate::model::{Kind, NamespacedName, ObjectCondition, Store};

#[derive(Default)]
pub struct EntryOutput {
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
}

pub fn translate_service_entries(
    store: &Store,
    mesh: &MeshConfig,
    waypoints: &Waypoints,
    pods: &mut BTreeMap<NamespacedName, Workload>,
    conditions: &mut BTreeSet<ObjectCondition>,
) -> EntryOutput {
    let mut out = EntryOutput::default();
    for (key, se) in &store.service_entries {
        let spec = &se.spec;
        let mut note = |reason: &str, message: String| {
            conditions.insert(condition(
                Kind::ServiceEntry,
                key,
                "PartiallyEnforced",
                true,
                reason,
                message,
            ));
        };
        let hosts: Vec<&String> = spec.hosts.iter().filter(|h| !h.contains('*')).collect();
        if hosts.len() != spec.hosts.len() {
            note(
                "WildcardHostNotSupported",
                "wildcard hosts are not sent to ztunnel; they are left out".to_string(),
            );
        }
        if matches!(
            spec.resolution,
            ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin
        ) {
            note(
                "DnsResolutionNotSupported",
                "istiod-lite does not perform DNS resolution; only IP endpoints and pods picked by workloadSelector are sent".to_string(),
            );
        }
        let mut addresses = Vec::new();
        for (i, raw) in spec.addresses.iter().enumerate() {
            match network_address(raw, mesh) {
                Some(a) => addresses.push(a),
                None => note(
                    "InvalidAddress",
                    format!(
                        "spec.addresses[{i}] has \"{raw}\", which is not an IP address or CIDR; it is left out"
                    ),
                ),
            }
        }
        let mut ports: Vec<Port> = spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: p.number,
                target_port: p.target_port.unwrap_or(p.number),
                app_protocol: app_protocol(p.protocol.as_deref(), Some(&p.name)) as i32,
            })
            .collect();
        ports.sort_by_key(|p| (p.service_port, p.target_port));

        let ns_key = NamespacedName::cluster(&key.namespace);
        let ns_labels = store
            .namespaces
            .get(&ns_key)
            .and_then(|n| n.metadata.labels.as_ref());
        let waypoint = waypoints.resolve(
            TrafficKind::Service,
            BindingSource {
                kind: Kind::ServiceEntry,
                key,
                labels: se.metadata.labels.as_ref(),
            },
            BindingSource {
                kind: Kind::Namespace,
                key: &ns_key,
                labels: ns_labels,
            },
            conditions,
        );
        let service_keys: Vec<String> = hosts
            .iter()
            .map(|h| service_key(&key.namespace, h))
            .collect();
        for host in &hosts {
            out.services.push(Service {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                hostname: (*host).clone(),
                addresses: addresses.clone(),
                ports: ports.clone(),
                waypoint: waypoint.clone(),
                ..Default::default()
            });
        }

        if let Some(selector) = &spec.workload_selector {
            let selected: Vec<NamespacedName> = in_namespace(&store.pods, &key.namespace)
                .filter(|(_, pod)| selects(&selector.labels, pod.metadata.labels.as_ref()))
                .map(|(k, _)| k.clone())
                .collect();
            for pod_key in selected {
                if let Some(w) = pods.get_mut(&pod_key) {
                    for sk in &service_keys {
                        w.services
                            .insert(sk.clone(), endpoint_ports(&spec.ports, None));
                    }
                }
            }
        }

        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            let Ok(ip) = endpoint.address.parse::<IpAddr>() else {
                conditions.insert(condition(
                    Kind::ServiceEntry,
                    key,
                    "PartiallyEnforced",
                    true,
                    "EndpointNotAnIP",
                    format!(
                        "spec.endpoints[{i}].address \"{}\" is not an IP address; hostname endpoints are not sent to ztunnel",
                        endpoint.address
                    ),
                ));
                continue;
            };
            out.workloads.push(Workload {
                uid: format!(
                    "{}/networking.istio.io/ServiceEntry/{}/{}/{}",
                    mesh.cluster_id, key.namespace, key.name, endpoint.address
                ),
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                addresses: vec![ip_bytes(ip)],
                network: if endpoint.network.is_empty() {
                    mesh.network.clone()
                } else {
                    endpoint.network.clone()
                },
                tunnel_protocol: TunnelProtocol::None as i32,
                trust_domain: mesh.trust_domain.clone(),
                service_account: if endpoint.service_account.is_empty() {
                    "default".to_string()
                } else {
                    endpoint.service_account.clone()
                },
                canonical_name: key.name.clone(),
                canonical_revision: "latest".to_string(),
                workload_type: WorkloadType::Pod as i32,
                workload_name: key.name.clone(),
                status: WorkloadStatus::Healthy as i32,
                cluster_id: mesh.cluster_id.clone(),
                services: service_keys
                    .iter()
                    .map(|sk| (sk.clone(), endpoint_ports(&spec.ports, Some(endpoint))))
                    .collect(),
                ..Default::default()
            });
        }
    }
    out
}

/// Port number -> the endpoint's port of that name, else the entry's target port.
fn endpoint_ports(ports: &[ServiceEntryPort], endpoint: Option<&ServiceEntryEndpoint>) -> PortList {
    let mut out: Vec<Port> = ports
        .iter()
        .map(|p| Port {
            service_port: p.number,
            target_port: endpoint
                .and_then(|e| e.ports.get(&p.name).copied())
                .or(p.target_port)
                .unwrap_or(p.number),
            app_protocol: app_protocol(p.protocol.as_deref(), Some(&p.name)) as i32,
        })
        .collect();
    out.sort_by_key(|p| (p.service_port, p.target_port));
    PortList { ports: out }
}

fn network_address(raw: &str, mesh: &MeshConfig) -> Option<NetworkAddress> {
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(NetworkAddress {
            network: mesh.network.clone(),
            address: ip_bytes(ip),
            length: None,
        });
    }
    let net = raw.parse::<IpNet>().ok()?;
    Some(NetworkAddress {
        network: mesh.network.clone(),
        address: ip_bytes(net.addr()),
        length: Some(u32::from(net.prefix_len())),
    })
}
