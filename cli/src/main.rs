use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ambit::cluster::progress::{Progress, format_duration};
use ambit::cluster::{Binaries, Cluster, ClusterOptions, default_state_dir, kubelet, process};
use ambit::http_app::faults::Faults;
use ambit::label::{self, Target};
use ambit::{app, grpc_app, http_app, status, waypoint};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Ambit: an ambient-mode service mesh. Runs a local cluster of network
/// namespaces from a directory of Kubernetes YAML.
#[derive(Parser)]
#[command(name = "ambit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The cluster's name (prefixes its namespaces and names its state dir).
    #[arg(long, default_value = "ambit", env = "AMBIT_CLUSTER")]
    name: String,
    /// Where the cluster's state lives [default: /var/run/ambit/<name>].
    #[arg(long, env = "AMBIT_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl ClusterArgs {
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.name))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster from a directory of Kubernetes YAML.
    Up {
        /// The cluster directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Only nodes and pods: no istiod-lite, node agents, ztunnels or ambit-cni.
        #[arg(long)]
        no_mesh: bool,
        /// How long to wait for every pod to run.
        #[arg(long, default_value = "60s", value_parser = mesh_core::duration::parse)]
        wait: Duration,
    },
    /// Stop a local cluster and remove everything it made.
    Down {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show nodes, pods and mesh health.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Set (KEY=VALUE) or remove (KEY-) labels, as `kubectl label`.
    Label {
        /// `ns` or `pod`.
        kind: String,
        /// Namespace name, or NAMESPACE/NAME of a pod.
        object: String,
        /// KEY=VALUE or KEY-.
        #[arg(required = true)]
        changes: Vec<String>,
        /// The cluster directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Built-in apps for examples.
    App {
        #[command(subcommand)]
        app: AppCommand,
    },
    /// Waypoints (Gateways of class istio-waypoint) in the cluster
    /// directory, as `istioctl waypoint` manages them.
    Waypoint {
        #[command(subcommand)]
        waypoint: WaypointCommand,
    },
    /// The pod runner `ambit up` starts; not for direct use.
    #[command(hide = true)]
    Kubelet {
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum WaypointCommand {
    /// Writes a waypoint's Gateway (`waypoint-<ns>-<name>.yaml`); istiod-lite
    /// provisions its pod, Service and ServiceAccount.
    Apply {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "waypoint")]
        name: String,
        /// Which traffic it serves: service, workload, all or none.
        #[arg(long = "for", default_value = "service")]
        waypoint_for: String,
        /// Label the namespace `istio.io/use-waypoint=<name>`.
        #[arg(long)]
        enroll_namespace: bool,
        /// Wait until the Gateway is `Programmed` (at most `--timeout`).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "60s", value_parser = mesh_core::duration::parse)]
        timeout: Duration,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Lists waypoints: address, programmed, bound services and workloads.
    List {
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Removes waypoints written by `apply`; namespace labels stay.
    Delete {
        names: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, conflicts_with = "names")]
        all: bool,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// A TCP line echo and HTTP responder that reports the peer it sees.
    Server {
        #[arg(long)]
        port: u16,
        /// Name in replies [default: $POD_NAME].
        #[arg(long)]
        name: Option<String>,
    },
    /// Calls a target at an interval, printing one line per attempt.
    Client {
        /// HOST:PORT.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "1s", value_parser = mesh_core::duration::parse)]
        every: Duration,
        /// Stop after this many attempts [default: never].
        #[arg(long)]
        count: Option<u64>,
        /// Longest wait for the connection and for the reply.
        #[arg(long, default_value = "5s", value_parser = mesh_core::duration::parse)]
        timeout: Duration,
        #[arg(long)]
        name: Option<String>,
    },
    /// An HTTP/1.1 and h2c server answering every request with JSON naming
    /// the app and echoing the request (method, path, headers, xfcc).
    HttpServer {
        #[arg(long)]
        port: u16,
        /// Name in responses (and the `x-ambit-app` header) [default: $POD_NAME].
        #[arg(long)]
        name: Option<String>,
        /// Serve HTTP/2 with prior knowledge only.
        #[arg(long)]
        h2c: bool,
        /// Fail requests N, 2N, 3N, ... with --fail-status.
        #[arg(long)]
        fail_every: Option<u64>,
        /// Fail the first N requests with --fail-status.
        #[arg(long)]
        fail_first: Option<u64>,
        /// Fail this fraction (0..1) of requests, at random, with --fail-status.
        #[arg(long)]
        fail_rate: Option<f64>,
        #[arg(long, default_value_t = 503)]
        fail_status: u16,
        /// Wait this long before every response.
        #[arg(long, default_value = "0s", value_parser = mesh_core::duration::parse)]
        delay: Duration,
    },
    /// Sends HTTP requests and prints `STATUS BACKEND LATENCY` per response,
    /// then with --summary a `summary {json}` line.
    HttpClient {
        /// http://HOST[:PORT]/PATH.
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Interval between request starts [default: back to back].
        #[arg(long, default_value = "0s", value_parser = mesh_core::duration::parse)]
        every: Duration,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        h2c: bool,
        /// NAME:VALUE, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Per-request timeout.
        #[arg(long, default_value = "10s", value_parser = mesh_core::duration::parse)]
        timeout: Duration,
        /// Print a `summary {json}` line at the end.
        #[arg(long)]
        summary: bool,
        /// Print each response's body after its line.
        #[arg(long)]
        body: bool,
        /// Print only the summary, not a line per response.
        #[arg(long)]
        quiet: bool,
    },
    /// A gRPC server of `ambit.testapp.v1.Echo` (unary, server and client
    /// streaming) over h2c.
    GrpcServer {
        #[arg(long)]
        port: u16,
        /// Name in replies [default: $POD_NAME].
        #[arg(long)]
        name: Option<String>,
    },
    /// Calls `ambit.testapp.v1.Echo`, one line per call and a summary.
    GrpcClient {
        /// HOST:PORT.
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Server-streaming calls of this many replies each instead of unary.
        #[arg(long)]
        stream: Option<u32>,
        #[arg(long, default_value = "0s", value_parser = mesh_core::duration::parse)]
        every: Duration,
        #[arg(long, default_value = "10s", value_parser = mesh_core::duration::parse)]
        timeout: Duration,
        /// Print only the summary, not a line per call.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            dir,
            cluster,
            no_mesh,
            wait,
        } => {
            let start = std::time::Instant::now();
            let options = ClusterOptions {
                name: cluster.name.clone(),
                state_dir: cluster.state_dir.clone(),
                mesh: !no_mesh,
                binaries: Binaries::locate(),
                wait,
                progress: Progress { enabled: true },
            };
            eprintln!("starting cluster {} from {}", options.name, dir.display());
            let up = Cluster::up(&dir, &options)?;
            eprintln!(
                "cluster {} is up ({}); state and logs in {}",
                options.name,
                format_duration(start.elapsed()),
                up.plan().state_dir.display()
            );
            print!("{}", status::render(&status::collect(&up)));
            Ok(())
        }
        Command::Down { cluster } => {
            let state_dir = cluster.state_dir();
            eprintln!("taking down cluster {}", cluster.name);
            let warnings = Cluster::down(&state_dir, &Progress { enabled: true })?;
            for warning in &warnings {
                eprintln!("  warning: {warning}");
            }
            eprintln!("cluster {} is down", cluster.name);
            Ok(())
        }
        Command::Status { cluster } => {
            let up = Cluster::open(&cluster.state_dir())
                .with_context(|| format!("cluster {} is not up", cluster.name))?;
            print!("{}", status::render(&status::collect(&up)));
            Ok(())
        }
        Command::Label {
            kind,
            object,
            changes,
            dir,
        } => {
            let target = match kind.as_str() {
                "ns" | "namespace" | "namespaces" => Target::Namespace(object),
                "pod" | "pods" => Target::pod(&object)?,
                "svc" | "service" | "services" => Target::service(&object)?,
                other => anyhow::bail!("cannot label {other:?}: use `ns`, `pod` or `svc`"),
            };
            let changes = label::parse_changes(&changes)?;
            let file = label::label(&dir, &target, &changes)?;
            println!("{target} labeled ({})", file.display());
            Ok(())
        }
        Command::App { app } => match app {
            AppCommand::Server { port, name } => {
                let listener = TcpListener::bind(("0.0.0.0", port))
                    .with_context(|| format!("listening on port {port}"))?;
                let name = app::app_name(name);
                println!("{name} listening on {}", listener.local_addr()?);
                app::serve(listener, &name)?;
                Ok(())
            }
            AppCommand::Client {
                target,
                every,
                count,
                timeout,
                name,
            } => {
                let options = app::ClientOptions {
                    every,
                    count,
                    timeout,
                };
                app::run_client(&target, options, &app::app_name(name));
                Ok(())
            }
            l7 => run_l7_app(l7),
        },
        Command::Waypoint { waypoint: command } => run_waypoint(command),
        Command::Kubelet { state_dir } => {
            let up = Cluster::open(&state_dir)?;
            let stop = process::termination_flag();
            kubelet::run(up.plan(), &Binaries::locate().dir, stop)?;
            Ok(())
        }
    }
}

fn run_waypoint(command: WaypointCommand) -> Result<()> {
    match command {
        WaypointCommand::Apply {
            namespace,
            name,
            waypoint_for,
            enroll_namespace,
            wait,
            timeout,
            dir,
        } => {
            let applied =
                waypoint::apply(&dir, &namespace, &name, &waypoint_for, enroll_namespace)?;
            let verb = if applied.changed {
                "applied"
            } else {
                "unchanged"
            };
            println!(
                "waypoint {namespace}/{name} {verb} ({})",
                applied.file.display()
            );
            if let Some(file) = applied.labelled {
                println!(
                    "namespace {namespace} labeled {}={name} ({})",
                    waypoint::USE_WAYPOINT,
                    file.display()
                );
            }
            if wait {
                wait_programmed(&dir, &namespace, &name, timeout)?;
            }
            Ok(())
        }
        WaypointCommand::List {
            namespace,
            all_namespaces,
            dir,
        } => {
            let view = waypoint::read_dir(&dir)?;
            let namespace = match (all_namespaces, namespace) {
                (true, _) => None,
                (false, Some(ns)) => Some(ns),
                (false, None) => Some("default".to_string()),
            };
            let rows = waypoint::list(&view, namespace.as_deref());
            if rows.is_empty() {
                match namespace {
                    Some(ns) => println!("no waypoints in namespace {ns}"),
                    None => println!("no waypoints"),
                }
            } else {
                print!("{}", waypoint::render(&rows));
            }
            Ok(())
        }
        WaypointCommand::Delete {
            names,
            namespace,
            all,
            dir,
        } => {
            if names.is_empty() && !all {
                anyhow::bail!("name the waypoints to delete, or pass --all");
            }
            let view = waypoint::read_dir(&dir)?;
            let removed = waypoint::delete(&dir, &view, &namespace, &names, all)?;
            for file in &removed {
                println!("removed {}", file.display());
            }
            let deleted: Vec<String> = removed
                .iter()
                .filter_map(|f| {
                    let stem = f.file_stem()?.to_string_lossy().into_owned();
                    Some(
                        stem.strip_prefix(&format!("waypoint-{namespace}-"))?
                            .to_string(),
                    )
                })
                .collect();
            for ns in waypoint::namespaces_using(&view, &namespace, &deleted) {
                println!(
                    "namespace {ns} keeps its {} label; remove it with `ambit label ns {ns} {}-`",
                    waypoint::USE_WAYPOINT,
                    waypoint::USE_WAYPOINT
                );
            }
            Ok(())
        }
    }
}

/// Polls the Gateway's status file until `Programmed=True`, printing what
/// it waits for when that changes.
fn wait_programmed(
    dir: &std::path::Path,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let view = waypoint::read_dir(dir)?;
        let row = waypoint::list(&view, Some(namespace))
            .into_iter()
            .find(|r| r.name == name);
        let state = row
            .as_ref()
            .map_or("-".to_string(), |r| r.programmed.clone());
        if row
            .as_ref()
            .is_some_and(waypoint::WaypointRow::is_programmed)
        {
            let address = row.map(|r| r.address).unwrap_or_default();
            println!("waypoint {namespace}/{name} programmed at {address}");
            return Ok(());
        }
        if state != last {
            eprintln!("  waiting for waypoint {namespace}/{name}: programmed {state}");
            last = state;
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "waypoint {namespace}/{name} not programmed after {} (last: {last}); is the cluster up (`ambit status`)?",
                format_duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The HTTP and gRPC apps, on a tokio runtime of their own.
fn run_l7_app(app: AppCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match app {
            AppCommand::HttpServer {
                port,
                name,
                h2c,
                fail_every,
                fail_first,
                fail_rate,
                fail_status,
                delay,
            } => {
                let faults = Faults::from_flags(fail_every, fail_first, fail_rate, fail_status)?;
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("listening on port {port}"))?;
                let name = app::app_name(name);
                println!(
                    "{name} serving HTTP on {} ({faults}; delay {delay:?})",
                    listener.local_addr()?
                );
                let config = http_app::server::ServerConfig {
                    name,
                    h2c_only: h2c,
                    faults,
                    delay,
                };
                http_app::server::serve(listener, config).await?;
                Ok(())
            }
            AppCommand::HttpClient {
                url,
                count,
                every,
                h2c,
                headers,
                method,
                timeout,
                summary,
                body,
                quiet,
            } => {
                let config = http_app::client::ClientConfig {
                    url: http_app::client::parse_url(&url)?,
                    method: method
                        .parse()
                        .with_context(|| format!("--method {method:?}"))?,
                    count,
                    every,
                    h2c,
                    headers: headers
                        .iter()
                        .map(|h| http_app::client::parse_header(h))
                        .collect::<Result<_, _>>()?,
                    timeout,
                };
                let result = http_app::client::run(&config, |outcome| {
                    if !quiet {
                        println!("{}", outcome.line(body));
                    }
                })
                .await;
                if summary || quiet {
                    println!("{}", result.line());
                }
                Ok(())
            }
            AppCommand::GrpcServer { port, name } => {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("listening on port {port}"))?;
                let name = app::app_name(name);
                println!("{name} serving gRPC on {}", listener.local_addr()?);
                grpc_app::server::serve(listener, name).await?;
                Ok(())
            }
            AppCommand::GrpcClient {
                target,
                count,
                stream,
                every,
                timeout,
                quiet,
            } => {
                let config = grpc_app::client::GrpcClientConfig {
                    target,
                    count,
                    stream,
                    every,
                    timeout,
                };
                let result = grpc_app::client::run(&config, |call| {
                    if !quiet {
                        println!("{}", call.line());
                    }
                })
                .await;
                println!("{}", result.line());
                Ok(())
            }
            AppCommand::Server { .. } | AppCommand::Client { .. } => {
                unreachable!("the TCP apps run without a runtime")
            }
        }
    })
}
