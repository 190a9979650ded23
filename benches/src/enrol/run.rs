//! One scenario per pod count: a fresh cluster (`ambit up` with the mesh),
//! then several runs of label -> every pod's first mTLS connection ->
//! unlabel, with ztunnel's resident memory read around each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ambit::cluster::journal::{Journal, Record};
use ambit::cluster::{Binaries, Cluster, ClusterOptions, Plan, probe};
use ambit::label::{self, LabelChange, Target};
use anyhow::{Context, bail};
use serde::Serialize;

use super::client_log;
use super::detect::{self, FirstMtls, Scrape, Watch};
use super::figures::{self, RunTimes, Spread};
use super::layout::{self, CLIENT_NAMESPACE, CLIENT_NODE, DATAPLANE_MODE, SERVER_NODE};
use super::teardown::{Guard, Teardown};
use crate::procfs;
use crate::quiet::{self, QuietCheck};

const METRICS: &str = "127.0.0.1:15020";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// RSS samples per reading, 100 ms apart; the median is kept.
const RSS_SAMPLES: usize = 5;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "ambit-enrol-bench",
    about = "Enrolment benchmark: time from labelling a namespace ambient to each running pod's first mTLS connection, and ztunnel memory per enrolled pod, on a local `ambit up` cluster."
)]
pub struct EnrolArgs {
    /// Client pods on node-1, one scenario (a fresh cluster) each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub pods: Vec<usize>,
    /// Label/unlabel runs per scenario.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// How often each client pod opens a connection to the server.
    #[arg(long, default_value = "20ms", value_parser = mesh_core::duration::parse)]
    pub every: Duration,
    /// Connections per second of all clients together at most: with many
    /// pods each calls less often than `--every`.
    #[arg(long, default_value_t = 1000)]
    pub max_rate: u32,
    /// How often the server node's ztunnel metrics are scraped.
    #[arg(long, default_value = "10ms", value_parser = mesh_core::duration::parse)]
    pub poll: Duration,
    /// Longest a run may take from the label to the last pod's mTLS connection.
    #[arg(long, default_value = "60s", value_parser = mesh_core::duration::parse)]
    pub timeout: Duration,
    /// Pause after the last pod's first mTLS connection before reading
    /// ztunnel's memory, so every pod's proxy carries traffic.
    #[arg(long, default_value = "2s", value_parser = mesh_core::duration::parse)]
    pub settle: Duration,
    /// Where `ambit`, `istiod-lite`, `node-agent`, `ambit-cni` and `ztunnel`
    /// are [default: AMBIT_BIN_DIR, else the directory of this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write every run's figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Busy percent above which the machine is "not quiet".
    #[arg(long, default_value_t = 5.0)]
    pub quiet_threshold: f64,
    /// How long to wait for a quiet machine before each scenario.
    #[arg(long, default_value = "60s", value_parser = mesh_core::duration::parse)]
    pub quiet_wait: Duration,
}

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub struct EnrolReport {
    pub every_ms: f64,
    pub max_rate: u32,
    pub poll_ms: f64,
    pub cpus: usize,
    pub load_at_start: String,
    pub load_at_end: String,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Serialize)]
pub struct Scenario {
    pub pods: usize,
    /// How often each client connected (`--every`, stretched by `--max-rate`).
    pub client_every_ms: f64,
    pub cluster_up_s: f64,
    /// With nothing of the benchmark running, before the cluster and after it.
    pub quiet_before: QuietCheck,
    pub quiet_after: QuietCheck,
    /// Other load on the machine around the scenario.
    pub flagged: bool,
    /// Node-1's ztunnel before any pod of it was ever enrolled.
    pub rss_fresh_kib: u64,
    pub runs: Vec<Run>,
    pub first_pod: Option<Spread>,
    pub all_pods: Option<Spread>,
    /// `(RSS after the first enrolment - rss_fresh) / pods`.
    pub rss_per_pod_first_kib: Option<f64>,
    /// Median over runs of `(RSS enrolled - RSS just before the label) / pods`.
    pub rss_per_pod_runs_kib: Option<f64>,
    pub widest_window_ms: f64,
    /// Client attempts that failed during enrolment, all runs together.
    pub client_failures: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    /// How long writing the label took (t0 is when it was in place).
    pub label_write_ms: f64,
    pub times: RunTimes,
    pub per_pod: BTreeMap<String, FirstMtls>,
    pub scrapes: u32,
    pub rss_before_kib: u64,
    pub rss_enrolled_kib: u64,
    /// The whole machine over 1 s before the label, the clients calling.
    pub busy_before_percent: f64,
    /// The whole machine from the label to the last pod's mTLS connection.
    pub busy_during_percent: f64,
    pub load_at_label: String,
    /// Client attempts that failed from the label to the RSS reading, by
    /// reason, all pods together.
    pub client_failures: BTreeMap<String, usize>,
}

pub fn run(args: &EnrolArgs, teardown: &Teardown) -> anyhow::Result<EnrolReport> {
    if args.pods.is_empty() || args.pods.contains(&0) {
        bail!("--pods: give pod counts of at least 1, e.g. 1,10,50");
    }
    let binaries = match &args.bin_dir {
        Some(dir) => Binaries { dir: dir.clone() },
        None => Binaries::locate(),
    };
    let load_at_start = loadavg();
    let mut scenarios = Vec::new();
    for &pods in &args.pods {
        eprintln!("{pods} pod(s): waiting for a quiet machine");
        let quiet_before = quiet::wait_quiet(args.quiet_threshold, args.quiet_wait)?;
        let mut scenario = scenario(args, &binaries, teardown, pods, quiet_before)?;
        scenario.quiet_after = quiet::check_once(args.quiet_threshold)?;
        scenario.flagged = !scenario.quiet_before.quiet || !scenario.quiet_after.quiet;
        scenarios.push(scenario);
    }
    Ok(EnrolReport {
        every_ms: args.every.as_secs_f64() * 1000.0,
        max_rate: args.max_rate,
        poll_ms: args.poll.as_secs_f64() * 1000.0,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        load_at_start,
        load_at_end: loadavg(),
        scenarios,
    })
}

fn scenario(
    args: &EnrolArgs,
    binaries: &Binaries,
    teardown: &Teardown,
    pods: usize,
    quiet_before: QuietCheck,
) -> anyhow::Result<Scenario> {
    // Per process and pod count, so two invocations never share a cluster.
    let name = format!("enrol{}-{pods}", std::process::id() % 100_000);
    let work = tempfile::Builder::new().prefix("ambit-enrol-").tempdir()?;
    let dir = work.path().join("cluster");
    let mut options = ClusterOptions::new(&name);
    options.binaries = binaries.clone();
    options.wait = Duration::from_secs(120);
    teardown.work_dir(work.keep());
    teardown.cluster(options.state_dir());
    let guard = Guard(teardown.clone());
    let every = layout::client_interval(args.every, pods, args.max_rate);
    layout::write(&dir, pods, every).context("writing the cluster directory")?;

    eprintln!("{pods} pod(s): ambit up");
    let started = Instant::now();
    let cluster = Cluster::up(&dir, &options).context("ambit up")?;
    let cluster_up_s = started.elapsed().as_secs_f64();
    let plan = cluster.plan().clone();
    let server_netns = node_netns(&plan, SERVER_NODE)?;
    let ztunnel = ztunnel_pid(&plan, CLIENT_NODE)?;
    let names: Vec<String> = (0..pods).map(layout::client_pod).collect();

    wait_for(
        "every client pod calling the server through its node's ztunnel",
        Duration::from_secs(60),
        || {
            let calling =
                detect::any_counts(&scrape_samples(&server_netns)?, CLIENT_NAMESPACE, &names);
            let silent: Vec<&String> = calling
                .iter()
                .filter(|(_, c)| **c == 0.0)
                .map(|(p, _)| p)
                .collect();
            if silent.is_empty() {
                Ok(())
            } else {
                bail!("not seen yet: {silent:?}")
            }
        },
    )?;
    let rss_fresh_kib = rss_median(ztunnel)?;

    let mut runs = Vec::new();
    for index in 0..args.runs.max(1) {
        wait_enrolment(&cluster, false)?;
        let run = one_run(args, &cluster, &server_netns, ztunnel, &names)
            .with_context(|| format!("{pods} pod(s), run {}", index + 1))?;
        eprintln!(
            "{pods} pod(s), run {}: first pod {:.0} ms, all pods {:.0} ms",
            index + 1,
            run.times.first_pod_ms,
            run.times.all_pods_ms
        );
        runs.push(run);
        label::label(
            &dir,
            &Target::Namespace(CLIENT_NAMESPACE.into()),
            &[LabelChange::Remove {
                key: DATAPLANE_MODE.into(),
            }],
        )?;
    }
    wait_enrolment(&cluster, false)?;
    drop(guard);

    let first: Vec<f64> = runs.iter().map(|r| r.times.first_pod_ms).collect();
    let all: Vec<f64> = runs.iter().map(|r| r.times.all_pods_ms).collect();
    let per_run_rss: Vec<f64> = runs
        .iter()
        .filter_map(|r| figures::rss_per_pod_kib(r.rss_before_kib, r.rss_enrolled_kib, pods))
        .collect();
    let mut client_failures = BTreeMap::new();
    for run in &runs {
        client_log::add(&mut client_failures, &run.client_failures);
    }
    Ok(Scenario {
        client_failures,
        pods,
        client_every_ms: every.as_secs_f64() * 1000.0,
        cluster_up_s,
        quiet_after: quiet_before.clone(),
        quiet_before,
        flagged: false,
        rss_fresh_kib,
        rss_per_pod_first_kib: runs
            .first()
            .and_then(|r| figures::rss_per_pod_kib(rss_fresh_kib, r.rss_enrolled_kib, pods)),
        rss_per_pod_runs_kib: crate::stats::median(&per_run_rss),
        widest_window_ms: runs
            .iter()
            .map(|r| r.times.widest_window_ms)
            .fold(0.0, f64::max),
        first_pod: figures::spread(&first),
        all_pods: figures::spread(&all),
        runs,
    })
}

fn one_run(
    args: &EnrolArgs,
    cluster: &Cluster,
    server_netns: &str,
    ztunnel: u32,
    names: &[String],
) -> anyhow::Result<Run> {
    let busy_before_percent = quiet::sample(quiet::SAMPLE)?;
    let rss_before_kib = rss_median(ztunnel)?;
    let baseline = detect::mtls_counts(&scrape_samples(server_netns)?, CLIENT_NAMESPACE, names);
    let load_at_label = loadavg();
    let logs: Vec<PathBuf> = names
        .iter()
        .map(|pod| {
            cluster
                .plan()
                .state_dir
                .join("pods")
                .join(format!("{CLIENT_NAMESPACE}.{pod}.log"))
        })
        .collect();
    let offsets: Vec<u64> = logs.iter().map(|l| client_log::length(l)).collect();
    let cpu_before = procfs::read_cpu_times()?;

    let writing = Instant::now();
    label::label(
        &cluster.plan().dir,
        &Target::Namespace(CLIENT_NAMESPACE.into()),
        &[LabelChange::Set {
            key: DATAPLANE_MODE.into(),
            value: "ambient".into(),
        }],
    )?;
    let t0 = Instant::now();
    let label_write_ms = (t0 - writing).as_secs_f64() * 1000.0;

    let mut watch = Watch::new(baseline);
    let mut scrapes: u32 = 0;
    while !watch.done() {
        if t0.elapsed() > args.timeout {
            bail!(
                "no mTLS connection within {:?} of the label from: {:?}",
                args.timeout,
                watch.missing()
            );
        }
        let started_ms = ms_since(t0);
        let samples = scrape_samples(server_netns)?;
        let ended_ms = ms_since(t0);
        watch.observe(&Scrape {
            started_ms,
            ended_ms,
            counts: detect::mtls_counts(&samples, CLIENT_NAMESPACE, names),
        });
        scrapes += 1;
        let next = t0 + args.poll.saturating_mul(scrapes);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let busy_during_percent =
        procfs::busy_percent(cpu_before, procfs::read_cpu_times()?).unwrap_or(f64::NAN);
    let times = figures::run_times(watch.first()).context("no pods")?;
    wait_enrolment(cluster, true)?;
    std::thread::sleep(args.settle);
    let rss_enrolled_kib = rss_median(ztunnel)?;
    let mut client_failures = BTreeMap::new();
    for (log, from) in logs.iter().zip(offsets) {
        let lines = client_log::since(log, from)
            .with_context(|| format!("reading the client log {}", log.display()))?;
        client_log::add(&mut client_failures, &client_log::failures(&lines));
    }
    Ok(Run {
        label_write_ms,
        times,
        per_pod: watch.first().clone(),
        scrapes,
        rss_before_kib,
        rss_enrolled_kib,
        busy_before_percent,
        busy_during_percent,
        load_at_label,
        client_failures,
    })
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// The `opened` samples of the server node's ztunnel.
fn scrape_samples(netns: &str) -> anyhow::Result<Vec<crate::prom::Sample>> {
    let (code, body) = probe::get(netns, METRICS.parse()?, "/metrics", PROBE_TIMEOUT)?;
    if code != 200 {
        bail!("GET {METRICS}/metrics in {netns}: HTTP {code}");
    }
    Ok(crate::prom::parse(&detect::opened_lines(&body))?)
}

/// Waits until the node agent and the ztunnel of node-1 agree that every
/// client pod is enrolled (`true`) or released (`false`).
fn wait_enrolment(cluster: &Cluster, enrolled: bool) -> anyhow::Result<()> {
    let what = if enrolled { "enrolled" } else { "released" };
    wait_for(
        &format!("every client pod {what}"),
        Duration::from_secs(60),
        || {
            let report = ambit::status::collect(cluster);
            let wrong: Vec<String> = report
                .pods
                .iter()
                .filter(|p| p.pod.starts_with(&format!("{CLIENT_NAMESPACE}/")))
                .filter(|p| {
                    let proxy = p.in_ztunnel.as_deref();
                    p.enrolled != Some(enrolled)
                        || if enrolled {
                            proxy != Some("Up")
                        } else {
                            proxy != Some("none")
                        }
                })
                .map(|p| {
                    format!(
                        "{} (agent {:?}, ztunnel {:?})",
                        p.pod, p.enrolled, p.in_ztunnel
                    )
                })
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                bail!("{}", wrong.join(", "))
            }
        },
    )
}

fn wait_for(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("{what}: not reached within {patience:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn node_netns(plan: &Plan, node: &str) -> anyhow::Result<String> {
    plan.node(node)
        .map(|n| n.netns.clone())
        .with_context(|| format!("the cluster has no node {node}"))
}

/// The pid of `node`'s ztunnel, from the cluster's journal; checked to be a
/// ztunnel (the launcher execs in place).
fn ztunnel_pid(plan: &Plan, node: &str) -> anyhow::Result<u32> {
    let wanted = format!("ztunnel {node}");
    let pid = Journal::new(&plan.state_dir)
        .read()?
        .into_iter()
        .find_map(|r| match r {
            Record::Process { name, pid, .. } if name == wanted => Some(pid),
            _ => None,
        })
        .with_context(|| format!("no `{wanted}` process in the cluster's journal"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ztunnel" {
        bail!(
            "pid {pid} recorded as {wanted} is {:?}, not ztunnel",
            comm.trim()
        );
    }
    Ok(pid)
}

/// Median of a few VmRSS readings 100 ms apart (RSS moves as the allocator
/// works).
fn rss_median(pid: u32) -> anyhow::Result<u64> {
    let mut samples = Vec::with_capacity(RSS_SAMPLES);
    for i in 0..RSS_SAMPLES {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        samples.push(procfs::rss_kib(pid)?);
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// `/proc/loadavg`'s three averages, as written there.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
