//! Test support for Ambit's integration tests; a dev-dependency only, never linked into
//! a shipped binary.
//!
//! It gives tests real, isolated Linux networking: [`Netns`] creates a uniquely named
//! network namespace (removed on drop, also on panic), runs commands and child processes
//! in it ([`Netns::exec`], [`Netns::spawn`] with a kill-on-drop [`ChildGuard`]) and
//! creates sockets inside it from Rust ([`Netns::run`], [`Netns::tcp_listener`],
//! [`Netns::tcp_connect`]); [`veth::link`] and [`TwoHosts`] wire namespaces together
//! with veth pairs (IPv4 and IPv6, usable as soon as they return); [`EchoServer`] and
//! [`echo_roundtrip`] check a TCP path end to end, half-close included; [`eventually()`]
//! waits on a condition with bounded patience instead of sleeping; [`XdsServer`] is a
//! scripted delta ADS server over real TLS that tests push responses through and whose
//! received requests (ACKs, NACKs, initial versions) they inspect. Every name is unique
//! per process and per call, so tests may run in parallel.
//!
//! What it does not do: it does not skip anything when not run as root (namespace tests
//! fail loudly, see [`require_root`]), it installs no iptables/nft rules, routes or
//! sysctls beyond what a veth link needs, knows nothing of Ambit's crates beyond the wire
//! types of `mesh-api`, and cannot clean up after a test process that was killed with
//! SIGKILL (such leftovers are named `amb-<pid>-...` and can be removed with
//! `ip netns del`).

pub mod echo;
pub mod eventually;
pub mod fake_apiserver;
mod names;
pub mod netns;
pub mod process;
mod sys;
pub mod veth;
pub mod xds_server;

pub use echo::{EchoServer, echo_roundtrip};
pub use eventually::eventually;
pub use ipnet;
pub use netns::Netns;
pub use process::{ChildGuard, require_root};
pub use veth::{TwoHosts, VethPair, link, veth_pair};
pub use xds_server::XdsServer;
