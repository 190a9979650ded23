//! Ambit's data-path benchmark (`ambit-bench`) and its echo server and clients
//! (`ambit-echo`).
//!
//! It measures three paths between a client and a server network namespace, each
//! scenario in fresh namespaces with one CPU per side: direct TCP, a plain TCP proxy
//! hop through a client-side ztunnel (`tunnelProtocol: NONE`), and HBONE through a
//! client-side and a server-side ztunnel (mTLS). For each it runs iperf3 with 1 and 8
//! streams, a 1 KiB request/response test and a connection-rate test, records each
//! ztunnel's CPU seconds and peak RSS, checks from ztunnel's own counters that the
//! traffic went through it, and reports medians over runs and ratios to direct TCP in
//! the same run. See `benches/README.md` for the method.
//!
//! `ambit-control-bench` (module `control`) measures the control plane at scale;
//! `ambit-enrol-bench` (module `enrol`) the time from a namespace label to mTLS
//! on a local cluster, and ztunnel memory per enrolled pod.
//!
//! What it does not do: build ztunnel, install tools, or tune the machine; it needs
//! root and two CPUs, and judges (does not control) how quiet the machine is.

pub mod bench;
pub mod cli;
pub mod control;
pub mod echo;
pub mod enrol;
pub mod http;
pub mod iperf;
pub mod l7;
pub mod procfs;
pub mod prom;
pub mod quiet;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod topology;
pub mod ztunnel;
