//! Ambit's command line, as a library so tests and benchmarks use the same
//! code as the `ambit` binary.
//!
//! - `cluster`: the local cluster runner (`ambit up`, `ambit down`, the pod
//!   runner `ambit kubelet`): nodes and pods as network namespaces, wired by
//!   the real CNI plugins, with istiod-lite, node agents and ztunnels.
//! - `label`: `ambit label`, editing the cluster directory's YAML.
//! - `status`: `ambit status`, the table of nodes, pods and mesh health.
//! - `app`: small built-in apps (`ambit app server|client`) for examples.
//! - `http_app`, `grpc_app`: the L7 test apps (`ambit app http-server|
//!   http-client|grpc-server|grpc-client`) for waypoint examples and tests.
//!
//! It does not talk to a Kubernetes API server: the local cluster's API is
//! its directory of YAML, read by istiod-lite's and the node agents'
//! directory sources.

pub mod app;
pub mod cluster;
pub mod grpc_app;
pub mod http_app;
pub mod label;
pub mod status;
pub mod waypoint;
