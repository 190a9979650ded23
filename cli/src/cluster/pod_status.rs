//! What the pod runner knows about each pod (`pods.json` in the state
//! directory, for `ambit up` and `ambit status`) and the pod status it
//! publishes to the registry: one status file in the cluster directory,
//! `ambit-pods.status.yaml`, a Pod document per pod with its phase, IPs and
//! `Ready` condition, as a kubelet writes pod status. Rendering is pure.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::plan::Plan;

/// The status file the runner writes in the cluster directory. No source
/// file has this stem, so istiod-lite never takes it for its own.
pub const STATUS_FILE: &str = "ambit-pods.status.yaml";
/// The runner's own view, in the state directory.
pub const PODS_FILE: &str = "pods.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for its network (CNI ADD not yet successful).
    Pending,
    Running,
    /// Its process exited.
    Exited,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    /// `namespace/name`.
    pub pod: String,
    pub node: String,
    pub phase: Phase,
    pub ip: Option<Ipv4Addr>,
    pub pid: Option<u32>,
    /// CNI ADD attempts so far.
    pub attempts: u32,
    /// Why the pod is not running, in the plugin's words.
    pub last_error: Option<String>,
    /// RFC 3339, when the process started.
    pub started: Option<String>,
}

impl PodState {
    pub fn pending(pod: String, node: String) -> PodState {
        PodState {
            pod,
            node,
            phase: Phase::Pending,
            ip: None,
            pid: None,
            attempts: 0,
            last_error: None,
            started: None,
        }
    }
}

/// The status file's text for `states`, one document per planned pod.
pub fn render_status_file(plan: &Plan, states: &[PodState]) -> String {
    let mut text = String::from(
        "# Written by the ambit pod runner as a kubelet writes pod status; do not edit.\n",
    );
    for pod in &plan.pods {
        let Some(state) = states.iter().find(|s| s.pod == pod.key()) else {
            continue;
        };
        let host_ip = plan.node(&pod.node).map(|n| n.address.addr().to_string());
        let mut status = serde_json::Map::new();
        let phase = match state.phase {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Exited => "Failed",
        };
        status.insert("phase".into(), json!(phase));
        if let Some(host_ip) = host_ip {
            status.insert("hostIP".into(), json!(host_ip));
            status.insert("hostIPs".into(), json!([{ "ip": host_ip }]));
        }
        if let Some(ip) = state.ip {
            status.insert("podIP".into(), json!(ip.to_string()));
            status.insert("podIPs".into(), json!([{ "ip": ip.to_string() }]));
        }
        if let Some(started) = &state.started {
            status.insert("startTime".into(), json!(started));
        }
        let ready = state.phase == Phase::Running;
        let mut condition =
            json!({"type": "Ready", "status": if ready { "True" } else { "False" }});
        if let (false, Some(error)) = (ready, &state.last_error) {
            condition["reason"] = json!("NotReady");
            condition["message"] = json!(error);
        }
        status.insert("conditions".into(), json!([condition]));
        let document = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "status": status,
        });
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&document).unwrap_or_default());
    }
    text
}

pub fn status_file_path(plan: &Plan) -> PathBuf {
    plan.dir.join(STATUS_FILE)
}

/// Writes through a hidden temporary file and a rename, so readers (the
/// directory sources of istiod-lite and the node agents) never see half a
/// file; skips the write when nothing changed.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)
}

/// The runner's last published pod states (none before it started).
pub fn read_states(state_dir: &Path) -> Vec<PodState> {
    match fs::read_to_string(state_dir.join(PODS_FILE)) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(_) => Vec::new(),
    }
}

pub fn write_states(state_dir: &Path, states: &[PodState]) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(states).expect("states serialize");
    write_atomic(&state_dir.join(PODS_FILE), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan::{PlanOptions, plan};
    use crate::cluster::spec::ClusterSpec;
    use mesh_registry::dir::overlay::parse_status_file;
    use mesh_registry::dir::parse_file;

    #[test]
    fn the_status_file_is_what_the_registry_reads_as_pod_status() {
        let yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, uid: u-a}\nspec: {nodeName: n1, containers: [{name: c, command: [x]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {nodeName: n1, containers: [{name: c, command: [x]}]}\n";
        let parsed = parse_file(Path::new("c.yaml"), yaml);
        let spec = ClusterSpec::from_objects(parsed.objects.into_iter().map(|o| o.object));
        let options = PlanOptions {
            cluster: "t".into(),
            state_dir: "/run/t".into(),
            mesh: false,
        };
        let plan = plan(&spec, &options).unwrap();
        let mut running = PodState::pending("x/a".into(), "n1".into());
        running.phase = Phase::Running;
        running.ip = Some(Ipv4Addr::new(10, 244, 0, 2));
        running.started = Some("2026-01-01T00:00:00Z".into());
        let mut pending = PodState::pending("x/b".into(), "n1".into());
        pending.last_error = Some("ADD bridge failed".into());
        let text = render_status_file(&plan, &[running, pending]);

        let status = parse_status_file(Path::new(STATUS_FILE), &text);
        assert!(status.errors.is_empty(), "{:?}", status.errors);
        let rows: Vec<String> = status
            .overlays
            .iter()
            .map(|(key, o)| {
                format!(
                    "{key} uid={} phase={} ip={} host={} ready={} message={}",
                    o.uid.as_deref().unwrap_or("-"),
                    o.status["phase"],
                    o.status.get("podIP").unwrap_or(&serde_json::Value::Null),
                    o.status["hostIP"],
                    o.status["conditions"][0]["status"],
                    o.status["conditions"][0]["message"],
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "Pod x/a uid=u-a phase=\"Running\" ip=\"10.244.0.2\" host=\"10.255.0.10\" ready=\"True\" message=null".to_string(),
                format!(
                    "Pod x/b uid={} phase=\"Pending\" ip=null host=\"10.255.0.10\" ready=\"False\" message=\"ADD bridge failed\"",
                    plan.pods[1].uid
                ),
            ]
        );
    }
}
