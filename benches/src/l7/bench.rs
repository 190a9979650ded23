//! `ambit-l7-bench` end to end: checks, the CA root, every scenario of every run, the
//! report and the JSON file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::cli::L7BenchArgs;
use super::report::{self, Summary};
use super::scenario::{self, L7Path, ScenarioResult, Settings};
use crate::{procfs, ztunnel};

/// The JSON file.
#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    started_unix_s: u64,
    settings: SettingsRecord,
    /// Every scenario of every run, flagged ones included.
    scenarios: &'a [ScenarioResult],
    summary: Summary,
    /// Set when the benchmark failed; `scenarios` then holds what finished before.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SettingsRecord {
    runs: u32,
    paths: Vec<L7Path>,
    rate: u32,
    warmup_s: f64,
    fixed_s: f64,
    saturate_s: f64,
    fixed_workers: u32,
    saturate_workers: u32,
    binaries: Vec<PathBuf>,
    envoy: Option<PathBuf>,
    envoy_version: Option<String>,
    quiet_threshold_percent: f64,
    client_cpu: u32,
    server_cpu: u32,
    cpus: usize,
    kernel: String,
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} {s}: not a duration"))
}

/// Runs the benchmark as `args` asks.
pub async fn run(args: L7BenchArgs) -> Result<()> {
    let exe_dir = std::env::current_exe()
        .context("locating this binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("this binary has no directory")?;
    let bin_dir = args.bin_dir.clone().unwrap_or(exe_dir.clone());
    let mut paths = args.only.clone();
    paths.sort();
    paths.dedup();
    let envoy = if paths.contains(&L7Path::Envoy) {
        Some(match &args.envoy {
            Some(p) => p.clone(),
            None => super::envoy::find_binary()?,
        })
    } else {
        None
    };
    let settings = Settings {
        app: bin_dir.join("ambit-l7-app"),
        ztunnel: bin_dir.join("ztunnel"),
        waypoint: bin_dir.join("waypoint"),
        istiod: bin_dir.join("istiod-lite"),
        envoy,
        rate: args.rate,
        warmup: secs("warmup", args.warmup)?,
        fixed_duration: secs("duration", args.duration)?,
        saturate_duration: secs("saturate-duration", args.saturate_duration)?,
        fixed_workers: args.fixed_workers,
        saturate_workers: args.saturate_workers,
        quiet_threshold: args.quiet_threshold,
        quiet_max_wait: Duration::from_secs(args.quiet_wait),
        clk_tck: procfs::clk_tck(),
    };
    let binaries = preflight(&settings, &paths)?;
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| exe_dir.join("ambit-l7-bench.json"));
    let work = tempfile::Builder::new()
        .prefix("ambit-l7-bench-")
        .tempdir()
        .context("creating a working directory")?;
    let ca = ztunnel::config::make_root_ca(work.path())?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let mut results = Vec::new();
    let mut outcome = Ok(());
    'runs: for run in 0..args.runs as usize {
        for &path in &paths {
            eprintln!(
                "ambit-l7-bench: run {}/{} {}: waiting for a quiet machine, then measuring",
                run + 1,
                args.runs,
                path.name()
            );
            let dir = work.path().join(format!("run{}-{}", run + 1, path.name()));
            match scenario::run(path, run, &settings, &ca, &dir).await {
                Ok(result) => {
                    eprintln!("ambit-l7-bench: {}", report::progress_line(&result));
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
        tool: "ambit-l7-bench",
        started_unix_s,
        settings: SettingsRecord {
            runs: args.runs,
            paths: paths.clone(),
            rate: args.rate,
            warmup_s: args.warmup,
            fixed_s: args.duration,
            saturate_s: args.saturate_duration,
            fixed_workers: args.fixed_workers,
            saturate_workers: args.saturate_workers,
            binaries,
            envoy_version: settings.envoy.as_deref().map(envoy_version),
            envoy: settings.envoy.clone(),
            quiet_threshold_percent: args.quiet_threshold,
            client_cpu: crate::topology::CLIENT_CPU,
            server_cpu: crate::topology::SERVER_CPU,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        scenarios: &results,
        summary,
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
    };
    let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("ambit-l7-bench: results written to {}", json_path.display());
    if args.keep || outcome.is_err() {
        let kept = work.keep();
        eprintln!(
            "ambit-l7-bench: configs, logs and raw outputs kept in {}",
            kept.display()
        );
    }
    outcome
}

/// Fails early, with the fix, when a tool or binary is missing; returns the binaries
/// the run uses.
fn preflight(settings: &Settings, paths: &[L7Path]) -> Result<Vec<PathBuf>> {
    let missing: Vec<String> = [
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("taskset", "util-linux"),
        ("iptables", "iptables"),
        ("openssl", "openssl"),
    ]
    .iter()
    .filter(|(tool, _)| !in_path(tool))
    .map(|(tool, pkg)| format!("{tool} (apt-get install -y {pkg})"))
    .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    let mut needed = vec![(&settings.app, "benches")];
    if paths.iter().any(|p| *p != L7Path::Direct) {
        needed.push((&settings.ztunnel, "ztunnel"));
    }
    if paths.contains(&L7Path::Waypoint) {
        needed.push((&settings.waypoint, "waypoint"));
        needed.push((&settings.istiod, "istiod-lite"));
    }
    for (binary, package) in &needed {
        if !binary.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p {package}`, pass \
                 --bin-dir, or leave its path out with --only",
                binary.display()
            );
        }
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!(
            "the benchmark pins the client side to CPU 0 and the server side to CPU 1: it needs 2 CPUs"
        );
    }
    Ok(needed.into_iter().map(|(b, _)| b.clone()).collect())
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

fn envoy_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
