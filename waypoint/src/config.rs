//! One `Waypoint` resource compiled into an immutable snapshot: services by
//! address and host name, each with its ports, route table, policies and
//! JWT rules, and the policies and JWT rules attached to the waypoint's
//! Gateway. Key sets are parsed here, once per snapshot, never per request.
//!
//! Compilation never fails as a whole: an invalid part (a bad regex, CIDR,
//! port or protocol, a weight above the Gateway API's limit, a redirect and
//! a rewrite on one rule, ...) is dropped and reported as a `ConfigError`
//! naming the service, route or policy and what was wrong; everything else
//! is kept. It never panics, whatever the input.

use std::collections::HashMap;
use std::net::IpAddr;

use mesh_api::ambit::waypoint::v1 as pb;

use crate::authn::{self, AuthnError, AuthnSet};
use crate::authz::{self, PolicyError, PolicySet};
use crate::route::{self, RouteError};

/// What was dropped from a `Waypoint`, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("service {service}: address {address:?} is not an IP address")]
    Address { service: String, address: String },
    #[error("service {service}: address {address} already belongs to service {owner}")]
    DuplicateAddress {
        service: String,
        address: IpAddr,
        owner: String,
    },
    #[error("service {service}: hostname {hostname:?} already belongs to service {owner}")]
    DuplicateHostname {
        service: String,
        hostname: String,
        owner: String,
    },
    #[error("service {service}: port {port}: {reason}")]
    Port {
        service: String,
        port: u32,
        reason: PortError,
    },
    #[error("service {service}, route {route}{}: {reason}", rule.as_ref().map(|r| format!(", rule {r}")).unwrap_or_default())]
    Route {
        service: String,
        route: String,
        rule: Option<String>,
        reason: RouteError,
    },
    #[error("authorization policy {policy} (attached to {target}), rule #{rule}: {reason}")]
    Policy {
        target: String,
        policy: String,
        rule: usize,
        reason: PolicyError,
    },
    #[error("authorization policy {policy} (attached to {target}): unknown action {action}")]
    PolicyAction {
        target: String,
        policy: String,
        action: i32,
    },
    #[error(
        "request authentication {authentication} (attached to {target}), rule #{rule} (issuer {issuer:?}): {reason}"
    )]
    Authentication {
        target: String,
        authentication: String,
        rule: usize,
        issuer: String,
        reason: AuthnError,
    },
}

/// Why a service port was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("not a port number (1-65535)")]
    Number,
    #[error("target port {0} is not a port number")]
    TargetPort(u32),
    #[error("unknown protocol {0}")]
    Protocol(i32),
    #[error("declared twice")]
    Duplicate,
}

/// How a port's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Sniff the first bytes (HTTP/2 preface, HTTP/1.x request line, else TCP).
    Detect,
    Http1,
    Http2,
    Grpc,
    /// Opaque bytes: L4 policy only.
    Tcp,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    pub port: u16,
    /// The endpoints' port; the same as `port` when the service does not
    /// map it by number.
    pub target_port: u16,
    pub protocol: Protocol,
    pub name: String,
}

/// A service bound to the waypoint.
#[derive(Debug)]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    /// FQDN, lower-cased.
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortConfig>,
    pub routes: route::Table,
    pub policies: PolicySet,
    /// JWT rules attached to the service, added to the Gateway's.
    pub authentications: AuthnSet,
}

impl ServiceConfig {
    /// A declared port; `None` for undeclared ports (serve them as
    /// `Protocol::Detect` with target port = port).
    pub fn port(&self, port: u16) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A compiled `Waypoint`, immutable; share it behind an `Arc` and swap the
/// whole snapshot on update.
#[derive(Debug, Default)]
pub struct Snapshot {
    namespace: String,
    name: String,
    services: Vec<ServiceConfig>,
    by_address: HashMap<IpAddr, usize>,
    by_host: HashMap<String, usize>,
    gateway_policies: PolicySet,
    gateway_authentications: AuthnSet,
}

impl Snapshot {
    /// Compiles `w`; see the module docs.
    pub fn compile(w: &pb::Waypoint) -> (Snapshot, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let gateway_target = format!("gateway {}/{}", w.namespace, w.name);
        let gateway_policies = authz::compile_policies(&gateway_target, &w.policies, &mut errors);
        let gateway_authentications =
            authn::compile(&gateway_target, &w.authentications, &mut errors);
        let mut snap = Snapshot {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            gateway_policies,
            gateway_authentications,
            ..Snapshot::default()
        };
        for s in &w.services {
            let label = format!("{}/{}", s.namespace, s.name);
            let index = snap.services.len();
            let mut addresses = Vec::with_capacity(s.addresses.len());
            for a in &s.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    errors.push(ConfigError::Address {
                        service: label.clone(),
                        address: a.clone(),
                    });
                    continue;
                };
                if let Some(&owner) = snap.by_address.get(&ip) {
                    errors.push(ConfigError::DuplicateAddress {
                        service: label.clone(),
                        address: ip,
                        owner: snap.services[owner].label(),
                    });
                    continue;
                }
                snap.by_address.insert(ip, index);
                addresses.push(ip);
            }
            let hostname = s.hostname.trim_end_matches('.').to_ascii_lowercase();
            if !hostname.is_empty() {
                if let Some(&owner) = snap.by_host.get(&hostname) {
                    errors.push(ConfigError::DuplicateHostname {
                        service: label.clone(),
                        hostname: hostname.clone(),
                        owner: snap.services[owner].label(),
                    });
                } else {
                    snap.by_host.insert(hostname.clone(), index);
                }
            }
            let ports = compile_ports(&label, &s.ports, &mut errors);
            let (routes, route_errors) = route::compile_routes(&label, &s.routes);
            errors.extend(route_errors);
            let target = format!("service {label}");
            let policies = authz::compile_policies(&target, &s.policies, &mut errors);
            let authentications = authn::compile(&target, &s.authentications, &mut errors);
            snap.services.push(ServiceConfig {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                hostname,
                addresses,
                ports,
                routes,
                policies,
                authentications,
            });
        }
        (snap, errors)
    }

    /// The service a CONNECT authority `<address>:<port>` names, by the
    /// service's addresses. The port does not have to be declared
    /// (`ServiceConfig::port` tells).
    pub fn service_for(&self, authority_ip: IpAddr, _port: u16) -> Option<&ServiceConfig> {
        let ip = match authority_ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(authority_ip),
            v4 => v4,
        };
        self.by_address.get(&ip).map(|&i| &self.services[i])
    }

    /// The service with this FQDN (case-insensitive, trailing dot ignored).
    pub fn service_by_host(&self, hostname: &str) -> Option<&ServiceConfig> {
        let h = hostname.trim_end_matches('.').to_ascii_lowercase();
        self.by_host.get(&h).map(|&i| &self.services[i])
    }

    /// Every service, in the order they arrived.
    pub fn services(&self) -> &[ServiceConfig] {
        &self.services
    }

    /// Policies attached to the waypoint's Gateway.
    pub fn gateway_policies(&self) -> &PolicySet {
        &self.gateway_policies
    }

    /// JWT rules attached to the waypoint's Gateway.
    pub fn gateway_authentications(&self) -> &AuthnSet {
        &self.gateway_authentications
    }

    /// The Gateway's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Gateway's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl ServiceConfig {
    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn compile_ports(
    service: &str,
    ports: &[pb::Port],
    errors: &mut Vec<ConfigError>,
) -> Vec<PortConfig> {
    let mut out: Vec<PortConfig> = Vec::with_capacity(ports.len());
    for p in ports {
        let mut fail = |reason| {
            errors.push(ConfigError::Port {
                service: service.to_string(),
                port: p.port,
                reason,
            })
        };
        let port = match u16::try_from(p.port) {
            Ok(n) if n != 0 => n,
            _ => {
                fail(PortError::Number);
                continue;
            }
        };
        let target_port = match p.target_port {
            0 => port,
            t => match u16::try_from(t) {
                Ok(n) => n,
                Err(_) => {
                    fail(PortError::TargetPort(t));
                    continue;
                }
            },
        };
        let protocol = match pb::Protocol::try_from(p.protocol) {
            Ok(pb::Protocol::Detect) => Protocol::Detect,
            Ok(pb::Protocol::Http1) => Protocol::Http1,
            Ok(pb::Protocol::Http2) => Protocol::Http2,
            Ok(pb::Protocol::Grpc) => Protocol::Grpc,
            Ok(pb::Protocol::Tcp) => Protocol::Tcp,
            Err(_) => {
                fail(PortError::Protocol(p.protocol));
                continue;
            }
        };
        if out.iter().any(|o| o.port == port) {
            fail(PortError::Duplicate);
            continue;
        }
        out.push(PortConfig {
            port,
            target_port,
            protocol,
            name: p.name.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
