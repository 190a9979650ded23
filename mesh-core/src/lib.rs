//! Shared core of Ambit: everything more than one binary needs. SPIFFE
//! identities, certificates and the rustls configurations of HBONE, the HBONE
//! client pool and server, the metrics registry, the small admin HTTP server,
//! readiness tokens, the drain protocol and the delta xDS client actor. No binary-specific decisions
//! (routing, policy, translation) live here.

pub mod admin;
pub mod control;
pub mod drain;
pub mod duration;
pub mod hbone;
pub mod identity;
pub mod netns;
pub mod readiness;
pub mod telemetry;
pub mod tls;
pub mod xds;
pub mod zds;

pub use identity::Identity;
