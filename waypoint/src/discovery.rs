//! What the waypoint knows of the mesh from workload discovery
//! (`istio.workload.Address`): services by VIP and hostname with their
//! endpoints, and workloads by IP (to name callers in metrics and to serve
//! workload-addressed traffic). Built from plain data by a pure function and
//! swapped in whole, so the data path reads it without locks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::istio::workload as xw;
use mesh_core::Identity;
use prost::Message;

/// One workload, as much of it as the waypoint uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub identity: Identity,
    /// The canonical service name and revision (`app` / `version` labels).
    pub app: String,
    pub version: String,
    /// The workload (deployment) name, for metrics.
    pub workload_name: String,
    pub healthy: bool,
    /// Service `namespace/hostname` -> (service port -> target port).
    pub services: BTreeMap<String, Vec<(u16, u16)>>,
    /// The waypoint this workload is bound to (hostname form), if any.
    pub waypoint: Option<String>,
}

/// One service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// Service port -> target port (0: the workload's own mapping decides).
    pub ports: Vec<(u16, u16)>,
    /// The waypoint the service is bound to (hostname form), if any.
    pub waypoint: Option<String>,
}

impl Service {
    /// `namespace/hostname`: how workloads name the services they back.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// A service endpoint ready to dial: the workload and the port to reach it on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
}

/// The model the data path reads.
#[derive(Debug, Default)]
pub struct Discovery {
    services_by_vip: HashMap<SocketAddr, Arc<Service>>,
    services_by_host: HashMap<String, Arc<Service>>,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Service key -> its endpoints per service port, healthy ones only.
    endpoints: HashMap<String, HashMap<u16, Vec<Endpoint>>>,
}

impl Discovery {
    pub fn build(workloads: &[Workload], services: &[Service]) -> Discovery {
        let mut d = Discovery::default();
        for s in services {
            let s = Arc::new(s.clone());
            for vip in &s.vips {
                for (port, _) in &s.ports {
                    d.services_by_vip
                        .insert(SocketAddr::new(*vip, *port), s.clone());
                }
            }
            d.services_by_host.insert(s.hostname.clone(), s.clone());
        }
        let by_key: HashMap<String, Arc<Service>> = d
            .services_by_host
            .values()
            .map(|s| (s.key(), s.clone()))
            .collect();
        for w in workloads {
            let w = Arc::new(w.clone());
            for ip in &w.addresses {
                d.workloads_by_ip.insert(*ip, w.clone());
            }
            if !w.healthy {
                continue;
            }
            let Some(ip) = w.addresses.first().copied() else {
                continue;
            };
            for (key, mapping) in &w.services {
                let Some(service) = by_key.get(key) else {
                    continue;
                };
                let per_port = d.endpoints.entry(key.clone()).or_default();
                for (service_port, service_target) in &service.ports {
                    // The workload's own mapping wins; then the service's
                    // target port; a named port the workload does not map is
                    // not served by it.
                    let target = mapping
                        .iter()
                        .find(|(p, _)| p == service_port)
                        .map(|(_, t)| *t)
                        .filter(|t| *t != 0)
                        .or(Some(*service_target).filter(|t| *t != 0));
                    let Some(target) = target else { continue };
                    per_port.entry(*service_port).or_default().push(Endpoint {
                        workload: w.clone(),
                        addr: SocketAddr::new(ip, target),
                    });
                }
            }
        }
        for per_port in d.endpoints.values_mut() {
            for list in per_port.values_mut() {
                list.sort_by(|a, b| a.workload.uid.cmp(&b.workload.uid));
            }
        }
        d
    }

    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&addr)
    }

    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        self.services_by_host.get(host)
    }

    pub fn workload_at(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    /// The healthy endpoints of a service's port.
    pub fn endpoints(&self, service: &Service, port: u16) -> &[Endpoint] {
        self.endpoints
            .get(&service.key())
            .and_then(|p| p.get(&port))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn service_count(&self) -> usize {
        self.services_by_host.len()
    }

    pub fn workload_count(&self) -> usize {
        self.workloads_by_ip.len()
    }
}

/// Why an `Address` resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AddressError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> AddressError {
    AddressError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An `Address` holds one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum Address {
    Workload(Box<Workload>),
    Service(Service),
}

/// Decodes one `istio.workload.Address` body.
pub fn decode_address(body: &[u8]) -> Result<Address, AddressError> {
    let address = xw::Address::decode(body)
        .map_err(|e| err("resource", format!("not a valid Address message: {e}")))?;
    match address.r#type {
        Some(xw::address::Type::Workload(w)) => {
            workload(&w).map(|w| Address::Workload(Box::new(w)))
        }
        Some(xw::address::Type::Service(s)) => service(&s).map(Address::Service),
        None => Err(err("type", "an Address must hold a workload or a service")),
    }
}

fn ip(field: &str, bytes: &[u8]) -> Result<IpAddr, AddressError> {
    let n = bytes.len();
    mesh_core::xds::ip_from_bytes(bytes)
        .ok_or_else(|| err(field, format!("an IP address is 4 or 16 bytes, not {n}")))
}

fn port(field: &str, value: u32) -> Result<u16, AddressError> {
    u16::try_from(value).map_err(|_| err(field, format!("{value} is not a port")))
}

fn waypoint_of(g: Option<&xw::GatewayAddress>) -> Option<String> {
    match g?.destination.as_ref()? {
        xw::gateway_address::Destination::Hostname(h) => Some(h.hostname.clone()),
        xw::gateway_address::Destination::Address(a) => {
            ip("waypoint", &a.address).ok().map(|i| i.to_string())
        }
    }
}

fn workload(w: &xw::Workload) -> Result<Workload, AddressError> {
    if w.uid.is_empty() {
        return Err(err("uid", "is required"));
    }
    if w.namespace.is_empty() {
        return Err(err("namespace", "is required"));
    }
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&format!("addresses[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity::for_workload(&w.trust_domain, &w.namespace, &w.service_account)
        .map_err(|e| err("service_account", e.to_string()))?;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        let mut ports = Vec::with_capacity(list.ports.len());
        for (i, p) in list.ports.iter().enumerate() {
            ports.push((
                port(
                    &format!("services[{key}].ports[{i}].service_port"),
                    p.service_port,
                )?,
                port(
                    &format!("services[{key}].ports[{i}].target_port"),
                    p.target_port,
                )?,
            ));
        }
        services.insert(key.clone(), ports);
    }
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses,
        identity,
        app: w.canonical_name.clone(),
        version: w.canonical_revision.clone(),
        workload_name: if w.workload_name.is_empty() {
            w.name.clone()
        } else {
            w.workload_name.clone()
        },
        healthy: w.status == xw::WorkloadStatus::Healthy as i32,
        services,
        waypoint: waypoint_of(w.waypoint.as_ref()),
    })
}

fn service(s: &xw::Service) -> Result<Service, AddressError> {
    if s.hostname.is_empty() {
        return Err(err("hostname", "is required"));
    }
    let vips = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&format!("addresses[{i}].address"), &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok((
                port(&format!("ports[{i}].service_port"), p.service_port)?,
                port(&format!("ports[{i}].target_port"), p.target_port)?,
            ))
        })
        .collect::<Result<Vec<_>, AddressError>>()?;
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips,
        ports,
        waypoint: waypoint_of(s.waypoint.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(uid: &str, ip: &str, healthy: bool) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.parse().unwrap()],
            identity: Identity::new("cluster.local", "default", "echo").unwrap(),
            app: "echo".into(),
            version: "v1".into(),
            workload_name: "echo".into(),
            healthy,
            services: [(
                "default/echo.default.svc.cluster.local".to_string(),
                vec![(80, 8080)],
            )]
            .into(),
            waypoint: None,
        }
    }

    fn svc() -> Service {
        Service {
            name: "echo".into(),
            namespace: "default".into(),
            hostname: "echo.default.svc.cluster.local".into(),
            vips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![(80, 0), (81, 9090)],
            waypoint: None,
        }
    }

    #[test]
    fn endpoints_are_the_healthy_workloads_with_their_target_ports() {
        let d = Discovery::build(
            &[wl("a", "10.0.0.1", true), wl("b", "10.0.0.2", false)],
            &[svc()],
        );
        let s = d.service_at("10.96.0.10:80".parse().unwrap()).unwrap();
        let eps = d.endpoints(s, 80);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr, "10.0.0.1:8080".parse().unwrap());
        // Port 81 is not in the workload's mapping: the service's target port applies.
        assert_eq!(d.endpoints(s, 81)[0].addr, "10.0.0.1:9090".parse().unwrap());
        // Unhealthy workloads still name callers.
        assert!(d.workload_at("10.0.0.2".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_addresses_are_refused_naming_the_field() {
        let w = xw::Workload {
            uid: "u".into(),
            namespace: "ns".into(),
            addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let body = xw::Address {
            r#type: Some(xw::address::Type::Workload(w)),
        }
        .encode_to_vec();
        let e = decode_address(&body).unwrap_err();
        assert_eq!(e.field, "addresses[0]");
        assert!(decode_address(b"\xff\xff").is_err());
    }
}
