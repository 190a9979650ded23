//! The HTTP test apps (`ambit app http-server` and `http-client`): a server
//! that names itself in every response and echoes what it received (method,
//! path, protocol, `x-forwarded-client-cert`, the request headers), with
//! deterministic fault injection and delays; and a client that prints one
//! line per response and a summary counting statuses and backends. Tests of
//! L7 routing read which backend answered and what the proxy passed along.

pub mod client;
pub mod faults;
pub mod server;
pub mod tally;

/// The response header naming the app that answered.
pub const APP_HEADER: &str = "x-ambit-app";
/// The header a mesh proxy uses to pass the caller's identity to the app.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

#[cfg(test)]
mod tests;
