//! One scenario: fresh namespaces, the servers, the path under test (direct, a plain
//! TCP ztunnel hop, or HBONE through two ztunnels), the four tests, the proxies' usage,
//! the proof that traffic went through the mesh, and the quiet checks around it all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::echo::{ConnResult, RrResult};
use crate::iperf::{self, IperfResult};
use crate::quiet::{self, QuietCheck};
use crate::topology::{self, CLIENT_CPU, SERVER_CPU, Topology};
use crate::ztunnel::config::{CaFiles, Side, TunnelProtocol, ztunnel_config};
use crate::ztunnel::{self, PathProof, Ztunnel};

/// The echo server's port.
pub const ECHO_PORT: u16 = 9000;
/// The iperf3 server's port.
pub const IPERF_PORT: u16 = 5201;
/// How long a server may take to listen, and ztunnel to become ready.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// Slack on top of a test's own duration before it counts as hung.
const TEST_SLACK: Duration = Duration::from_secs(60);

/// The paths compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Client to server app, no proxy.
    Direct,
    /// Redirected to a client-side ztunnel that proxies plain TCP to the server.
    Plain,
    /// Redirected to a client-side ztunnel, HBONE (mTLS) to a server-side ztunnel.
    Hbone,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Plain => "plain",
            PathKind::Hbone => "hbone",
        }
    }

    /// Whether the path goes through ztunnel.
    pub fn is_mesh(self) -> bool {
        self != PathKind::Direct
    }
}

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ztunnel: PathBuf,
    pub echo: PathBuf,
    pub iperf_duration: Duration,
    pub conn_duration: Duration,
    pub rr_size: usize,
    pub rr_warmup: u32,
    pub rr_iterations: u32,
    pub quiet_threshold: f64,
    pub quiet_max_wait: Duration,
    pub clk_tck: u64,
}

/// One proxy's resource use over a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyUsage {
    /// `client` or `server`.
    pub side: &'static str,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

/// Everything one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub path: PathKind,
    /// 0-based run index.
    pub run: usize,
    pub quiet_before: QuietCheck,
    pub quiet_after: QuietCheck,
    /// The machine was busy around the scenario: left out of the medians.
    pub flagged: bool,
    pub rr: RrResult,
    pub conn: ConnResult,
    pub iperf_1: IperfResult,
    pub iperf_8: IperfResult,
    pub proxies: Vec<ProxyUsage>,
    pub proof: Option<PathProof>,
}

/// Runs one scenario; its files (configs, logs, raw outputs) go to `dir`.
pub async fn run(
    path: PathKind,
    run: usize,
    settings: &Settings,
    ca: Option<&CaFiles>,
    dir: &Path,
) -> Result<ScenarioResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let quiet_before = quiet::wait_quiet(settings.quiet_threshold, settings.quiet_max_wait)?;

    let topo = Topology::new(path.name())?;
    let running = start(path, &topo, settings, ca, dir).await?;
    let measured = measure(path, &topo, settings, &running, dir).await;
    // Stop everything, then sample with nothing of the benchmark running.
    drop(running);
    let m = measured?;
    let quiet_after = quiet::check_once(settings.quiet_threshold)?;
    drop(topo);
    Ok(ScenarioResult {
        path,
        run,
        flagged: !(quiet_before.quiet && quiet_after.quiet),
        quiet_before,
        quiet_after,
        rr: m.rr,
        conn: m.conn,
        iperf_1: m.iperf_1,
        iperf_8: m.iperf_8,
        proxies: m.proxies,
        proof: m.proof,
    })
}

/// The processes of a scenario; all killed when dropped.
struct Running {
    _echo: mesh_testkit::ChildGuard,
    _iperf: mesh_testkit::ChildGuard,
    client_zt: Option<Ztunnel>,
    server_zt: Option<Ztunnel>,
}

impl Running {
    fn log_tails(&self) -> String {
        [&self.client_zt, &self.server_zt]
            .into_iter()
            .flatten()
            .map(|z| format!("\n{:?} ztunnel log: {}", z.side, z.log_tail()))
            .collect()
    }
}

async fn start(
    path: PathKind,
    topo: &Topology,
    settings: &Settings,
    ca: Option<&CaFiles>,
    dir: &Path,
) -> Result<Running> {
    let server = topo.server();
    let echo_listen = format!("0.0.0.0:{ECHO_PORT}");
    let echo = topology::spawn_pinned(
        server,
        SERVER_CPU,
        &settings.echo,
        &["server", "--listen", &echo_listen],
        &dir.join("echo-server.log"),
    )?;
    let iperf_port = IPERF_PORT.to_string();
    let iperf = topology::spawn_pinned(
        server,
        SERVER_CPU,
        Path::new("iperf3"),
        &["-s", "-p", &iperf_port],
        &dir.join("iperf3-server.log"),
    )?;
    topology::wait_listening(server, ECHO_PORT, &echo, START_PATIENCE).await?;
    topology::wait_listening(server, IPERF_PORT, &iperf, START_PATIENCE).await?;

    let mut running = Running {
        _echo: echo,
        _iperf: iperf,
        client_zt: None,
        server_zt: None,
    };
    if !path.is_mesh() {
        return Ok(running);
    }
    let ca = ca.context("a mesh path needs the CA root")?;
    let tunnel = match path {
        PathKind::Hbone => TunnelProtocol::Hbone,
        _ => TunnelProtocol::None,
    };
    let write_config = |side: Side| -> Result<PathBuf> {
        let cfg = ztunnel_config(side, ca, topo.client_ip(), topo.server_ip(), tunnel);
        let file = dir.join(format!("ztunnel-{}.yaml", side.workload()));
        std::fs::write(&file, cfg.to_yaml()?)
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    };
    // The server side first, so the client ztunnel's first tunnel finds it ready.
    let sides: &[Side] = match path {
        PathKind::Hbone => &[Side::Server, Side::Client],
        _ => &[Side::Client],
    };
    for &side in sides {
        let (ns, cpu) = match side {
            Side::Client => (topo.client(), CLIENT_CPU),
            Side::Server => (server, SERVER_CPU),
        };
        let config = write_config(side)?;
        let log = dir.join(format!("ztunnel-{}.log", side.workload()));
        let zt = Ztunnel::start(
            ns,
            side,
            cpu,
            &settings.ztunnel,
            &config,
            &log,
            START_PATIENCE,
        )
        .await?;
        match side {
            Side::Client => running.client_zt = Some(zt),
            Side::Server => running.server_zt = Some(zt),
        }
    }
    topo.redirect_outbound(topo.server_ip())?;
    Ok(running)
}

struct Measured {
    rr: RrResult,
    conn: ConnResult,
    iperf_1: IperfResult,
    iperf_8: IperfResult,
    proxies: Vec<ProxyUsage>,
    proof: Option<PathProof>,
}

async fn measure(
    path: PathKind,
    topo: &Topology,
    settings: &Settings,
    running: &Running,
    dir: &Path,
) -> Result<Measured> {
    measure_inner(path, topo, settings, running, dir)
        .await
        .with_context(|| format!("{} scenario{}", path.name(), running.log_tails()))
}

async fn measure_inner(
    path: PathKind,
    topo: &Topology,
    settings: &Settings,
    running: &Running,
    dir: &Path,
) -> Result<Measured> {
    let client = topo.client();
    let target = SocketAddr::new(topo.server_ip(), ECHO_PORT).to_string();
    let echo_client = |args: &[&str], timeout: Duration, out: &str| -> Result<String> {
        topology::run_pinned(
            client,
            CLIENT_CPU,
            &settings.echo,
            args,
            timeout,
            &dir.join(out),
        )
    };

    let (size, warmup, iterations) = (
        settings.rr_size.to_string(),
        settings.rr_warmup.to_string(),
        settings.rr_iterations.to_string(),
    );
    let rr_out = echo_client(
        &[
            "rr",
            "--addr",
            &target,
            "--size",
            &size,
            "--warmup",
            &warmup,
            "--iterations",
            &iterations,
        ],
        TEST_SLACK * 2,
        "rr.json",
    )?;
    let rr: RrResult = serde_json::from_str(&rr_out).context("parsing the rr client's output")?;

    let conn_secs = settings.conn_duration.as_secs_f64().to_string();
    let conn_out = echo_client(
        &["conn", "--addr", &target, "--duration", &conn_secs],
        settings.conn_duration + TEST_SLACK,
        "conn.json",
    )?;
    let conn: ConnResult =
        serde_json::from_str(&conn_out).context("parsing the connection-rate client's output")?;
    if conn.connections == 0 {
        bail!(
            "connection-rate test: no connection completed ({} errors, first: {})",
            conn.errors,
            conn.first_error.as_deref().unwrap_or("-")
        );
    }

    let iperf_1 = run_iperf(topo, settings, 1, dir)?;
    let iperf_8 = run_iperf(topo, settings, 8, dir)?;

    let mut proxies = Vec::new();
    for zt in [&running.client_zt, &running.server_zt]
        .into_iter()
        .flatten()
    {
        let usage = zt.usage(settings.clk_tck)?;
        proxies.push(ProxyUsage {
            side: zt.side.workload(),
            cpu_seconds: usage.cpu_seconds,
            peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
        });
    }

    let proof = match &running.client_zt {
        None => None,
        Some(client_zt) => {
            let client_metrics = client_zt.metrics(topo.client())?;
            let server_metrics = match &running.server_zt {
                Some(zt) => Some(zt.metrics(topo.server())?),
                None => None,
            };
            // rr: 1; conn: every attempt; iperf3: a control connection plus one per
            // stream, twice.
            let expected = 1 + conn.connections + conn.errors + (1 + 1) + (1 + 8);
            let proof =
                ztunnel::verify_path(path, &client_metrics, server_metrics.as_deref(), expected)?;
            let counted = proof.counted(path);
            if counted < expected as f64 {
                eprintln!(
                    "ambit-bench: warning: the client ztunnel counted {counted} connections, \
                     the clients opened at least {expected}: some traffic may have bypassed it"
                );
            }
            Some(proof)
        }
    };
    Ok(Measured {
        rr,
        conn,
        iperf_1,
        iperf_8,
        proxies,
        proof,
    })
}

fn run_iperf(
    topo: &Topology,
    settings: &Settings,
    streams: u32,
    dir: &Path,
) -> Result<IperfResult> {
    let server = topo.server_ip().to_string();
    let port = IPERF_PORT.to_string();
    let secs = settings.iperf_duration.as_secs().max(1).to_string();
    let streams_arg = streams.to_string();
    let out = topology::run_pinned(
        topo.client(),
        CLIENT_CPU,
        Path::new("iperf3"),
        &[
            "-c",
            &server,
            "-p",
            &port,
            "-t",
            &secs,
            "-P",
            &streams_arg,
            "-J",
        ],
        settings.iperf_duration + TEST_SLACK,
        &dir.join(format!("iperf3-P{streams}.json")),
    )
    .with_context(|| format!("iperf3 with {streams} streams (apt-get install -y iperf3)"))?;
    Ok(iperf::parse_json(&out)?)
}
