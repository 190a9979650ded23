//! `ambit-bench` end to end: checks, the CA root, every scenario of every run, the
//! table and the JSON file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::report::{self, PathSummary};
use crate::scenario::{self, PathKind, ScenarioResult, Settings};
use crate::{procfs, ztunnel};

/// Default iperf3 test length.
const IPERF_DURATION: Duration = Duration::from_secs(10);
/// Default connection-rate test length.
const CONN_DURATION: Duration = Duration::from_secs(5);

/// The JSON file.
#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    started_unix_s: u64,
    settings: SettingsRecord,
    machine: Machine,
    /// Every scenario of every run, flagged ones included.
    scenarios: &'a [ScenarioResult],
    summary: Vec<PathSummary>,
    /// Set when the benchmark failed; `scenarios` then holds what finished before.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SettingsRecord {
    runs: u32,
    paths: Vec<PathKind>,
    ztunnel: PathBuf,
    iperf_duration_s: u64,
    conn_duration_s: f64,
    rr_size: usize,
    rr_warmup: u32,
    rr_iterations: u32,
    quiet_threshold_percent: f64,
    quiet_max_wait_s: u64,
    client_cpu: u32,
    server_cpu: u32,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    iperf3: String,
    /// TCP settings that new namespaces take from the host.
    tcp_rmem: String,
    tcp_wmem: String,
    tcp_congestion_control: String,
}

/// Runs the benchmark as `args` asks.
pub async fn run(args: BenchArgs) -> Result<()> {
    let exe_dir = std::env::current_exe()
        .context("locating this binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("this binary has no directory")?;
    let mut paths = args.only.clone();
    paths.sort();
    paths.dedup();
    let mesh = paths.iter().any(|p| p.is_mesh());
    let settings = Settings {
        ztunnel: args
            .ztunnel
            .clone()
            .unwrap_or_else(|| exe_dir.join("ztunnel")),
        echo: exe_dir.join("ambit-echo"),
        iperf_duration: args.duration.map_or(IPERF_DURATION, Duration::from_secs),
        conn_duration: args.duration.map_or(CONN_DURATION, Duration::from_secs),
        rr_size: 1024,
        rr_warmup: 1000,
        rr_iterations: 20_000,
        quiet_threshold: args.quiet_threshold,
        quiet_max_wait: Duration::from_secs(args.quiet_wait),
        clk_tck: procfs::clk_tck(),
    };
    preflight(&settings, mesh)?;
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| exe_dir.join("ambit-bench.json"));

    let work = tempfile::Builder::new()
        .prefix("ambit-bench-")
        .tempdir()
        .context("creating a working directory")?;
    let ca = if mesh {
        Some(ztunnel::config::make_root_ca(work.path())?)
    } else {
        None
    };

    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut results = Vec::new();
    let mut outcome = Ok(());
    'runs: for run in 0..args.runs as usize {
        for &path in &paths {
            eprintln!(
                "ambit-bench: run {}/{} {}: waiting for a quiet machine, then measuring",
                run + 1,
                args.runs,
                path.name()
            );
            let dir = work.path().join(format!("run{}-{}", run + 1, path.name()));
            match scenario::run(path, run, &settings, ca.as_ref(), &dir).await {
                Ok(result) => {
                    eprintln!("ambit-bench: {}", report::progress_line(&result));
                    results.push(result);
                }
                Err(e) => {
                    outcome = Err(e.context(format!("run {} {}", run + 1, path.name())));
                    break 'runs;
                }
            }
        }
    }

    let summary = report::summarize(&results, &paths);
    if !results.is_empty() {
        println!("{}", report::render(&summary));
    }
    let report = Report {
        tool: "ambit-bench",
        started_unix_s,
        settings: SettingsRecord {
            runs: args.runs,
            paths: paths.clone(),
            ztunnel: settings.ztunnel.clone(),
            iperf_duration_s: settings.iperf_duration.as_secs(),
            conn_duration_s: settings.conn_duration.as_secs_f64(),
            rr_size: settings.rr_size,
            rr_warmup: settings.rr_warmup,
            rr_iterations: settings.rr_iterations,
            quiet_threshold_percent: settings.quiet_threshold,
            quiet_max_wait_s: args.quiet_wait,
            client_cpu: crate::topology::CLIENT_CPU,
            server_cpu: crate::topology::SERVER_CPU,
        },
        machine: machine(),
        scenarios: &results,
        summary,
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
    };
    let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("ambit-bench: results written to {}", json_path.display());
    if args.keep || outcome.is_err() {
        let kept = work.keep();
        eprintln!(
            "ambit-bench: configs, logs and raw outputs kept in {}",
            kept.display()
        );
    }
    outcome
}

/// Fails early, with the fix, when a tool or binary is missing.
fn preflight(settings: &Settings, mesh: bool) -> Result<()> {
    let mut tools = vec![
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("taskset", "util-linux"),
        ("iperf3", "iperf3"),
    ];
    if mesh {
        tools.push(("iptables", "iptables"));
        tools.push(("openssl", "openssl"));
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !in_path(tool))
        .map(|(tool, pkg)| format!("{tool} (apt-get install -y {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    if !settings.echo.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p benches`",
            settings.echo.display()
        );
    }
    if mesh && !settings.ztunnel.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p ztunnel`, pass \
             --ztunnel PATH, or measure direct TCP only with --only direct",
            settings.ztunnel.display()
        );
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!(
            "the benchmark pins the client side to CPU 0 and the server side to CPU 1: it needs 2 CPUs"
        );
    }
    Ok(())
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

fn machine() -> Machine {
    let iperf3 = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let sysctl = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: sysctl("/proc/sys/kernel/osrelease"),
        iperf3,
        tcp_rmem: sysctl("/proc/sys/net/ipv4/tcp_rmem"),
        tcp_wmem: sysctl("/proc/sys/net/ipv4/tcp_wmem"),
        tcp_congestion_control: sysctl("/proc/sys/net/ipv4/tcp_congestion_control"),
    }
}
