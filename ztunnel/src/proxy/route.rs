//! Where an outbound connection goes (spec 2.6): a pure plan from the state,
//! the source workload and the original destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_core::Identity;
use rand::Rng;

use super::waypoint::{self, Hop, WaypointError};
use crate::config::{GatewayAddress, HealthStatus, LoadBalancingMode, Service, TunnelProtocol};
use crate::state::{State, WorkloadEntry};

/// Ports that belong to ztunnel itself; a connection to one is a loop.
pub const ILLEGAL_PORTS: [u16; 3] = [15001, 15006, 15008];

#[derive(Debug, Clone)]
pub enum Plan {
    /// HBONE to `peer` (`ip:15008`) with CONNECT `authority`.
    Hbone {
        peer: SocketAddr,
        authority: SocketAddr,
        expected: Vec<Identity>,
        destination: Arc<WorkloadEntry>,
        service: Option<Arc<Service>>,
    },
    /// Plain TCP to a mesh workload that does not speak HBONE.
    Direct {
        target: SocketAddr,
        destination: Arc<WorkloadEntry>,
        service: Option<Arc<Service>>,
    },
    /// HBONE to the destination's waypoint (spec 2.6 steps 3 and 7), CONNECT
    /// `authority` = the original destination.
    Waypoint {
        hop: Hop,
        authority: SocketAddr,
        /// The workload addressed by IP (workload waypoints).
        destination: Option<Arc<WorkloadEntry>>,
        service: Option<Arc<Service>>,
    },
    /// Plain TCP to a destination outside the mesh (or a PASSTHROUGH service).
    Passthrough {
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
}

impl Plan {
    pub fn destination(&self) -> Option<&Arc<WorkloadEntry>> {
        match self {
            Plan::Hbone { destination, .. } | Plan::Direct { destination, .. } => Some(destination),
            Plan::Waypoint { destination, .. } => destination.as_ref(),
            Plan::Passthrough { .. } => None,
        }
    }
    /// The waypoint this plan goes through, by name.
    pub fn waypoint(&self) -> Option<&str> {
        match self {
            Plan::Waypoint { hop, .. } => Some(&hop.name),
            _ => None,
        }
    }
    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Plan::Hbone { service, .. }
            | Plan::Direct { service, .. }
            | Plan::Waypoint { service, .. }
            | Plan::Passthrough { service, .. } => service.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0} is one of ztunnel's own ports on loopback: refusing a loop")]
    Loop(SocketAddr),
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoEndpoint { service: String, port: u16 },
    #[error("service {service} has no port {port}")]
    NoServicePort { service: String, port: u16 },
    #[error("workload {uid} has no {family} address")]
    NoAddress { uid: String, family: &'static str },
    #[error(transparent)]
    Waypoint(#[from] WaypointError),
}

pub fn plan(
    state: &State,
    source: &WorkloadEntry,
    dst: SocketAddr,
    rng: &mut impl Rng,
) -> Result<Plan, RouteError> {
    if dst.ip().is_loopback() && ILLEGAL_PORTS.contains(&dst.port()) {
        return Err(RouteError::Loop(dst));
    }
    if let Some(w) = state.workload_by_ip(dst.ip()) {
        if let Some(gw) = &w.spec.waypoint
            && !waypoint::is_waypoint_pod(state, gw, source)
        {
            // Spec 2.6 step 7: the waypoint gets the original podIP:port.
            return via_waypoint(state, gw, dst, Some(w.clone()), None, rng);
        }
        return Ok(to_workload(w.clone(), dst, None));
    }
    let Some(svc) = state.service_by_vip(dst.ip(), &source.spec.namespace) else {
        return Ok(Plan::Passthrough {
            target: dst,
            service: None,
        });
    };
    if let Some(gw) = &svc.waypoint
        && !waypoint::is_waypoint_pod(state, gw, source)
    {
        // Spec 2.6 step 3: the waypoint gets the original VIP:port.
        return via_waypoint(state, gw, dst, None, Some(svc.clone()), rng);
    }
    if svc.load_balancing.mode == LoadBalancingMode::Passthrough {
        return Ok(Plan::Passthrough {
            target: dst,
            service: Some(svc.clone()),
        });
    }
    if !svc.ports.iter().any(|p| p.service_port == dst.port()) {
        return Err(RouteError::NoServicePort {
            service: svc.hostname.clone(),
            port: dst.port(),
        });
    }
    let (w, target_port, ip) =
        pick_endpoint(state, svc, dst.port(), dst.ip(), rng).ok_or_else(|| {
            RouteError::NoEndpoint {
                service: svc.hostname.clone(),
                port: dst.port(),
            }
        })?;
    if let Some(gw) = &w.spec.waypoint
        && !waypoint::is_waypoint_pod(state, gw, source)
    {
        // The chosen pod takes traffic only from its workload waypoint (see
        // `waypoint::admit`), so service traffic to it goes there too, as
        // workload-addressed traffic: authority = podIP:targetPort.
        let target = SocketAddr::new(ip, target_port);
        return via_waypoint(state, gw, target, Some(w.clone()), Some(svc.clone()), rng);
    }
    let mut plan = to_workload(w, SocketAddr::new(ip, target_port), Some(svc.clone()));
    if let Plan::Hbone { expected, .. } = &mut plan {
        expected.extend(svc.subject_alt_names.iter().cloned());
    }
    Ok(plan)
}

/// A healthy endpoint of `svc` exposing `port` (its own mapping, else the
/// service's target port) with an address of `like`'s family, weighted random
/// by capacity: the workload, target port and address.
pub(super) fn pick_endpoint(
    state: &State,
    svc: &Service,
    port: u16,
    like: IpAddr,
    rng: &mut impl Rng,
) -> Option<(Arc<WorkloadEntry>, u16, IpAddr)> {
    let service_target = svc
        .ports
        .iter()
        .find(|p| p.service_port == port)?
        .target_port;
    let candidates: Vec<(Arc<WorkloadEntry>, u16, IpAddr)> = state
        .endpoints(svc)
        .iter()
        .filter(|e| e.workload.spec.status == HealthStatus::Healthy)
        .filter_map(|e| {
            let target = e
                .ports
                .iter()
                .find(|p| p.service_port == port && p.target_port != 0)
                .map(|p| p.target_port)
                .or((service_target != 0).then_some(service_target))?;
            let ip = e.workload.address_like(like)?;
            Some((e.workload.clone(), target, ip))
        })
        .collect();
    let total: u64 = candidates.iter().map(|(w, ..)| weight(w)).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.random_range(0..total);
    candidates.into_iter().find(|(w, ..)| {
        let wt = weight(w);
        if pick < wt {
            true
        } else {
            pick -= wt;
            false
        }
    })
}

/// HBONE to `gw` with the original destination as the authority.
fn via_waypoint(
    state: &State,
    gw: &GatewayAddress,
    dst: SocketAddr,
    destination: Option<Arc<WorkloadEntry>>,
    service: Option<Arc<Service>>,
    rng: &mut impl Rng,
) -> Result<Plan, RouteError> {
    let hop = waypoint::resolve(state, gw, dst.ip(), rng)?;
    Ok(Plan::Waypoint {
        hop,
        authority: dst,
        destination,
        service,
    })
}

fn weight(w: &WorkloadEntry) -> u64 {
    u64::from(w.spec.capacity.unwrap_or(1))
}

fn to_workload(w: Arc<WorkloadEntry>, target: SocketAddr, service: Option<Arc<Service>>) -> Plan {
    match w.spec.tunnel_protocol {
        TunnelProtocol::Hbone => Plan::Hbone {
            peer: SocketAddr::new(target.ip(), mesh_core::hbone::PORT),
            authority: target,
            expected: vec![w.identity.clone()],
            destination: w,
            service,
        },
        TunnelProtocol::None => Plan::Direct {
            target,
            destination: w,
            service,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rand::SeedableRng;

    const MESH: &str = "
proxy:
  workload: default/client
  certificates: {ca: {cert: r, key: k}}
workloads:
- {name: client, namespace: default, serviceAccount: client, addresses: [10.0.0.1, 'fd00::1']}
- name: server-a
  namespace: default
  serviceAccount: server
  addresses: [10.0.0.2, 'fd00::2']
  services: {default/echo.default.svc.cluster.local: [{servicePort: 80, targetPort: 9000}]}
- name: server-b
  namespace: default
  serviceAccount: server
  addresses: [10.0.0.3]
  status: UNHEALTHY
  services: {default/echo.default.svc.cluster.local: [{servicePort: 80}]}
- {name: legacy, namespace: default, addresses: [10.0.0.4], tunnelProtocol: NONE,
   services: {default/named.default.svc.cluster.local: [{servicePort: 80, targetPort: 8081}]}}
services:
- name: echo
  namespace: default
  addresses: [10.96.0.1, 'fd00:96::1']
  ports: [{servicePort: 80, targetPort: 9999}]
  subjectAltNames: ['spiffe://cluster.local/ns/default/sa/extra']
- {name: named, namespace: default, addresses: [10.96.0.2], ports: [{servicePort: 80}]}
- {name: empty, namespace: default, addresses: [10.96.0.3], ports: [{servicePort: 80, targetPort: 80}]}
- {name: ext, namespace: default, addresses: [10.96.0.4], ports: [{servicePort: 443}], loadBalancing: {mode: PASSTHROUGH}}
";

    fn setup() -> (State, Arc<WorkloadEntry>) {
        let c = Config::parse(MESH).unwrap();
        let s = State::from_config(&c).unwrap();
        let src = s.workload_named("default", "client").unwrap().clone();
        (s, src)
    }

    fn run(dst: &str) -> Result<Plan, RouteError> {
        let (s, src) = setup();
        plan(
            &s,
            &src,
            dst.parse().unwrap(),
            &mut rand::rngs::StdRng::seed_from_u64(7),
        )
    }

    #[test]
    fn service_vip_goes_to_a_healthy_endpoint_with_the_endpoint_port() {
        let Ok(Plan::Hbone {
            peer,
            authority,
            expected,
            destination,
            service,
        }) = run("10.96.0.1:80")
        else {
            panic!("expected HBONE")
        };
        assert_eq!(peer, "10.0.0.2:15008".parse().unwrap());
        // The endpoint's own mapping (9000) wins over the service target port (9999).
        assert_eq!(authority, "10.0.0.2:9000".parse().unwrap());
        assert_eq!(destination.spec.name, "server-a");
        assert_eq!(service.unwrap().name, "echo");
        let expected: Vec<String> = expected.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            expected,
            [
                "spiffe://cluster.local/ns/default/sa/server",
                "spiffe://cluster.local/ns/default/sa/extra"
            ]
        );
    }

    #[test]
    fn ipv6_vips_pick_ipv6_endpoint_addresses() {
        let Ok(Plan::Hbone {
            peer, authority, ..
        }) = run("[fd00:96::1]:80")
        else {
            panic!()
        };
        assert_eq!(peer, "[fd00::2]:15008".parse().unwrap());
        assert_eq!(authority, "[fd00::2]:9000".parse().unwrap());
    }

    #[test]
    fn workload_ips_keep_their_port_and_non_hbone_workloads_get_plain_tcp() {
        let Ok(Plan::Hbone {
            peer, authority, ..
        }) = run("10.0.0.2:1234")
        else {
            panic!()
        };
        assert_eq!((peer.port(), authority.port()), (15008, 1234));
        let Ok(Plan::Direct { target, .. }) = run("10.0.0.4:5000") else {
            panic!()
        };
        assert_eq!(target, "10.0.0.4:5000".parse().unwrap());
        let Ok(Plan::Direct { target, .. }) = run("10.96.0.2:80") else {
            panic!()
        };
        assert_eq!(target, "10.0.0.4:8081".parse().unwrap());
    }

    #[test]
    fn outside_the_mesh_is_passthrough_and_loops_and_empty_services_fail() {
        assert!(matches!(
            run("192.0.2.10:443"),
            Ok(Plan::Passthrough { .. })
        ));
        assert!(matches!(
            run("10.96.0.4:443"),
            Ok(Plan::Passthrough {
                service: Some(_),
                ..
            })
        ));
        assert_eq!(
            run("127.0.0.1:15001").unwrap_err(),
            RouteError::Loop("127.0.0.1:15001".parse().unwrap())
        );
        assert!(matches!(
            run("127.0.0.1:8080"),
            Ok(Plan::Passthrough { .. })
        ));
        assert!(matches!(
            run("10.96.0.3:80"),
            Err(RouteError::NoEndpoint { .. })
        ));
        assert!(matches!(
            run("10.96.0.1:81"),
            Err(RouteError::NoServicePort { .. })
        ));
    }

    #[test]
    fn endpoint_choice_follows_capacity() {
        let text = MESH.replace("status: UNHEALTHY", "capacity: 3");
        let c = Config::parse(&text).unwrap();
        let s = State::from_config(&c).unwrap();
        let src = s.workload_named("default", "client").unwrap().clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = 0;
        for _ in 0..4000 {
            if plan(&s, &src, "10.96.0.1:80".parse().unwrap(), &mut rng)
                .unwrap()
                .destination()
                .unwrap()
                .spec
                .name
                == "server-b"
            {
                b += 1;
            }
        }
        // Expected 3/4 of 4000 = 3000; the bound is many standard deviations wide.
        assert!((2800..3200).contains(&b), "server-b chosen {b} times");
    }
}
