//! `ambit down`: undo everything a cluster's journal names, in an order that
//! lets each step succeed (the pod runner, pods, CNI DEL, the mesh, stray
//! processes in the cluster's namespaces, namespaces, files), also after
//! `up` or the runner crashed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::journal::{Journal, Record, Role};
use super::plan::{self, Plan};
use super::progress::Progress;
use super::{Binaries, DownError, STATUS_BEFORE_FILE, cni, network, process, status_files};

/// Takes down everything the journal in `state_dir` names. Steps that
/// fail are reported and the rest still done; the journal and state dir
/// go last, so a `down` interrupted half-way can be run again.
pub fn down(state_dir: &Path, progress: &Progress) -> Result<Vec<String>, DownError> {
    let journal = Journal::new(state_dir);
    if !journal.exists() {
        if state_dir.exists() {
            fs::remove_dir_all(state_dir).map_err(|source| DownError::File {
                path: state_dir.to_path_buf(),
                source,
            })?;
            return Ok(Vec::new());
        }
        return Err(DownError::NotUp(state_dir.to_path_buf()));
    }
    let records = journal.read()?;
    let plan: Option<Plan> = fs::read_to_string(plan::plan_path(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut warnings = Vec::new();
    let stop_role = |role: Role, deadline: Duration, warnings: &mut Vec<String>| {
        let processes: Vec<_> = records
            .iter()
            .rev()
            .filter_map(|r| match r {
                Record::Process {
                    role: r,
                    name,
                    pid,
                    start_time,
                } if *r == role => Some((name, *pid, *start_time)),
                _ => None,
            })
            .collect();
        let count = processes.len();
        for (name, pid, start) in processes {
            if process::stop(pid, start, deadline) {
                warnings.push(format!(
                    "{name} (pid {pid}) did not stop within {deadline:?}; killed"
                ));
            }
        }
        count
    };
    let _ = progress.step("pod runner stopped", || {
        Ok::<_, String>(stop_role(
            Role::Kubelet,
            Duration::from_secs(5),
            &mut warnings,
        ))
    });
    let _ = progress.step("pods stopped", || {
        Ok::<_, String>(stop_role(Role::Pod, Duration::from_secs(3), &mut warnings))
    });
    if let Some(plan) = &plan {
        let _ = progress.step("pod networks released (CNI DEL)", || {
            release_pod_networks(plan, &records, &mut warnings);
            Ok::<_, String>(())
        });
    }
    let _ = progress.step("mesh stopped", || {
        Ok::<_, String>(stop_role(Role::Mesh, Duration::from_secs(5), &mut warnings))
    });
    let _ = progress.step("namespaces emptied", || {
        sweep_namespaces(&records, &mut warnings);
        Ok::<_, String>(())
    });
    let _ = progress.step("namespaces deleted", || {
        for record in records.iter().rev() {
            if let Record::Netns { name } = record
                && let Err(e) = network::del_netns(name)
            {
                warnings.push(e.to_string());
            }
        }
        Ok::<_, String>(())
    });
    for record in &records {
        if let Record::File { path } = record
            && let Err(e) = fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warnings.push(format!("{}: {e}", path.display()));
        }
    }
    if let Some(plan) = &plan {
        remove_new_status_files(plan, &mut warnings);
    }
    fs::remove_dir_all(state_dir).map_err(|source| DownError::File {
        path: state_dir.to_path_buf(),
        source,
    })?;
    Ok(warnings)
}

/// Kills what still runs inside the cluster's namespaces although the
/// journal did not name it (started just before a crash, or a pod's own
/// children), so no namespace is kept alive by a stray process.
fn sweep_namespaces(records: &[Record], warnings: &mut Vec<String>) {
    for record in records {
        let Record::Netns { name } = record else {
            continue;
        };
        let pids = process::pids_in_netns(&network::netns_path(name));
        for pid in &pids {
            process::kill(*pid);
        }
        for pid in pids {
            let until = Instant::now() + Duration::from_secs(2);
            while process::is_alive(pid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            warnings.push(format!(
                "process {pid} in namespace {name} was not recorded; killed"
            ));
        }
    }
}

fn release_pod_networks(plan: &Plan, records: &[Record], warnings: &mut Vec<String>) {
    let cni_path = cni::cni_path(&Binaries::locate().dir);
    let mut seen = std::collections::BTreeSet::new();
    for record in records.iter().rev() {
        let Record::Attachment { pod, result } = record else {
            continue;
        };
        if !seen.insert(pod.clone()) {
            continue;
        }
        let Some(pod_plan) = plan.pods.iter().find(|p| p.key() == *pod) else {
            continue;
        };
        let Some(node) = plan.node(&pod_plan.node) else {
            continue;
        };
        if !network::netns_exists(&node.netns) || !network::netns_exists(&pod_plan.netns) {
            continue;
        }
        let list = cni::conflist(plan, node);
        let netns_path = network::netns_path(&pod_plan.netns);
        let call = cni::Call {
            list: &list,
            pod: pod_plan,
            pod_netns_path: &netns_path,
            node_netns: &node.netns,
            cni_path: &cni_path,
        };
        if let Err(e) = call.del(Some(result)) {
            warnings.push(e.to_string());
        }
    }
}

/// Removes the status files istiod-lite wrote while the cluster was up.
fn remove_new_status_files(plan: &Plan, warnings: &mut Vec<String>) {
    let before: Vec<PathBuf> = fs::read_to_string(plan.state_dir.join(STATUS_BEFORE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    for path in status_files(&plan.dir) {
        if !before.contains(&path)
            && let Err(e) = fs::remove_file(&path)
        {
            warnings.push(format!("{}: {e}", path.display()));
        }
    }
}
