//! Waypoints (spec 9.3): resolving a destination's waypoint to the pod an
//! outbound connection goes to, and deciding whether an inbound connection to
//! a waypoint-bound pod came from its waypoint. Pure functions of the state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_core::Identity;
use rand::Rng;

use crate::config::{GatewayAddress, GatewayDestination, Service};
use crate::state::{State, WorkloadEntry};

/// Where an outbound connection goes to reach a waypoint.
#[derive(Debug, Clone)]
pub struct Hop {
    /// `<namespace>/<name>` (or the address) for logs and metrics.
    pub name: String,
    /// The waypoint pod's HBONE address.
    pub peer: SocketAddr,
    /// Identities the waypoint may present: its pod's, plus its Service's SANs.
    pub expected: Vec<Identity>,
    /// The waypoint pod, when the state knows it.
    pub workload: Option<Arc<WorkloadEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaypointError {
    #[error("waypoint {waypoint}: no service {namespace}/{hostname} is known")]
    NoService {
        waypoint: String,
        namespace: String,
        hostname: String,
    },
    #[error("waypoint {waypoint}: its service lists no port {port} (the waypoint's HBONE port)")]
    NoPort { waypoint: String, port: u16 },
    #[error("waypoint {waypoint}: no healthy waypoint pod serves port {port}")]
    NoEndpoint { waypoint: String, port: u16 },
}

impl WaypointError {
    /// The waypoint that could not be reached, by name.
    pub fn waypoint(&self) -> &str {
        match self {
            WaypointError::NoService { waypoint, .. }
            | WaypointError::NoPort { waypoint, .. }
            | WaypointError::NoEndpoint { waypoint, .. } => waypoint,
        }
    }

    /// A short reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            WaypointError::NoService { .. } => "no_waypoint_service",
            WaypointError::NoPort { .. } => "no_waypoint_port",
            WaypointError::NoEndpoint { .. } => "no_waypoint_endpoint",
        }
    }
}

fn waypoint_service<'a>(
    state: &'a State,
    gw: &GatewayAddress,
    namespace: &str,
    hostname: &str,
) -> Result<&'a Arc<Service>, WaypointError> {
    state
        .service(namespace, hostname)
        .ok_or_else(|| WaypointError::NoService {
            waypoint: gw.to_string(),
            namespace: namespace.to_string(),
            hostname: hostname.to_string(),
        })
}

/// The waypoint Service whose VIP `address` is, when the address form names
/// a Service rather than a pod (istiod sends the VIP of a waypoint Service
/// that has one).
fn vip_service(state: &State, address: IpAddr) -> Option<&Arc<Service>> {
    if state.workload_by_ip(address).is_some() {
        return None;
    }
    state.service_by_vip(address, "")
}

/// Resolves `gw` to one waypoint pod (spec 9.3 step 1). `like` picks the
/// address family. Never falls back to going around the waypoint: a waypoint
/// that cannot be reached is an error.
pub fn resolve(
    state: &State,
    gw: &GatewayAddress,
    like: IpAddr,
    rng: &mut impl Rng,
) -> Result<Hop, WaypointError> {
    let port = gw.hbone_mtls_port;
    let svc = match &gw.destination {
        GatewayDestination::Address { address, .. } => match vip_service(state, *address) {
            Some(svc) => svc,
            None => {
                let workload = state.workload_by_ip(*address).cloned();
                return Ok(Hop {
                    name: gw.to_string(),
                    peer: SocketAddr::new(*address, port),
                    expected: workload.iter().map(|w| w.identity.clone()).collect(),
                    workload,
                });
            }
        },
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => waypoint_service(state, gw, namespace, hostname)?,
    };
    if !svc.ports.iter().any(|p| p.service_port == port) {
        return Err(WaypointError::NoPort {
            waypoint: gw.to_string(),
            port,
        });
    }
    let (w, target, ip) =
        super::route::pick_endpoint(state, svc, port, like, rng).ok_or_else(|| {
            WaypointError::NoEndpoint {
                waypoint: gw.to_string(),
                port,
            }
        })?;
    let mut expected = vec![w.identity.clone()];
    expected.extend(svc.subject_alt_names.iter().cloned());
    Ok(Hop {
        name: gw.to_string(),
        peer: SocketAddr::new(ip, target),
        expected,
        workload: Some(w),
    })
}

/// The workloads that are `gw`'s pods, whatever their health.
fn pods(state: &State, gw: &GatewayAddress) -> Vec<Arc<WorkloadEntry>> {
    match &gw.destination {
        GatewayDestination::Address { address, .. } => match vip_service(state, *address) {
            Some(svc) => state
                .endpoints(svc)
                .iter()
                .map(|e| e.workload.clone())
                .collect(),
            None => state
                .workload_by_ip(*address)
                .cloned()
                .into_iter()
                .collect(),
        },
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => state
            .service(namespace, hostname)
            .map(|svc| {
                state
                    .endpoints(svc)
                    .iter()
                    .map(|e| e.workload.clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Whether `source` is one of `gw`'s own pods (same identity and an address
/// in common): its traffic has been through the waypoint already (spec 9.3,
/// loop prevention).
pub fn is_waypoint_pod(state: &State, gw: &GatewayAddress, source: &WorkloadEntry) -> bool {
    pods(state, gw).iter().any(|p| {
        p.identity == source.identity
            && p.spec
                .addresses
                .iter()
                .any(|a| source.spec.addresses.contains(a))
    })
}

/// The identities a waypoint-bound pod accepts connections from.
fn identities(state: &State, gw: &GatewayAddress) -> Vec<Identity> {
    let mut ids: Vec<Identity> = pods(state, gw).iter().map(|w| w.identity.clone()).collect();
    let svc = match &gw.destination {
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => state.service(namespace, hostname),
        GatewayDestination::Address { address, .. } => vip_service(state, *address),
    };
    if let Some(svc) = svc {
        ids.extend(svc.subject_alt_names.iter().cloned());
    }
    ids
}

/// The waypoints `local` is bound to: its own, and those of the services it
/// is an endpoint of.
pub fn bound_to<'a>(state: &'a State, local: &'a WorkloadEntry) -> Vec<&'a GatewayAddress> {
    let mut out: Vec<&GatewayAddress> = local.spec.waypoint.iter().collect();
    for key in local.spec.services.keys() {
        if let Some(gw) = state.service_by_key(key).and_then(|s| s.waypoint.as_ref())
            && !out.contains(&gw)
        {
            out.push(gw);
        }
    }
    out
}

/// Whether an inbound connection to `local` may proceed, as far as waypoints go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// `local` has no waypoint: nothing to check.
    Unbound,
    /// The peer is `local`'s waypoint.
    FromWaypoint { waypoint: String },
    /// `local` is waypoint-bound and the peer is not its waypoint.
    Refused {
        waypoints: String,
        cause: Refusal,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No identity at all (plaintext).
    Plaintext,
    /// A mesh identity, but not the waypoint's.
    NotWaypointIdentity,
}

impl Refusal {
    /// A short label for the refusal counter.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Plaintext => "plaintext",
            Refusal::NotWaypointIdentity => "not_waypoint_identity",
        }
    }
}

/// Traffic to a waypoint-bound pod must come from its waypoint (spec 9.3
/// says who the waypoint connects as), so L7 policy cannot be skipped by dialling
/// the pod directly. `peer` is the TLS identity, `None` for plaintext.
pub fn admit(state: &State, local: &WorkloadEntry, peer: Option<&Identity>) -> Admission {
    let bound = bound_to(state, local);
    if bound.is_empty() {
        return Admission::Unbound;
    }
    let names = bound
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(peer) = peer else {
        return Admission::Refused {
            waypoints: names,
            cause: Refusal::Plaintext,
            reason: "no peer identity (plaintext) for a pod bound to a waypoint".into(),
        };
    };
    for gw in bound {
        if identities(state, gw).contains(peer) {
            return Admission::FromWaypoint {
                waypoint: gw.to_string(),
            };
        }
    }
    Admission::Refused {
        waypoints: names.clone(),
        cause: Refusal::NotWaypointIdentity,
        reason: format!("{peer} is not the identity of waypoint {names}"),
    }
}

#[cfg(test)]
mod tests;
