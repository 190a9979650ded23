//! The enrolment benchmark (`ambit-enrol-bench`): on a local `ambit up`
//! cluster, how long after a namespace is labelled ambient its running pods
//! make their first mTLS connection, for 1, 10 and 50 pods on a node, and how
//! much resident memory the node's ztunnel gains per enrolled pod.
//!
//! `layout` writes the cluster directory, `detect` turns scrapes of the
//! server node's ztunnel metrics into each pod's first mTLS connection,
//! `client_log` tallies the clients' failed attempts during enrolment,
//! `figures` is the arithmetic, `run` drives clusters and runs, `report`
//! prints, `teardown` takes the cluster down on every way out. It does not
//! build the binaries; it needs root.

pub mod client_log;
pub mod detect;
pub mod figures;
pub mod layout;
pub mod report;
pub mod run;
pub mod teardown;
