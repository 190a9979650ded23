//! The delta ADS client (spec 3): one long-lived gRPC stream to the control
//! plane carrying every subscribed resource type. Each type has a [`Handler`]
//! that applies updates to whatever model the binary keeps; a response is ACKed
//! only after its handler has applied it, and NACKed with the names and reasons
//! of the resources it rejected (the rest of the batch still applies).
//!
//! The client is an actor: [`XdsClient::run`] owns the stream and reconnects
//! with backoff; callers observe it through [`XdsClient::status`]. It does not
//! decode resources (handlers do) and does not support on-demand mode.

mod backoff;
mod client;
mod metrics;
mod node;
mod versions;

use std::sync::Arc;

use prost_types::Any;

pub use backoff::Backoff;
pub use client::XdsClient;
pub use metrics::{ReasonLabel, Termination, UrlLabel, XdsMetrics};
pub use node::NodeInfo;
pub use versions::{TypeVersions, nack_message};

/// An address of workload discovery: 4 (IPv4) or 16 (IPv6) raw bytes;
/// anything else is not an address.
pub fn ip_from_bytes(raw: &[u8]) -> Option<std::net::IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(raw).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// One received resource: its name, version and encoded body.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// What one response asks a handler to change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    /// Added or changed resources.
    pub resources: Vec<Resource>,
    /// Names of removed resources.
    pub removed: Vec<String>,
}

/// A resource a handler refused, and why. It is left out of the applied
/// versions so the server sends it again on reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Applies the updates of one resource type. `apply` runs on the client task
/// and must not block for long: it decodes, validates and swaps in a model.
pub trait Handler: Send + Sync + std::fmt::Debug + 'static {
    /// The type URL this handler subscribes to.
    fn type_url(&self) -> &str;
    /// The resource names to subscribe to; empty (the default) is a wildcard
    /// subscription to every resource of the type.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Applies every valid resource and removal of `update`, returns the
    /// resources it refused.
    fn apply(&self, update: &Update) -> Vec<Rejection>;
}

/// What the client is doing, for readiness and `/config_dump`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    /// A stream is open.
    pub connected: bool,
    /// Every handler's type has had a response applied (ACKed, or NACKed for
    /// some resources with the rest applied) at least once. Never goes back
    /// to false: on disconnect the last config keeps serving.
    pub synced: bool,
    /// Why the last stream failed, or the last NACK sent.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xDS control plane: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("xDS: two handlers for type {0}")]
    DuplicateType(String),
    #[error("xDS: no handlers")]
    NoHandlers,
    #[error("xDS stream: {0}")]
    Stream(Box<tonic::Status>),
    #[error("xDS stream: the request channel closed")]
    RequestsClosed,
}

pub(crate) type Handlers = Vec<Arc<dyn Handler>>;
