//! The control-plane scale benchmark: a generated registry on disk, a real
//! istiod-lite process on it, 100 delta ADS clients, and one pod changed on
//! disk at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_core::control::{ControlPlane, TokenSource};
use tokio::sync::mpsc;

use super::client::{self, Received};
use super::generate::{self, Shape};
use crate::stats;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "ambit-control-bench",
    about = "Control-plane scale benchmark: translation time, one-pod change to N clients, bytes per client, istiod-lite peak RSS."
)]
pub struct ControlArgs {
    /// The istiod-lite binary to run.
    #[arg(long, default_value = "target/release/istiod-lite")]
    pub istiod: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 2_000)]
    pub services: usize,
    #[arg(long, default_value_t = 1_000)]
    pub policies: usize,
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// One-pod changes to time.
    #[arg(long, default_value_t = 9)]
    pub changes: usize,
    /// Full translations to time in-process.
    #[arg(long, default_value_t = 5)]
    pub translations: usize,
    /// gRPC port istiod-lite listens on (loopback).
    #[arg(long, default_value_t = 25012)]
    pub port: u16,
    /// Print the figures as JSON as well.
    #[arg(long)]
    pub json: bool,
}

/// The figures of one benchmark run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlFigures {
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
    pub clients: usize,
    pub translation_ms_median: f64,
    pub one_pod_translation_ms_median: f64,
    pub release_previous_store_ms_median: f64,
    pub initial_sync_ms: f64,
    pub initial_bytes_per_client: f64,
    pub change_to_all_ms: Vec<f64>,
    pub change_to_all_ms_median: f64,
    pub change_bytes_per_client_median: f64,
    pub peak_rss_mib: f64,
}

pub async fn run(args: ControlArgs) -> anyhow::Result<ControlFigures> {
    let shape = Shape {
        namespaces: args.namespaces,
        pods: args.pods,
        services: args.services,
        policies: args.policies,
        nodes: args.clients.max(1),
    };
    let work = tempfile::tempdir()?;
    let resources = work.path().join("resources");
    let state = work.path().join("state");
    std::fs::create_dir_all(&resources)?;
    eprintln!(
        "generating {} pods, {} services, {} policies in {} namespaces...",
        shape.pods, shape.services, shape.policies, shape.namespaces
    );
    std::fs::write(resources.join("nodes.yaml"), generate::nodes_yaml(&shape))?;
    for ns in 0..shape.namespaces {
        write_atomic(
            &resources.join(format!("{}.yaml", generate::namespace_name(ns))),
            &generate::namespace_yaml(&shape, ns, |_| 1),
        )?;
    }

    eprintln!("timing full translations in-process...");
    let times = super::translate_times(&resources, args.translations)?;
    let translation_ms_median = stats::median(&times.full).unwrap_or(f64::NAN);
    let one_pod_translation_ms_median = stats::median(&times.one_pod).unwrap_or(f64::NAN);
    let release_previous_store_ms_median =
        stats::median(&times.release_previous).unwrap_or(f64::NAN);

    eprintln!("starting {}...", args.istiod.display());
    let admin_port = args.port + 2;
    let mut istiod = tokio::process::Command::new(&args.istiod)
        .arg("--dir")
        .arg(&resources)
        .arg("--state-dir")
        .arg(&state)
        .arg("--grpc-listen")
        .arg(format!("127.0.0.1:{}", args.port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--log")
        .arg("warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.istiod.display()))?;
    let pid = istiod.id().context("istiod-lite exited at once")?;
    wait_ready(admin_port, &mut istiod).await?;

    let root = std::fs::read(state.join("root-cert.pem")).context("reading the CA root")?;
    let roots = mesh_core::tls::parse_certs(&root, "CA root")?;
    let tokens: BTreeMap<String, String> = serde_yaml::from_slice(
        &std::fs::read(state.join("node-tokens.yaml")).context("reading node tokens")?,
    )?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let mut client_tasks = Vec::with_capacity(args.clients);
    let started = Instant::now();
    for client in 0..args.clients {
        let node = generate::node_name(client % shape.nodes);
        let token = tokens
            .get(&node)
            .with_context(|| format!("no token for {node} in node-tokens.yaml"))?;
        let control = ControlPlane {
            address: format!("https://localhost:{}", args.port),
            server_name: None,
            roots: roots.clone(),
            token: Some(TokenSource::Literal(token.clone())),
            cluster_id: "Kubernetes".into(),
            headers: vec![],
            mark: None,
        };
        let tx = tx.clone();
        client_tasks.push(tokio::spawn(async move {
            if let Err(e) = client::run(client, control, node, tx).await {
                eprintln!("client {client}: {e:#}");
            }
        }));
    }
    drop(tx);

    // Initial sync: every client has both types.
    let mut initial: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut initial_done = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while initial.values().filter(|(types, _)| *types >= 2).count() < args.clients {
        let seen = recv_before(&mut rx, deadline).await?;
        let entry = initial.entry(seen.client).or_default();
        entry.0 += 1;
        entry.1 += seen.bytes;
        initial_done = seen.at;
    }
    let initial_sync_ms = (initial_done - started).as_secs_f64() * 1000.0;
    let initial_bytes_per_client =
        initial.values().map(|(_, b)| *b as f64).sum::<f64>() / args.clients as f64;
    eprintln!(
        "{} clients synced in {initial_sync_ms:.0} ms, {:.1} MiB each",
        args.clients,
        initial_bytes_per_client / 1048576.0
    );

    let mut change_to_all_ms = Vec::new();
    let mut change_bytes = Vec::new();
    for change in 0..args.changes {
        let ns = (change * 37) % shape.namespaces;
        let pod = (change * 13) % shape.pods_in(ns).max(1);
        let revision = change as u32 + 2;
        let yaml = generate::namespace_yaml(&shape, ns, |p| if p == pod { revision } else { 1 });
        // Let any late pushes of the previous round settle first.
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        write_atomic(
            &resources.join(format!("{}.yaml", generate::namespace_name(ns))),
            &yaml,
        )?;
        let (last, per_client) = until_all(&mut rx, args.clients).await?;
        // Restore the file so the next change starts from the same state.
        write_atomic(
            &resources.join(format!("{}.yaml", generate::namespace_name(ns))),
            &generate::namespace_yaml(&shape, ns, |_| 1),
        )?;
        until_all(&mut rx, args.clients).await?;
        let ms = (last - t0).as_secs_f64() * 1000.0;
        let bytes = per_client.values().sum::<usize>() as f64 / args.clients as f64;
        eprintln!(
            "change {change}: all {} clients in {ms:.1} ms, {bytes:.0} B each",
            args.clients
        );
        change_to_all_ms.push(ms);
        change_bytes.push(bytes);
    }

    let usage = crate::procfs::process_usage(pid, crate::procfs::clk_tck())?;
    // The clients go first, so stopping istiod-lite is not reported as their error.
    for task in client_tasks {
        task.abort();
    }
    let _ = istiod.start_kill();
    let _ = istiod.wait().await;
    Ok(ControlFigures {
        pods: shape.pods,
        services: shape.services,
        policies: shape.policies,
        clients: args.clients,
        translation_ms_median,
        one_pod_translation_ms_median,
        release_previous_store_ms_median,
        initial_sync_ms,
        initial_bytes_per_client,
        change_to_all_ms_median: stats::median(&change_to_all_ms).unwrap_or(f64::NAN),
        change_to_all_ms,
        change_bytes_per_client_median: stats::median(&change_bytes).unwrap_or(f64::NAN),
        peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
    })
}

/// Renders the figures with the targets beside them.
pub fn render(f: &ControlFigures) -> String {
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    format!(
        "control plane: {} pods, {} services, {} policies, {} clients\n\
         | figure | median | target | |\n|---|---|---|---|\n\
         | full translation | {:.1} ms | < 1000 ms | {} |\n\
         | translation after a one-pod change (in-process) | {:.2} ms (+ {:.2} ms freeing the previous store) | - | |\n\
         | one-pod change on disk -> all clients ACKed | {:.1} ms | < 100 ms | {} |\n\
         | bytes per client for that change | {:.0} B | < 10 KB | {} |\n\
         | istiod-lite peak RSS | {:.1} MiB | < 300 MiB | {} |\n\
         | initial sync of all clients | {:.0} ms ({:.2} MiB each) | - | |\n",
        f.pods,
        f.services,
        f.policies,
        f.clients,
        f.translation_ms_median,
        mark(f.translation_ms_median < 1000.0),
        f.one_pod_translation_ms_median,
        f.release_previous_store_ms_median,
        f.change_to_all_ms_median,
        mark(f.change_to_all_ms_median < 100.0),
        f.change_bytes_per_client_median,
        mark(f.change_bytes_per_client_median < 10_000.0),
        f.peak_rss_mib,
        mark(f.peak_rss_mib < 300.0),
        f.initial_sync_ms,
        f.initial_bytes_per_client / 1048576.0,
    )
}

/// Waits until every client got a push; returns when the last one arrived
/// and the bytes each received.
async fn until_all(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    clients: usize,
) -> anyhow::Result<(Instant, BTreeMap<usize, usize>)> {
    let mut per_client: BTreeMap<usize, usize> = BTreeMap::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while per_client.len() < clients {
        let seen = recv_before(rx, deadline).await?;
        *per_client.entry(seen.client).or_default() += seen.bytes;
        last = seen.at;
    }
    Ok((last, per_client))
}

async fn recv_before(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    deadline: Instant,
) -> anyhow::Result<Received> {
    match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        Ok(Some(seen)) => Ok(seen),
        Ok(None) => bail!("every client stream ended"),
        Err(_) => bail!("timed out waiting for pushes"),
    }
}

async fn wait_ready(admin_port: u16, istiod: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = istiod.try_wait()? {
            bail!("istiod-lite exited with {status} before it was ready");
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
        let ready = tokio::task::spawn_blocking(move || {
            crate::http::get(addr, "/ready", Duration::from_secs(1))
        })
        .await?;
        if ready.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("istiod-lite not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through a temporary file and a rename, as editors and `kubectl`-like
/// tools do, so the watcher never reads half a file.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
