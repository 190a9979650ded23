//! The state every connection and request of the waypoint shares. The
//! discovery model and the compiled config are swapped whole (arc-swap), so
//! the data path reads them without taking a lock.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_core::Identity;
use mesh_core::tls::CertStore;

use crate::access_log::AccessLog;
use crate::balance::Balancer;
use crate::config::Snapshot;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::retry::Budget;
use crate::upstream::Upstream;

/// Limits against bad or slow input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a client has to send a full HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// The largest request head accepted (HTTP/1.1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How long to wait for a caller's first bytes to tell the protocol; a
    /// caller that stays silent is treated as opaque TCP (server-first protocols).
    pub detect_timeout: Duration,
    /// The whole-request timeout when no route sets one.
    pub default_request_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_concurrent_streams: 1000,
            detect_timeout: Duration::from_secs(1),
            default_request_timeout: None,
        }
    }
}

#[derive(Debug)]
pub struct Proxy {
    pub discovery: ArcSwap<Discovery>,
    /// The compiled L7 config; `None` until the first `Waypoint` arrives.
    pub config: ArcSwapOption<Snapshot>,
    /// Endpoint choice and outlier ejection, shared by every request.
    pub balancer: Balancer,
    /// The waypoint-wide retry budget.
    pub budget: Budget,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub access_log: Arc<AccessLog>,
    /// The waypoint's own identity (presented upstream, `By=` in XFCC).
    pub identity: Identity,
    pub identity_uri: String,
    pub certs: Arc<CertStore>,
    pub limits: Limits,
}
