//! Ambit's node tunnel. In dedicated mode one ztunnel serves the workload of
//! its network namespace; in in-pod mode (`inpod`) it serves every pod the
//! node agent hands it over ZDS, from listeners inside each pod's network
//! namespace. For each served workload it captures outbound TCP (15001),
//! carries it over mTLS HBONE tunnels to the destination's ztunnel, accepts
//! HBONE (15008) and plaintext (15006) inbound, enforces L4 authorization and
//! PeerAuthentication, and reports Istio's L4 metrics. Its model comes from a
//! YAML file or from a control plane over workload xDS. It does not parse L7
//! (that is the waypoint's job).

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
