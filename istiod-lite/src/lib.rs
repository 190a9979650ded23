//! istiod-lite: Ambit's control plane. A registry of Kubernetes-shaped
//! resources (`registry`, filled from a watched directory or the Kubernetes
//! API), a pure translation to workload xDS (`translate`), a delta ADS server
//! (`xds`) and a CA (`ca`) on one TLS port.

pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod debug;
pub mod jwks;
pub mod provision;
pub mod translate;
pub mod xds;
pub mod xds_snapshot;

// The registry is shared with the node agent; istiod-lite's modules keep
// their `crate::model` and `crate::registry` paths.
pub use mesh_registry as registry;
pub use mesh_registry::model;
