//! The pod runner (`ambit kubelet`, started by `ambit up`): for each planned
//! pod, create its namespace, run the CNI ADD chain (retried with backoff,
//! as a kubelet retries sandbox creation, after a DEL that releases what a
//! failed ADD left), start its process only once the whole chain succeeded,
//! and publish pod status. Pods whose node agent is down stay pending until
//! it answers. Pods added to the directory later are started, and deleted
//! ones stopped, their network released and their namespace removed. Stops
//! at SIGTERM; the pods keep running, as they do when a kubelet restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cni::{self, Call};
use super::journal::{Journal, Record, Role};
use super::network::{self, NetworkError, netns_path};
use super::plan::{self, Plan, PlanOptions, PodPlan};

use super::pod_status::{self, Phase, PodState};
use super::process::{self, Launch};
use super::services;
use super::spec::ClusterSpec;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);
/// How often the directory is re-read for added and deleted pods.
const REREAD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot write pod status {}: {source}", path.display())]
    Status {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Retry {
    next: Instant,
    delay: Duration,
}

/// The runner's working set: the plan as it stands (pods come and go with
/// the directory) and what it knows of each pod.
struct Runner<'a> {
    plan: Plan,
    bin_dir: &'a Path,
    journal: Journal,
    cni_path: String,
    lists: BTreeMap<String, serde_json::Value>,
    /// Aligned with `plan.pods`.
    states: Vec<PodState>,
    started: BTreeMap<String, process::Started>,
    attachments: BTreeMap<String, serde_json::Value>,
    retries: BTreeMap<String, Retry>,
    /// What the last re-read said, so a problem is logged once.
    last_reread: String,
}

/// Runs pods until `stop` is set; re-reads the directory every
/// `REREAD` to start pods added to it and remove pods deleted from it.
pub fn run(plan: &Plan, bin_dir: &Path, stop: &AtomicBool) -> Result<(), KubeletError> {
    let mut runner = Runner {
        journal: Journal::new(&plan.state_dir),
        cni_path: cni::cni_path(bin_dir),
        lists: plan
            .nodes
            .iter()
            .map(|n| (n.name.clone(), cni::conflist(plan, n)))
            .collect(),
        states: plan
            .pods
            .iter()
            .map(|p| PodState::pending(p.key(), p.node.clone()))
            .collect(),
        plan: plan.clone(),
        bin_dir,
        started: BTreeMap::new(),
        attachments: BTreeMap::new(),
        retries: BTreeMap::new(),
        last_reread: String::new(),
    };
    let mut published = (Vec::new(), String::new());
    let mut rules = String::new();
    let mut next_reread = Instant::now() + REREAD;
    publish(&runner.plan, &runner.states, &mut published)?;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_reread {
            runner.reread();
            next_reread = Instant::now() + REREAD;
            // Before the pods' steps: an added pod's ADD can wait for its
            // node's ztunnel for seconds, and until then the pod is shown.
            publish(&runner.plan, &runner.states, &mut published)?;
        }
        runner.step_pods();
        publish(&runner.plan, &runner.states, &mut published)?;
        sync_service_rules(&runner.plan, &runner.states, &mut rules);
        std::thread::sleep(TICK);
    }
    println!("pod runner stopping; pods keep running");
    Ok(())
}

impl Runner<'_> {
    /// One pass over the pods: start pending ones whose retry is due, notice
    /// exited ones.
    fn step_pods(&mut self) {
        for index in 0..self.plan.pods.len() {
            let pod = self.plan.pods[index].clone();
            let state = &mut self.states[index];
            match state.phase {
                Phase::Pending => {
                    let retry = self.retries.entry(pod.key()).or_insert(Retry {
                        next: Instant::now(),
                        delay: FIRST_RETRY,
                    });
                    if Instant::now() < retry.next {
                        continue;
                    }
                    state.attempts += 1;
                    let list = &self.lists[&pod.node];
                    let outcome = start_pod(
                        &self.plan,
                        &pod,
                        list,
                        &self.cni_path,
                        self.bin_dir,
                        &self.journal,
                    );
                    match outcome {
                        Ok((ip, result, process)) => {
                            println!("pod {}: running, ip {ip}, pid {}", pod.key(), process.pid);
                            state.phase = Phase::Running;
                            state.ip = Some(ip);
                            state.pid = Some(process.pid);
                            state.last_error = None;
                            state.started = Some(mesh_registry::now_rfc3339());
                            self.started.insert(pod.key(), process);
                            self.attachments.insert(pod.key(), result);
                        }
                        Err(error) => {
                            println!(
                                "pod {}: attempt {} failed, retrying in {:?}: {error}",
                                pod.key(),
                                state.attempts,
                                retry.delay
                            );
                            state.last_error = Some(error);
                            retry.next = Instant::now() + retry.delay;
                            retry.delay = (retry.delay * 2).min(MAX_RETRY);
                        }
                    }
                }
                Phase::Running => {
                    let process = &self.started[&pod.key()];
                    if !process::is_running(process.pid, process.start_time) {
                        println!("pod {}: process {} exited", pod.key(), process.pid);
                        state.phase = Phase::Exited;
                        state.last_error = Some("the pod's process exited".into());
                    }
                }
                Phase::Exited => {}
            }
        }
    }

    /// Re-reads the directory and applies what changed for pods and
    /// services. Node changes need a new cluster and are only reported.
    fn reread(&mut self) {
        let options = PlanOptions {
            cluster: self.plan.cluster.clone(),
            state_dir: self.plan.state_dir.clone(),
            mesh: self.plan.mesh,
        };
        let wanted = ClusterSpec::read(&self.plan.dir)
            .map_err(|e| e.to_string())
            .and_then(|spec| plan::plan(&spec, &options).map_err(|e| e.to_string()))
            .and_then(|wanted| {
                if wanted.nodes == self.plan.nodes {
                    Ok(wanted)
                } else {
                    Err("the nodes changed; that needs `ambit down` and `ambit up`".into())
                }
            });
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(problem) => {
                if problem != self.last_reread {
                    println!("directory not applied, keeping the running pods: {problem}");
                    self.last_reread = problem;
                }
                return;
            }
        };
        self.last_reread.clear();
        let diff = plan::diff_pods(&self.plan.pods, &wanted.pods);
        let services_changed = wanted.services != self.plan.services;
        if diff.is_empty() && !services_changed {
            return;
        }
        for key in &diff.changed {
            println!(
                "pod {key}: its spec changed; pods are immutable, delete it and define it again"
            );
        }
        for pod in diff.relabelled {
            if let Some(slot) = self.plan.pods.iter_mut().find(|p| p.key() == pod.key()) {
                slot.labels = pod.labels;
            }
        }
        for key in &diff.removed {
            self.remove_pod(key);
        }
        for pod in diff.added {
            println!("pod {}: added", pod.key());
            self.states
                .push(PodState::pending(pod.key(), pod.node.clone()));
            self.plan.pods.push(pod);
        }
        self.plan.services = wanted.services;
        let path = plan::plan_path(&self.plan.state_dir);
        let text = serde_json::to_string_pretty(&self.plan).expect("plans serialize");
        if let Err(e) = pod_status::write_atomic(&path, &text) {
            println!("cannot update {}: {e}", path.display());
        }
    }

    /// Stops a deleted pod, releases its network (CNI DEL) and deletes its
    /// namespace, as a kubelet tears down a sandbox.
    fn remove_pod(&mut self, key: &str) {
        let Some(index) = self.plan.pods.iter().position(|p| p.key() == key) else {
            return;
        };
        let pod = self.plan.pods.remove(index);
        self.states.remove(index);
        self.retries.remove(key);
        if let Some(process) = self.started.remove(key) {
            process::stop(process.pid, process.start_time, Duration::from_secs(3));
        }
        if let Some(node) = self.plan.node(&pod.node)
            && network::netns_exists(&pod.netns)
        {
            let netns = netns_path(&pod.netns);
            let call = Call {
                list: &self.lists[&pod.node],
                pod: &pod,
                pod_netns_path: &netns,
                node_netns: &node.netns,
                cni_path: &self.cni_path,
            };
            if let Err(e) = call.del(self.attachments.get(key)) {
                println!("pod {key}: DEL: {e}");
            }
            for pid in process::pids_in_netns(&netns) {
                process::kill(pid);
            }
            if let Err(e) = network::del_netns(&pod.netns) {
                println!("pod {key}: {e}");
            }
        }
        self.attachments.remove(key);
        println!("pod {key}: removed");
    }
}

/// Namespace, CNI ADD, process. A failed ADD is undone with DEL before the
/// error is returned, so the next attempt starts clean.
fn start_pod(
    plan: &Plan,
    pod: &PodPlan,
    list: &serde_json::Value,
    cni_path: &str,
    bin_dir: &Path,
    journal: &Journal,
) -> Result<(std::net::Ipv4Addr, serde_json::Value, process::Started), String> {
    // A waypoint pod runs `waypoint` from the binaries' directory; say so
    // plainly (and before the network is set up) when it is not there.
    if super::pod_env::is_waypoint(pod) && !bin_dir.join("waypoint").is_file() {
        return Err(format!(
            "the waypoint binary is not in {}: build it (`cargo build -p waypoint --bins`) or point AMBIT_BIN_DIR at it",
            bin_dir.display()
        ));
    }
    if !network::netns_exists(&pod.netns) {
        network::add_netns(journal, &pod.netns).map_err(|e: NetworkError| e.to_string())?;
    }
    let node = plan
        .node(&pod.node)
        .ok_or_else(|| format!("node {} is not planned", pod.node))?;
    let pod_netns = netns_path(&pod.netns);
    let call = Call {
        list,
        pod,
        pod_netns_path: &pod_netns,
        node_netns: &node.netns,
        cni_path,
    };
    let result = match call.add() {
        Ok(result) => result,
        Err(error) => {
            if let Err(del) = call.del(None) {
                println!("pod {}: DEL after a failed ADD: {del}", pod.key());
            }
            return Err(error.to_string());
        }
    };
    journal
        .append(&Record::Attachment {
            pod: pod.key(),
            result: result.clone(),
        })
        .map_err(|e| e.to_string())?;
    let ip = cni::result_ips(&result)
        .into_iter()
        .next()
        .ok_or_else(|| format!("the CNI result has no IPv4 address: {result}"))?;
    let mut env = super::pod_env::runtime_env(plan, pod, ip);
    env.push((
        "PATH".into(),
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir.display()
        ),
    ));
    let log = plan
        .state_dir
        .join("pods")
        .join(format!("{}.{}.log", pod.namespace, pod.name));
    let launch = Launch {
        role: Role::Pod,
        name: pod.key(),
        netns: Some(&pod.netns),
        program: Path::new(&pod.command[0]),
        args: pod.command[1..].to_vec(),
        env,
        log,
    };
    let process = process::start(&launch).map_err(|e| e.to_string())?;
    journal
        .append(&Record::Process {
            role: Role::Pod,
            name: pod.key(),
            pid: process.pid,
            start_time: process.start_time,
        })
        .map_err(|e| e.to_string())?;
    Ok((ip, result, process))
}

/// Writes the runner's view when any state changed (attempt counts too),
/// and the registry's status file when what it says changed.
fn publish(
    plan: &Plan,
    states: &[PodState],
    last: &mut (Vec<PodState>, String),
) -> Result<(), KubeletError> {
    if last.0 == states {
        return Ok(());
    }
    let text = pod_status::render_status_file(plan, states);
    if text != last.1 {
        let path = pod_status::status_file_path(plan);
        pod_status::write_atomic(&path, &text)
            .map_err(|source| KubeletError::Status { path, source })?;
        last.1 = text;
    }
    pod_status::write_states(&plan.state_dir, states).map_err(|source| KubeletError::Status {
        path: plan.state_dir.join(pod_status::PODS_FILE),
        source,
    })?;
    last.0 = states.to_vec();
    Ok(())
}

/// Keeps every node's ClusterIP rules in step with the running pods; a
/// failure is logged and retried at the next change.
fn sync_service_rules(plan: &Plan, states: &[PodState], last: &mut String) {
    let rules = services::render_rules(plan, states);
    if rules == *last {
        return;
    }
    let mut ok = true;
    for node in &plan.nodes {
        if let Err(e) = services::apply_rules(&node.netns, &rules) {
            println!("node {}: service rules: {e}", node.name);
            ok = false;
        }
    }
    if ok {
        *last = rules;
    }
}
