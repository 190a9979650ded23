//! Ambit's node tunnel. In dedicated mode one ztunnel serves the workload of
//! its network namespace: it captures the workload's outbound TCP (15001),
//! carries it over mTLS HBONE tunnels to the destination's ztunnel, accepts
//! HBONE (15008) and plaintext (15006) inbound, enforces L4 authorization and
//! PeerAuthentication, and reports Istio's L4 metrics. It does not parse L7
//! (that is the waypoint's job) and does not yet take config from a control
//! plane (a YAML file fills the same model).

pub mod admin;
pub mod app;
pub mod authz;
pub mod capture;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod sockets;
pub mod state;
pub mod xds;

pub use app::{Addresses, App, AppError, Shutdown};
pub use config::Config;
