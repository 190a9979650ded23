//! Starting the mesh of a local cluster: istiod-lite in the fabric namespace
//! (reachable from every node at the fabric address), then per node a node
//! agent and an in-pod ztunnel inside the node namespace, the ztunnel
//! configured from a file written here (xDS and CA at istiod-lite, the
//! node's token, the node agent's ZDS socket).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::Binaries;
use super::UpError;
use super::journal::{Journal, Record, Role};
use super::plan::{NodePlan, Plan};
use super::probe;
use super::process::{self, Launch};
use super::progress::{Progress, wait_until};

pub const ISTIOD_GRPC_PORT: u16 = 15012;
pub const ISTIOD_ADMIN: &str = "127.0.0.1:15014";
pub const AGENT_ADMIN: &str = "127.0.0.1:15031";
pub const ZTUNNEL_ADMIN: &str = "127.0.0.1:15000";
pub const ZTUNNEL_READINESS: &str = "127.0.0.1:15021";
/// The name on istiod-lite's serving certificate that clients check.
pub const ISTIOD_SERVER_NAME: &str = "istiod.istio-system.svc";
const START_PATIENCE: Duration = Duration::from_secs(60);

pub fn istiod_state_dir(plan: &Plan) -> PathBuf {
    plan.state_dir.join("istiod-lite")
}

pub fn zds_socket(node: &NodePlan) -> PathBuf {
    node.dir.join("zds.sock")
}

/// Starts a recorded process and fails if it dies at once.
pub fn launch(journal: &Journal, launch: &Launch<'_>) -> Result<process::Started, UpError> {
    let started = process::start(launch)?;
    journal.append(&Record::Process {
        role: launch.role,
        name: launch.name.clone(),
        pid: started.pid,
        start_time: started.start_time,
    })?;
    process::check_alive(
        &launch.name,
        &started,
        &launch.log,
        Duration::from_millis(200),
    )?;
    Ok(started)
}

pub fn start_istiod(
    plan: &Plan,
    binaries: &Binaries,
    journal: &Journal,
    progress: &Progress,
) -> Result<(), UpError> {
    let state = istiod_state_dir(plan);
    let program = binaries.find("istiod-lite")?;
    let args = vec![
        "--source".into(),
        "dir".into(),
        "--dir".into(),
        plan.dir.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--grpc-listen".into(),
        format!("{}:{ISTIOD_GRPC_PORT}", plan.fabric_ip()),
        "--admin-listen".into(),
        ISTIOD_ADMIN.into(),
    ];
    let log = plan.state_dir.join("istiod-lite.log");
    progress.step("istiod-lite ready", || {
        launch(
            journal,
            &Launch {
                role: Role::Mesh,
                name: "istiod-lite".into(),
                netns: Some(&plan.fabric.netns),
                program: &program,
                args,
                env: Vec::new(),
                log: log.clone(),
            },
        )?;
        let tokens = state.join("node-tokens.yaml");
        wait_until("istiod-lite /ready", START_PATIENCE, || {
            let (code, body) = probe::get(
                &plan.fabric.netns,
                ISTIOD_ADMIN.parse().expect("a constant address"),
                "/ready",
                Duration::from_secs(2),
            )
            .map_err(|e| e.to_string())?;
            if code != 200 {
                return Err(format!("{code}: {}", body.trim()));
            }
            if !tokens.exists() {
                return Err(format!("{} not written yet", tokens.display()));
            }
            Ok(())
        })
        .map_err(|reason| UpError::NotReady {
            component: "istiod-lite".into(),
            reason,
            log: log.clone(),
        })
    })
}

/// The node's token from istiod-lite's `node-tokens.yaml`, written to a
/// file only root reads, for the ztunnel's `tokenFile`.
fn write_token(plan: &Plan, node: &NodePlan) -> Result<PathBuf, UpError> {
    let tokens_path = istiod_state_dir(plan).join("node-tokens.yaml");
    let text = fs::read_to_string(&tokens_path).map_err(|e| UpError::file(&tokens_path, e))?;
    let tokens: std::collections::BTreeMap<String, String> =
        serde_yaml::from_str(&text).map_err(|e| UpError::NodeToken {
            path: tokens_path.clone(),
            reason: e.to_string(),
        })?;
    let token = tokens.get(&node.name).ok_or_else(|| UpError::NodeToken {
        path: tokens_path.clone(),
        reason: format!("no token for node {}", node.name),
    })?;
    let path = token_path(node);
    fs::write(&path, token).map_err(|e| UpError::file(&path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| UpError::file(&path, e))?;
    Ok(path)
}

/// Where the node's istiod-lite token is kept (root only).
pub fn token_path(node: &NodePlan) -> PathBuf {
    node.dir.join("token")
}

/// The ztunnel's config for `node` (docs/ztunnel-config.md).
pub fn ztunnel_config(plan: &Plan, node: &NodePlan, token_file: &Path) -> serde_json::Value {
    let address = format!("https://{}:{ISTIOD_GRPC_PORT}", plan.fabric_ip());
    let root = istiod_state_dir(plan).join("root-cert.pem");
    json!({
        "proxy": {
            "inpod": {"socket": zds_socket(node)},
            "certificates": {"controlPlane": {
                "address": address,
                "serverName": ISTIOD_SERVER_NAME,
                "rootCert": root,
                "tokenFile": token_file,
                "impersonate": true,
            }},
            "xds": {
                "address": address,
                "serverName": ISTIOD_SERVER_NAME,
                "rootCert": root,
                "tokenFile": token_file,
                "nodeName": node.name,
                "instanceIp": node.address.addr().to_string(),
            },
            "listeners": {"admin": ZTUNNEL_ADMIN},
            "drainDeadline": "1s",
        }
    })
}

/// Starts `node`'s node agent (also again, after it stopped: it picks up
/// its pods from its records).
pub fn start_node_agent(
    plan: &Plan,
    node: &NodePlan,
    binaries: &Binaries,
    journal: &Journal,
) -> Result<process::Started, UpError> {
    let agent = binaries.find("node-agent")?;
    let agent_state = node.dir.join("node-agent");
    fs::create_dir_all(&agent_state).map_err(|e| UpError::file(&agent_state, e))?;
    launch(
        journal,
        &Launch {
            role: Role::Mesh,
            name: format!("node-agent {}", node.name),
            netns: Some(&node.netns),
            program: &agent,
            args: vec![
                "--node".into(),
                node.name.clone(),
                "--source".into(),
                "dir".into(),
                "--dir".into(),
                plan.dir.display().to_string(),
                "--zds-socket".into(),
                zds_socket(node).display().to_string(),
                "--cni-socket".into(),
                super::cni::cni_socket(node).display().to_string(),
                "--state-dir".into(),
                agent_state.display().to_string(),
                "--admin".into(),
                AGENT_ADMIN.into(),
            ],
            env: Vec::new(),
            log: node.dir.join("node-agent.log"),
        },
    )
}

pub fn start_node(
    plan: &Plan,
    node: &NodePlan,
    binaries: &Binaries,
    journal: &Journal,
    progress: &Progress,
) -> Result<(), UpError> {
    binaries.find("node-agent")?;
    binaries.find("ztunnel")?;
    progress.step(
        &format!("node {}: node agent and ztunnel started", node.name),
        || {
            let token = write_token(plan, node)?;
            start_node_agent(plan, node, binaries, journal)?;
            let config_path = ztunnel_config_path(node);
            let config = serde_yaml::to_string(&ztunnel_config(plan, node, &token))
                .expect("a JSON value renders as YAML");
            fs::write(&config_path, config).map_err(|e| UpError::file(&config_path, e))?;
            start_ztunnel(node, binaries, journal)?;
            Ok(())
        },
    )
}

fn ztunnel_config_path(node: &NodePlan) -> PathBuf {
    node.dir.join("ztunnel.yaml")
}

/// Starts `node`'s ztunnel from the config `start_node` wrote (also again,
/// after it stopped: it gets its pods from the node agent's snapshot).
pub fn start_ztunnel(
    node: &NodePlan,
    binaries: &Binaries,
    journal: &Journal,
) -> Result<process::Started, UpError> {
    let ztunnel = binaries.find("ztunnel")?;
    launch(
        journal,
        &Launch {
            role: Role::Mesh,
            name: format!("ztunnel {}", node.name),
            netns: Some(&node.netns),
            program: &ztunnel,
            args: vec![
                "--config".into(),
                ztunnel_config_path(node).display().to_string(),
            ],
            env: Vec::new(),
            log: node.dir.join("ztunnel.log"),
        },
    )
}

fn ready(netns: &str, addr: &str, path: &str) -> Result<(), String> {
    let addr = addr.parse().expect("constant admin addresses");
    match probe::get(netns, addr, path, Duration::from_secs(2)) {
        Ok((200, _)) => Ok(()),
        Ok((code, body)) => Err(format!("{code} {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// Each mesh component's readiness: istiod-lite `/ready`, each node
/// agent's `/ready`, each ztunnel's `/healthz/ready` (none without a mesh).
pub fn health(plan: &Plan) -> Vec<(String, Result<(), String>)> {
    let mut health = Vec::new();
    if !plan.mesh {
        return health;
    }
    health.push((
        "istiod-lite".to_string(),
        ready(&plan.fabric.netns, ISTIOD_ADMIN, "/ready"),
    ));
    for node in &plan.nodes {
        health.push((
            format!("node-agent {}", node.name),
            ready(&node.netns, AGENT_ADMIN, "/ready"),
        ));
        health.push((
            format!("ztunnel {}", node.name),
            ready(&node.netns, ZTUNNEL_READINESS, "/healthz/ready"),
        ));
    }
    health
}
