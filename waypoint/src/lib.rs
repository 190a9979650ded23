//! Ambit's waypoint: one shared L7 proxy per namespace or service account,
//! provisioned from a Gateway of class `istio-waypoint`. It accepts HBONE
//! from ztunnels, reads HTTP/1.1, HTTP/2 and gRPC (opaque TCP otherwise),
//! runs each request through named phases (authorize, match a route, apply
//! filters, pick an endpoint, forward, respond) and forwards it over pooled
//! HBONE to the destination's ztunnel with the waypoint's own identity.
//!
//! Decisions (route matching and precedence, L7 authorization, retries,
//! budgets, endpoint choice) are plain functions over plain data; the I/O
//! lives at the edges.

pub mod authz;
pub mod balance;
pub mod config;
pub mod fault;
pub mod filters;
mod outcome;
pub mod retry;
pub mod route;

pub use outcome::Outcome;
