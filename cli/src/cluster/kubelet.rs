//! The pod runner (`ambit kubelet`, started by `ambit up`): for each planned
//! pod, create its namespace, run the CNI ADD chain (retried with backoff,
//! as a kubelet retries sandbox creation, after a DEL that releases what a
//! failed ADD left), start its process only once the whole chain succeeded,
//! and publish pod status. Pods whose node agent is down stay pending until
//! it answers. Stops at SIGTERM; the pods keep running, as they do when a
//! kubelet restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cni::{self, Call};
use super::journal::{Journal, JournalError, Record, Role};
use super::network::{self, NetworkError, netns_path};
use super::plan::{Plan, PodPlan};
use super::pod_status::{self, Phase, PodState};
use super::process::{self, Launch};
use super::services;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(transparent)]
    Journal(#[from] JournalError),
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

/// Runs pods until `stop` is set.
pub fn run(plan: &Plan, bin_dir: &Path, stop: &AtomicBool) -> Result<(), KubeletError> {
    let journal = Journal::new(&plan.state_dir);
    let cni_path = cni::cni_path(bin_dir);
    let lists: BTreeMap<String, serde_json::Value> = plan
        .nodes
        .iter()
        .map(|n| (n.name.clone(), cni::conflist(plan, n)))
        .collect();
    let mut states: Vec<PodState> = plan
        .pods
        .iter()
        .map(|p| PodState::pending(p.key(), p.node.clone()))
        .collect();
    let mut started: BTreeMap<String, process::Started> = BTreeMap::new();
    let mut retries: BTreeMap<String, Retry> = BTreeMap::new();
    let mut published = (Vec::new(), String::new());
    let mut rules = String::new();
    publish(plan, &states, &mut published)?;
    while !stop.load(Ordering::SeqCst) {
        for (pod, state) in plan.pods.iter().zip(states.iter_mut()) {
            match state.phase {
                Phase::Pending => {
                    let retry = retries.entry(pod.key()).or_insert(Retry {
                        next: Instant::now(),
                        delay: FIRST_RETRY,
                    });
                    if Instant::now() < retry.next {
                        continue;
                    }
                    let list = &lists[&pod.node];
                    state.attempts += 1;
                    match start_pod(plan, pod, list, &cni_path, bin_dir, &journal) {
                        Ok((ip, process)) => {
                            println!("pod {}: running, ip {ip}, pid {}", pod.key(), process.pid);
                            state.phase = Phase::Running;
                            state.ip = Some(ip);
                            state.pid = Some(process.pid);
                            state.last_error = None;
                            state.started = Some(mesh_registry::now_rfc3339());
                            started.insert(pod.key(), process);
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
                    let process = &started[&pod.key()];
                    if !process::is_running(process.pid, process.start_time) {
                        println!("pod {}: process {} exited", pod.key(), process.pid);
                        state.phase = Phase::Exited;
                        state.last_error = Some("the pod's process exited".into());
                    }
                }
                Phase::Exited => {}
            }
        }
        publish(plan, &states, &mut published)?;
        sync_service_rules(plan, &states, &mut rules);
        std::thread::sleep(TICK);
    }
    println!("pod runner stopping; pods keep running");
    Ok(())
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
) -> Result<(std::net::Ipv4Addr, process::Started), String> {
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
    let mut env = pod.env.clone();
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
    Ok((ip, process))
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
