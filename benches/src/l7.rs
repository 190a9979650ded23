//! The L7 benchmark (`ambit-l7-bench`) and its app (`ambit-l7-app`: HTTP/1.1 and gRPC
//! backends and the load client).
//!
//! It compares four paths from a client to a backend, each in fresh network namespaces
//! with one CPU per side: direct, the L4-only mesh (client ztunnel, HBONE, server
//! ztunnel), the mesh with Ambit's waypoint in the middle, and the same hop through
//! Envoy doing the waypoint's job. For HTTP/1.1 and gRPC it measures latency at a fixed
//! 1,000 requests per second and throughput and latency at saturation, each proxy's
//! CPU per request and peak RSS, proves from the proxies' counters that the traffic
//! went through them, and reports medians over runs against the waypoint's targets.
//! See `benches/README.md`.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod envoy;
pub mod layout;
pub mod load;
pub mod mesh;
pub mod report;
pub mod scenario;
pub mod waypoint;

/// The benchmark's gRPC service, generated from `proto/ambit/bench/v1/echo.proto`.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("ambit.bench.v1");
}
