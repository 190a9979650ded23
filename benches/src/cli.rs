//! Command lines of `ambit-bench` and `ambit-echo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::scenario::PathKind;

/// Data-path benchmark of Ambit's ztunnel: direct TCP, a plain TCP proxy hop and HBONE
/// (two ztunnels, mTLS), each in fresh network namespaces, one CPU per side. Needs
/// root, iperf3, iptables and openssl.
#[derive(Debug, Parser)]
#[command(name = "ambit-bench", version)]
pub struct BenchArgs {
    /// The ztunnel binary [default: `ztunnel` next to this binary].
    #[arg(long)]
    pub ztunnel: Option<PathBuf>,
    /// Runs; medians are taken over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Paths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "direct,plain,hbone")]
    pub only: Vec<PathKind>,
    /// Seconds for each iperf3 test and for the connection-rate test [default: 10 for
    /// iperf3, 5 for connection rate].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,
    /// Where to write the JSON results [default: `ambit-bench.json` next to this binary].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Busy percent (all CPUs, steal included) above which the machine is not quiet.
    #[arg(long, default_value_t = 5.0)]
    pub quiet_threshold: f64,
    /// Seconds to wait for a quiet machine before each scenario; a scenario that
    /// starts (or ends) on a busy machine is flagged and left out of the medians.
    #[arg(long, default_value_t = 60)]
    pub quiet_wait: u64,
    /// Keep the working directory (configs, ztunnel logs, raw outputs).
    #[arg(long)]
    pub keep: bool,
}

/// Echo server and latency clients for `ambit-bench`; clients print JSON results.
#[derive(Debug, Parser)]
#[command(name = "ambit-echo", version)]
pub struct EchoArgs {
    #[command(subcommand)]
    pub command: EchoCommand,
}

#[derive(Debug, Subcommand)]
pub enum EchoCommand {
    /// Echo every byte back on every connection (TCP_NODELAY).
    Server {
        #[arg(long, default_value = "0.0.0.0:9000")]
        listen: SocketAddr,
    },
    /// Request/response: one warm connection, SIZE-byte write then read the echo.
    Rr {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 1000)]
        warmup: u32,
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
    },
    /// Connection rate: connect, write 1 byte, read the echo, close, for DURATION s.
    Conn {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_defaults_and_lists() {
        let a = BenchArgs::try_parse_from(["ambit-bench"]).unwrap();
        assert_eq!(a.runs, 3);
        assert_eq!(a.only, [PathKind::Direct, PathKind::Plain, PathKind::Hbone]);
        assert_eq!(a.duration, None);
        let a = BenchArgs::try_parse_from([
            "ambit-bench",
            "--only",
            "plain,hbone",
            "--runs",
            "1",
            "--duration",
            "2",
        ])
        .unwrap();
        assert_eq!(a.only, [PathKind::Plain, PathKind::Hbone]);
        assert_eq!((a.runs, a.duration), (1, Some(2)));
        assert!(BenchArgs::try_parse_from(["ambit-bench", "--runs", "0"]).is_err());
        assert!(BenchArgs::try_parse_from(["ambit-bench", "--only", "tcp"]).is_err());
    }

    #[test]
    fn echo_subcommands() {
        let a = EchoArgs::try_parse_from(["ambit-echo", "rr", "--addr", "10.1.1.2:9000"]).unwrap();
        match a.command {
            EchoCommand::Rr {
                size,
                warmup,
                iterations,
                ..
            } => assert_eq!((size, warmup, iterations), (1024, 1000, 20_000)),
            other => panic!("{other:?}"),
        }
    }
}
