//! `ambit status`: nodes, pods (node, IP, PID, enrolment as the node agent
//! and the node's ztunnel see it) and mesh health, gathered from the state
//! directory and the admin endpoints inside the cluster's namespaces, then
//! rendered as a table (pure).

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::mesh::{self, AGENT_ADMIN, ZTUNNEL_ADMIN};
use crate::cluster::pod_status::Phase;
use crate::cluster::{Cluster, probe};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
pub struct StatusReport {
    pub cluster: String,
    pub health: Vec<(String, Result<(), String>)>,
    pub nodes: Vec<[String; 3]>,
    pub pods: Vec<PodRow>,
    /// The directory's waypoints and what is bound to them.
    pub waypoints: Vec<crate::waypoint::WaypointRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodRow {
    pub pod: String,
    pub node: String,
    pub phase: String,
    pub ip: String,
    pub pid: String,
    /// As the node agent reports it; `None` without a mesh or an answer.
    pub enrolled: Option<bool>,
    /// The pod's proxy in the node's ztunnel (`Up`, `Pending`, `none`);
    /// `None` without a mesh or an answer.
    pub in_ztunnel: Option<String>,
    pub note: String,
}

fn fetch_json(netns: &str, addr: &str, path: &str) -> Option<Value> {
    let addr = addr.parse().ok()?;
    match probe::get(netns, addr, path, PROBE_TIMEOUT) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The pod's proxy state in the node ztunnel's `/config_dump`
/// (`workloadState`: `Up` or `Pending`), or `none` when the ztunnel answered
/// and runs no proxy for it.
fn ztunnel_state(dump: &Value, pod: &crate::cluster::plan::PodPlan) -> String {
    let entries = dump
        .get("workloadState")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    entries
        .iter()
        .find(|w| {
            w.get("uid").and_then(Value::as_str) == Some(pod.uid.as_str())
                || (w.get("namespace").and_then(Value::as_str) == Some(pod.namespace.as_str())
                    && w.get("name").and_then(Value::as_str) == Some(pod.name.as_str()))
        })
        .and_then(|w| w.get("state").and_then(Value::as_str))
        .unwrap_or("none")
        .to_string()
}

/// The node agent's `/debug/pods` entry for `pod` (by uid, else by
/// namespace and name).
fn agent_pod(
    agents: &std::collections::BTreeMap<String, Option<Value>>,
    pod: &crate::cluster::plan::PodPlan,
) -> Option<Value> {
    let pods = agents.get(&pod.node)?.as_ref()?.get("pods")?.as_array()?;
    pods.iter()
        .find(|p| p.get("uid").and_then(Value::as_str) == Some(pod.uid.as_str()))
        .or_else(|| {
            pods.iter().find(|p| {
                p.get("namespace").and_then(Value::as_str) == Some(pod.namespace.as_str())
                    && p.get("name").and_then(Value::as_str) == Some(pod.name.as_str())
            })
        })
        .cloned()
}

/// Gathers the report; unreachable endpoints show as not ready.
pub fn collect(cluster: &Cluster) -> StatusReport {
    let plan = cluster.plan();
    let mut agents = std::collections::BTreeMap::new();
    let mut ztunnels = std::collections::BTreeMap::new();
    let health = mesh::health(plan);
    if plan.mesh {
        for node in &plan.nodes {
            agents.insert(
                node.name.clone(),
                fetch_json(&node.netns, AGENT_ADMIN, "/debug/pods"),
            );
            ztunnels.insert(
                node.name.clone(),
                fetch_json(&node.netns, ZTUNNEL_ADMIN, "/config_dump"),
            );
        }
    }
    let states = cluster.pod_states();
    let pods = plan
        .pods
        .iter()
        .map(|pod| {
            let state = states.iter().find(|s| s.pod == pod.key());
            let agent_entry = agent_pod(&agents, pod);
            PodRow {
                pod: pod.key(),
                node: pod.node.clone(),
                phase: state.map_or("Unknown".into(), |s| format!("{:?}", s.phase)),
                ip: state
                    .and_then(|s| s.ip)
                    .map_or("-".into(), |ip| ip.to_string()),
                pid: state
                    .filter(|s| s.phase == Phase::Running)
                    .and_then(|s| s.pid)
                    .map_or("-".into(), |p| p.to_string()),
                enrolled: match (&agent_entry, agents.get(&pod.node)) {
                    (Some(entry), _) => entry.get("enrolled").and_then(Value::as_bool),
                    // The agent answered and does not know the pod.
                    (None, Some(Some(_))) => Some(false),
                    (None, _) => None,
                },
                in_ztunnel: ztunnels
                    .get(&pod.node)
                    .and_then(Option::as_ref)
                    .map(|dump| ztunnel_state(dump, pod)),
                note: state
                    .filter(|s| s.phase != Phase::Running)
                    .and_then(|s| s.last_error.clone())
                    .or_else(|| {
                        agent_entry
                            .as_ref()
                            .and_then(|e| e.get("lastError"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    let waypoints = crate::waypoint::read_dir(&plan.dir)
        .map(|view| crate::waypoint::list(&view, None))
        .unwrap_or_default();
    StatusReport {
        cluster: plan.cluster.clone(),
        waypoints,
        health,
        nodes: plan
            .nodes
            .iter()
            .map(|n| {
                [
                    n.name.clone(),
                    n.address.addr().to_string(),
                    n.pod_cidr.to_string(),
                ]
            })
            .collect(),
        pods,
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

pub fn render(report: &StatusReport) -> String {
    let mut out = format!("cluster {}\n\n", report.cluster);
    let nodes: Vec<Vec<String>> = report.nodes.iter().map(|n| n.to_vec()).collect();
    table(&mut out, &["NODE", "ADDRESS", "POD CIDR"], &nodes);
    out.push('\n');
    let pods: Vec<Vec<String>> = report
        .pods
        .iter()
        .map(|p| {
            vec![
                p.pod.clone(),
                p.node.clone(),
                p.phase.clone(),
                p.ip.clone(),
                p.pid.clone(),
                yes_no(p.enrolled),
                p.in_ztunnel.clone().unwrap_or_else(|| "-".into()),
                p.note.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "POD", "NODE", "PHASE", "IP", "PID", "ENROLLED", "ZTUNNEL", "NOTE",
        ],
        &pods,
    );
    if !report.waypoints.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .waypoints
            .iter()
            .map(|w| {
                let mut bound: Vec<String> =
                    w.namespaces.iter().map(|n| format!("ns {n}")).collect();
                bound.extend(w.services.iter().cloned());
                bound.extend(w.workloads.iter().map(|p| format!("pod {p}")));
                vec![
                    format!("{}/{}", w.namespace, w.name),
                    w.waypoint_for.clone(),
                    w.address.clone(),
                    w.programmed.clone(),
                    if bound.is_empty() {
                        "-".into()
                    } else {
                        bound.join(", ")
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &["WAYPOINT", "FOR", "ADDRESS", "PROGRAMMED", "USED BY"],
            &rows,
        );
    }
    if !report.health.is_empty() {
        out.push('\n');
        let health: Vec<Vec<String>> = report
            .health
            .iter()
            .map(|(name, r)| match r {
                Ok(()) => vec![name.clone(), "ready".into(), String::new()],
                Err(e) => vec![name.clone(), "NOT READY".into(), e.clone()],
            })
            .collect();
        table(&mut out, &["COMPONENT", "HEALTH", "DETAIL"], &health);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_ztunnel_column_is_the_pods_proxy_state() {
        let pod = crate::cluster::plan::PodPlan {
            namespace: "a".into(),
            name: "web".into(),
            uid: "u1".into(),
            node: "n1".into(),
            netns: String::new(),
            container_id: String::new(),
            command: vec!["x".into()],
            env: Vec::new(),
            labels: Default::default(),
            ports: Default::default(),
        };
        let dump = json!({"mode": "inpod", "workloadState": [
            {"uid": "u1", "namespace": "a", "name": "web", "state": "Up"},
            {"uid": "u2", "namespace": "a", "name": "db", "state": "Pending", "error": "x"}]});
        assert_eq!(ztunnel_state(&dump, &pod), "Up");
        let other = crate::cluster::plan::PodPlan {
            uid: "u3".into(),
            name: "db".into(),
            ..pod.clone()
        };
        assert_eq!(ztunnel_state(&dump, &other), "Pending");
        assert_eq!(ztunnel_state(&json!({"workloads": []}), &pod), "none");
    }

    #[test]
    fn renders_aligned_tables() {
        let report = StatusReport {
            cluster: "c".into(),
            waypoints: vec![crate::waypoint::WaypointRow {
                namespace: "a".into(),
                name: "waypoint".into(),
                waypoint_for: "service".into(),
                address: "10.96.255.3".into(),
                programmed: "True".into(),
                namespaces: vec!["a".into()],
                services: vec!["a/web".into()],
                workloads: Vec::new(),
            }],
            health: vec![
                ("istiod-lite".into(), Ok(())),
                ("ztunnel n1".into(), Err("503".into())),
            ],
            nodes: vec![["n1".into(), "10.255.0.10".into(), "10.244.0.0/24".into()]],
            pods: vec![PodRow {
                pod: "a/web".into(),
                node: "n1".into(),
                phase: "Running".into(),
                ip: "10.244.0.2".into(),
                pid: "42".into(),
                enrolled: Some(true),
                in_ztunnel: Some("Up".into()),
                note: String::new(),
            }],
        };
        let text = render(&report);
        assert!(
            text.contains("NODE  ADDRESS      POD CIDR\nn1    10.255.0.10  10.244.0.0/24\n"),
            "{text}"
        );
        assert!(
            text.contains("a/web  n1    Running  10.244.0.2  42   yes       Up"),
            "{text}"
        );
        assert!(text.contains("ztunnel n1   NOT READY  503"), "{text}");
        assert!(
            text.contains("a/waypoint  service  10.96.255.3  True        ns a, a/web"),
            "{text}"
        );
    }
}
