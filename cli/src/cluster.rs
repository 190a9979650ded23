//! The local cluster runner behind `ambit up` and `ambit down`, used as is
//! by the integration tests and benchmarks.
//!
//! `Cluster::up(dir, options)`: read the directory (`spec`), plan every
//! name and address (`plan`, pure), then make it, journalling each thing
//! before going on (`journal`): the fabric and node namespaces (`network`),
//! istiod-lite and per node a node agent and a ztunnel (`mesh`), then the
//! pod runner process (`kubelet`) that wires each pod through the CNI
//! plugins (`cni`) and starts its command, and publishes pod status
//! (`pod_status`) and ClusterIP rules (`services`). `up` returns once every
//! pod runs, or fails naming the pods still pending and why.
//!
//! `Cluster::down(state_dir)` undoes all the journal names, in an order that
//! lets each step succeed (runner, pods, CNI DEL, mesh, namespaces, files),
//! also after `up` or the runner crashed.

pub mod cni;
pub mod journal;
pub mod kubelet;
pub mod mesh;
pub mod network;
pub mod plan;
pub mod pod_env;
pub mod pod_status;
pub mod probe;
pub mod process;
pub mod progress;
pub mod services;
pub mod spec;
mod teardown;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use plan::{Plan, PlanError, PlanOptions};
pub use spec::{ClusterSpec, SpecError};

use journal::{Journal, JournalError, Record, Role};
use pod_status::{Phase, PodState};
use process::{Launch, ProcessError};
use progress::Progress;

/// Where clusters keep their state unless told otherwise.
pub const DEFAULT_STATE_ROOT: &str = "/var/run/ambit";
/// The list of status files present before `up`, kept by `down`.
pub(crate) const STATUS_BEFORE_FILE: &str = "status-files-before.json";

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("`ambit up` needs root (network namespaces, CNI plugins); run it with sudo")]
    NotRoot,
    #[error(
        "cluster {name} is already up (state in {}); run `ambit down{}` first",
        state_dir.display(),
        if name == "ambit" { String::new() } else { format!(" --name {name}") }
    )]
    AlreadyUp { name: String, state_dir: PathBuf },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "binary {name} not found in {}; build it (`cargo build -p {package}`) or set AMBIT_BIN_DIR",
        dir.display()
    )]
    MissingBinary {
        name: String,
        package: String,
        dir: PathBuf,
    },
    #[error("{component} did not become ready: {reason}; see {}", log.display())]
    NotReady {
        component: String,
        reason: String,
        log: PathBuf,
    },
    #[error("{0} (the cluster stays up; see `ambit status` and the logs in the state dir)")]
    MeshNotReady(String),
    #[error("{}: {reason}", path.display())]
    NodeToken { path: PathBuf, reason: String },
    #[error("{}: not a cluster plan ({reason}); the state dir is damaged, `ambit down` still works", path.display())]
    BadPlan { path: PathBuf, reason: String },
    #[error(
        "{} pod(s) not running after {waited:?}; the pod runner keeps retrying (see `ambit status`):\n  {}",
        pending.len(),
        pending.join("\n  ")
    )]
    PodsPending {
        waited: Duration,
        pending: Vec<String>,
    },
}

impl UpError {
    fn file(path: &Path, source: std::io::Error) -> UpError {
        UpError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error("no cluster state in {}: nothing to take down", .0.display())]
    NotUp(PathBuf),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the binaries of the cluster are: `AMBIT_BIN_DIR`, else the
/// directory of the running executable (or its parent, for test binaries
/// in `target/<profile>/deps`).
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn locate() -> Binaries {
        if let Some(dir) = std::env::var_os("AMBIT_BIN_DIR") {
            return Binaries { dir: dir.into() };
        }
        let exe = std::env::current_exe().unwrap_or_default();
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.ends_with("deps") {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        } else {
            dir
        };
        Binaries { dir }
    }

    pub fn find(&self, name: &str) -> Result<PathBuf, UpError> {
        let path = self.dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
        let package = match name {
            "ambit-cni" | "node-agent" => "node-agent",
            "ambit" => "ambit",
            other => other,
        };
        Err(UpError::MissingBinary {
            name: name.into(),
            package: package.into(),
            dir: self.dir.clone(),
        })
    }
}

/// How to run `up`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster's name: prefixes its namespaces, names its state dir.
    pub name: String,
    /// Default `/var/run/ambit/<name>`.
    pub state_dir: Option<PathBuf>,
    /// Run istiod-lite, node agents, ztunnels and `ambit-cni`.
    pub mesh: bool,
    pub binaries: Binaries,
    /// How long `up` waits for every pod to run.
    pub wait: Duration,
    pub progress: Progress,
}

impl ClusterOptions {
    pub fn new(name: &str) -> ClusterOptions {
        ClusterOptions {
            name: name.into(),
            state_dir: None,
            mesh: true,
            binaries: Binaries::locate(),
            wait: Duration::from_secs(60),
            progress: Progress::quiet(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.name))
    }
}

pub fn default_state_dir(name: &str) -> PathBuf {
    Path::new(DEFAULT_STATE_ROOT).join(name)
}

/// A cluster that is up.
#[derive(Clone, Debug)]
pub struct Cluster {
    plan: Plan,
}

impl Cluster {
    /// Brings up the cluster `dir` describes and waits for its pods and the
    /// readiness of its mesh. Refused
    /// if the state dir already holds a cluster. If making the nodes or the
    /// mesh fails, everything made is taken down again before the error is
    /// returned; pods still pending after `options.wait` (`PodsPending`) or a
    /// mesh not ready by then (`MeshNotReady`) are errors that leave the
    /// cluster up, the runner retrying the pods.
    pub fn up(dir: &Path, options: &ClusterOptions) -> Result<Cluster, UpError> {
        if !is_root() {
            return Err(UpError::NotRoot);
        }
        let state_dir = options.state_dir();
        let journal = Journal::new(&state_dir);
        if journal.exists() {
            return Err(UpError::AlreadyUp {
                name: options.name.clone(),
                state_dir,
            });
        }
        let spec = ClusterSpec::read(dir)?;
        let plan = plan::plan(
            &spec,
            &PlanOptions {
                cluster: options.name.clone(),
                state_dir: state_dir.clone(),
                mesh: options.mesh,
            },
        )?;
        if options.mesh {
            for binary in ["istiod-lite", "node-agent", "ztunnel", "ambit-cni"] {
                options.binaries.find(binary)?;
            }
        }
        options.binaries.find("ambit")?;
        for sub in [state_dir.join("pods")]
            .into_iter()
            .chain(plan.nodes.iter().map(|n| n.dir.clone()))
        {
            fs::create_dir_all(&sub).map_err(|e| UpError::file(&sub, e))?;
        }
        // The journal exists from here on: a second `up` is refused and
        // `down` works whatever happens next.
        journal.append(&Record::File {
            path: pod_status::status_file_path(&plan),
        })?;
        let cluster = Cluster { plan };
        if let Err(error) = cluster.make(options, &journal) {
            options.progress.note("taking down what was made");
            if let Err(e) = Cluster::down(&state_dir, &Progress::quiet()) {
                options.progress.note(&format!("  {e}"));
            }
            return Err(error);
        }
        // Pods that do not come up leave the cluster up: the runner keeps
        // retrying them, as a kubelet would, and `ambit status` says why.
        options.progress.step(
            &format!("{} pod(s) running", cluster.plan.pods.len()),
            || cluster.wait_for_pods(options.wait),
        )?;
        if cluster.plan.mesh {
            options.progress.step("mesh ready", || {
                progress::wait_until("mesh ready", options.wait, || {
                    let not_ready: Vec<String> = mesh::health(&cluster.plan)
                        .into_iter()
                        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
                        .collect();
                    if not_ready.is_empty() {
                        Ok(())
                    } else {
                        Err(not_ready.join("; "))
                    }
                })
                .map_err(UpError::MeshNotReady)
            })?;
        }
        Ok(cluster)
    }

    fn make(&self, options: &ClusterOptions, journal: &Journal) -> Result<(), UpError> {
        let plan = &self.plan;
        let progress = &options.progress;
        let write = |path: PathBuf, text: String| {
            fs::write(&path, text).map_err(|e| UpError::file(&path, e))
        };
        write(
            plan::plan_path(&plan.state_dir),
            serde_json::to_string_pretty(plan).expect("plans serialize"),
        )?;
        write(
            plan.state_dir.join(STATUS_BEFORE_FILE),
            serde_json::to_string(&status_files(&plan.dir)).expect("paths serialize"),
        )?;
        progress.step("fabric", || network::create_fabric(plan, journal))?;
        for node in &plan.nodes {
            progress.step(
                &format!(
                    "node {} ({}, pods {})",
                    node.name,
                    node.address.addr(),
                    node.pod_cidr
                ),
                || network::create_node(plan, node, journal),
            )?;
            write(
                node.dir.join("10-ambit.conflist"),
                serde_json::to_string_pretty(&cni::conflist(plan, node)).expect("JSON"),
            )?;
        }
        if plan.mesh {
            mesh::start_istiod(plan, &options.binaries, journal, progress)?;
            for node in &plan.nodes {
                mesh::start_node(plan, node, &options.binaries, journal, progress)?;
            }
        }
        let ambit = options.binaries.find("ambit")?;
        mesh::launch(
            journal,
            &Launch {
                role: Role::Kubelet,
                name: "pod runner".into(),
                netns: None,
                program: &ambit,
                args: vec![
                    "kubelet".into(),
                    "--state-dir".into(),
                    plan.state_dir.display().to_string(),
                ],
                env: vec![(
                    "AMBIT_BIN_DIR".into(),
                    options.binaries.dir.display().to_string(),
                )],
                log: plan.state_dir.join("kubelet.log"),
            },
        )?;
        Ok(())
    }

    /// The cluster whose state is in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Cluster, UpError> {
        let path = plan::plan_path(state_dir);
        let text = fs::read_to_string(&path).map_err(|e| UpError::file(&path, e))?;
        let plan = serde_json::from_str(&text).map_err(|e| UpError::BadPlan {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Cluster { plan })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// What the pod runner last published.
    pub fn pod_states(&self) -> Vec<PodState> {
        pod_status::read_states(&self.plan.state_dir)
    }

    /// The running pod's IP.
    pub fn pod_ip(&self, pod: &str) -> Option<std::net::Ipv4Addr> {
        self.pod_states()
            .into_iter()
            .find(|s| s.pod == pod && s.phase == Phase::Running)
            .and_then(|s| s.ip)
    }

    /// Takes down everything the journal in `state_dir` names. Steps that
    /// fail are reported (the returned warnings) and the rest still done;
    /// the journal and state dir go last, so an interrupted `down` can be
    /// run again.
    pub fn down(state_dir: &Path, progress: &Progress) -> Result<Vec<String>, DownError> {
        teardown::down(state_dir, progress)
    }

    /// Waits until every pod runs, at most `patience`.
    pub fn wait_for_pods(&self, patience: Duration) -> Result<(), UpError> {
        let start = Instant::now();
        let outcome = progress::wait_until("pods running", patience, || {
            let states = self.pod_states();
            // Pods added after `up` (istiod-lite's waypoint pods) may run
            // too: count only the planned ones.
            let running = self
                .plan
                .pods
                .iter()
                .filter(|p| {
                    states
                        .iter()
                        .any(|s| s.pod == p.key() && s.phase == Phase::Running)
                })
                .count();
            if running == self.plan.pods.len() {
                Ok(())
            } else {
                Err(format!("{running} of {} running", self.plan.pods.len()))
            }
        });
        outcome.map_err(|_| {
            let states = self.pod_states();
            let pending = self
                .plan
                .pods
                .iter()
                .filter_map(|p| {
                    let state = states.iter().find(|s| s.pod == p.key());
                    match state {
                        Some(s) if s.phase == Phase::Running => None,
                        Some(s) => Some(format!(
                            "{} on {}: {:?} after {} attempt(s): {}",
                            p.key(),
                            p.node,
                            s.phase,
                            s.attempts,
                            s.last_error.as_deref().unwrap_or("-")
                        )),
                        None => Some(format!("{} on {}: not started", p.key(), p.node)),
                    }
                })
                .collect();
            UpError::PodsPending {
                waited: start.elapsed(),
                pending,
            }
        })
    }
}

/// Status files of the cluster directory, for telling later which ones
/// the cluster's istiod-lite wrote.
fn status_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) if spec::is_status_name(&name) => found.push(entry.path()),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
