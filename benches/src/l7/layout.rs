//! Addresses and ports of the L7 benchmark's topology, in one place so the ztunnel,
//! istiod-lite, waypoint and Envoy configs agree.
//!
//! The client namespace holds 10.1.1.1 (the load client and its ztunnel); the server
//! namespace holds the backend pod's 10.1.1.2 (backends and the server ztunnel) and
//! the waypoint pod's 10.1.1.3 (the waypoint or Envoy), both on the server's veth end:
//! the waypoint runs on the server's node. Mesh paths call the Service's VIP, which only
//! ztunnel resolves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Namespace of every workload and service, and the client's and the backend's names
/// (each also its service account): the same as `ambit-bench`'s.
pub use crate::ztunnel::config::{CLIENT, NAMESPACE, SERVER};
/// The backend Service's name: the backend pod's.
pub const SERVICE: &str = SERVER;
/// Trust domain of every identity.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The waypoint's Gateway name, service account and Service name.
pub const WAYPOINT: &str = "waypoint";

/// The waypoint pod's address, added to the server namespace's veth end.
pub const WAYPOINT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 1, 3));
/// The backend Service's VIP.
pub const SERVICE_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
/// The waypoint Service's VIP.
pub const WAYPOINT_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));

/// Service port and backend port of the HTTP/1.1 backend.
pub const HTTP_SERVICE_PORT: u16 = 80;
pub const HTTP_PORT: u16 = 8080;
/// Service port and backend port of the gRPC backend.
pub const GRPC_SERVICE_PORT: u16 = 50051;
pub const GRPC_PORT: u16 = 50051;

/// HBONE port of ztunnel and of the waypoint.
pub const HBONE_PORT: u16 = 15008;
/// istiod-lite's xDS and CA port (loopback of the server namespace) and its admin.
pub const ISTIOD_GRPC: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15012);
pub const ISTIOD_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15014);
/// The waypoint's admin (`/metrics`): not 15021, which the server ztunnel's readiness
/// holds in the same namespace.
pub const WAYPOINT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15121);
/// Envoy's admin (`/stats`): not 15000, ztunnel's admin in the same namespace.
pub const ENVOY_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 19000);

/// `spiffe://cluster.local/ns/bench/sa/<sa>`.
pub fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

/// `<name>.bench.svc.cluster.local`.
pub fn service_hostname(name: &str) -> String {
    format!("{name}.{NAMESPACE}.svc.cluster.local")
}
