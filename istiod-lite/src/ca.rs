//! The CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` (spec 4).
//! `check` decides whether a request may be signed (a plain function over the
//! request, the caller and a registry snapshot); `service` authenticates,
//! checks, signs and counts; `root` keeps the signing root on disk.

pub mod check;
pub mod metrics;
pub mod root;
mod service;

pub use check::{Approved, CaPolicy, Refusal, RefusalReason, check_request};
pub use metrics::CaMetrics;
pub use service::CaServer;
