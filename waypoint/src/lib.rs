//! Ambit's waypoint: one shared L7 proxy per namespace or service account,
//! provisioned from a Gateway of class `istio-waypoint`. It accepts HBONE
//! from ztunnels, reads HTTP/1.1, HTTP/2 and gRPC (opaque TCP otherwise),
//! runs each request through named phases (authenticate a JWT, authorize,
//! match a route, apply filters, pick an endpoint, forward, respond) and forwards it over pooled
//! HBONE to the destination's ztunnel with the waypoint's own identity.
//!
//! Decisions (route matching and precedence, L7 authorization, retries,
//! budgets, endpoint choice) are plain functions over plain data; the I/O
//! lives at the edges: [`listener`] (HBONE in), [`pipeline`] (per request),
//! [`upstream`] (HBONE out), [`tcp`] (opaque streams). The decisions are
//! [`config`], [`route`], [`filters`], [`jwt`], [`authn`], [`authz`],
//! [`balance`], [`retry`] and [`fault`].

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod fault;
pub mod filters;
pub mod headers;
mod in_connection;
pub mod jwt;
pub mod listener;
pub mod metrics;
mod outcome;
pub mod pipeline;
pub mod proxy;
pub mod retry;
pub mod route;
pub mod settings;
pub mod stream_io;
pub mod tcp;
pub mod upstream;
pub mod xds;

pub use app::{Addresses, App, AppError, Overrides, Shutdown};
pub use outcome::Outcome;
pub use settings::Settings;
