//! Namespaces and links, made with `ip`: the fabric (a bridge in its own
//! namespace), each node (a namespace with one veth onto the fabric and
//! routes to the other nodes' pod CIDRs), and the pods' empty namespaces the
//! CNI plugins then wire. Nothing is made in the host's own namespace, so
//! deleting the cluster's namespaces removes every link with them.

use std::path::PathBuf;
use std::process::Command;

use super::journal::{Journal, JournalError, Record};
use super::plan::{NodePlan, Plan};

/// Where `ip netns` keeps namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error(
        "network namespace {0} already exists: another cluster of this name is up, or a run left it behind (`ambit down`, or `ip netns del {0}`)"
    )]
    NetnsExists(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// `/var/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Runs a command, failing with its command line and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(netns: &str, args: &[&str]) -> Result<(), NetworkError> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

/// Creates a namespace with `lo` up, recording it before anything else
/// can fail.
pub fn add_netns(journal: &Journal, name: &str) -> Result<(), NetworkError> {
    if netns_exists(name) {
        return Err(NetworkError::NetnsExists(name.into()));
    }
    // Recorded first: a crash right after `add` must not leave a namespace
    // `down` does not know of (deleting one never made is harmless).
    journal.append(&Record::Netns { name: name.into() })?;
    run("ip", &["netns", "add", name])?;
    ip(name, &["link", "set", "lo", "up"])
}

/// Deletes a namespace; one already gone is fine.
pub fn del_netns(name: &str) -> Result<(), NetworkError> {
    if !netns_exists(name) {
        return Ok(());
    }
    run("ip", &["netns", "del", name]).map(drop)
}

pub fn create_fabric(plan: &Plan, journal: &Journal) -> Result<(), NetworkError> {
    let fabric = &plan.fabric;
    add_netns(journal, &fabric.netns)?;
    ip(
        &fabric.netns,
        &["link", "add", &fabric.bridge, "type", "bridge"],
    )?;
    ip(
        &fabric.netns,
        &[
            "addr",
            "add",
            &fabric.address.to_string(),
            "dev",
            &fabric.bridge,
        ],
    )?;
    ip(&fabric.netns, &["link", "set", &fabric.bridge, "up"])
}

pub fn create_node(plan: &Plan, node: &NodePlan, journal: &Journal) -> Result<(), NetworkError> {
    let fabric = &plan.fabric;
    add_netns(journal, &node.netns)?;
    ip(
        &node.netns,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &node.fabric_port,
            "netns",
            &fabric.netns,
        ],
    )?;
    ip(
        &fabric.netns,
        &[
            "link",
            "set",
            &node.fabric_port,
            "master",
            &fabric.bridge,
            "up",
        ],
    )?;
    ip(
        &node.netns,
        &["addr", "add", &node.address.to_string(), "dev", "eth0"],
    )?;
    ip(&node.netns, &["link", "set", "eth0", "up"])?;
    for route in &node.routes {
        ip(
            &node.netns,
            &[
                "route",
                "add",
                &route.to.to_string(),
                "via",
                &route.via.to_string(),
            ],
        )?;
    }
    // istiod-lite (in the fabric namespace) answers pods that call it
    // themselves, as provisioned waypoints do for xDS and certificates.
    ip(
        &fabric.netns,
        &[
            "route",
            "add",
            &node.pod_cidr.to_string(),
            "via",
            &node.address.addr().to_string(),
        ],
    )?;
    // The node forwards between its pods' bridge and the fabric.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &node.netns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
    .map(drop)
}
