//! Shared by the node agent's integration tests: a test ztunnel speaking
//! ZDS, a node agent started in-process on temporary paths, the CNI plugin
//! run as a process, and the registry files those tests write.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mesh_api::istio::workload::zds::{
    Ack, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use mesh_core::netns::{Netns as NetnsHandle, NetnsId};
use mesh_core::telemetry::LogControl;
use mesh_core::zds::{ZdsError, ZdsSocket};
use node_agent::app::App;
use node_agent::config::Config;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the test ztunnel was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Add {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        netns: NetnsId,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// A ztunnel-side ZDS client that answers every request: an Ack, or a NACK
/// with the text set by `nack_adds`.
pub struct TestZtunnel {
    events: mpsc::UnboundedReceiver<Event>,
    nack: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl TestZtunnel {
    pub async fn connect(path: &Path) -> Result<TestZtunnel> {
        let socket = ZdsSocket::connect(path).await?;
        socket.send(&ZdsHello { version: 1 }, None).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let nack: Arc<Mutex<Option<String>>> = Arc::default();
        let answer = nack.clone();
        let task = tokio::spawn(async move {
            loop {
                let datagram = match socket.recv().await {
                    Ok(d) => d,
                    Err(ZdsError::Closed) => return,
                    Err(e) => panic!("test ztunnel: {e}"),
                };
                let request: WorkloadRequest = datagram.decode("WorkloadRequest").unwrap();
                let mut error = String::new();
                let event = match request.payload.expect("a payload") {
                    workload_request::Payload::Add(add) => {
                        let fd = datagram.fd.expect("AddWorkload carries the netns");
                        let netns = NetnsHandle::from_fd(fd).expect("a network namespace");
                        let info = add.workload_info.expect("workload_info");
                        error = answer.lock().unwrap().clone().unwrap_or_default();
                        Event::Add {
                            uid: add.uid,
                            name: info.name,
                            namespace: info.namespace,
                            service_account: info.service_account,
                            netns: netns.id(),
                        }
                    }
                    workload_request::Payload::Del(del) => {
                        assert!(datagram.fd.is_none());
                        Event::Del { uid: del.uid }
                    }
                    workload_request::Payload::SnapshotSent(_) => Event::SnapshotSent,
                    workload_request::Payload::Keep(_) => panic!("unexpected Keep"),
                };
                let _ = tx.send(event);
                let ack = WorkloadResponse {
                    payload: Some(workload_response::Payload::Ack(Ack { error })),
                };
                if socket.send(&ack, None).await.is_err() {
                    return;
                }
            }
        });
        Ok(TestZtunnel { events, nack, task })
    }

    pub fn nack_adds(&self, text: Option<&str>) {
        *self.nack.lock().unwrap() = text.map(str::to_string);
    }

    pub async fn next(&mut self) -> Result<Event> {
        match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => bail!("the test ztunnel's connection ended"),
            Err(_) => bail!("no ZDS message within 10s"),
        }
    }

    /// Nothing arrives within `wait`.
    pub async fn quiet(&mut self, wait: Duration) -> Result<()> {
        match tokio::time::timeout(wait, self.events.recv()).await {
            Err(_) => Ok(()),
            Ok(event) => bail!("expected no message, got {event:?}"),
        }
    }

    /// The Adds of the snapshot, up to `SnapshotSent`.
    pub async fn snapshot(&mut self) -> Result<Vec<Event>> {
        let mut adds = Vec::new();
        loop {
            match self.next().await? {
                Event::SnapshotSent => return Ok(adds),
                event => adds.push(event),
            }
        }
    }
}

impl Drop for TestZtunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Paths of one node agent's run, in a temporary directory.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Result<Node> {
        let dir = tempfile::Builder::new().prefix("na-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("resources"))?;
        Ok(Node { dir })
    }
    pub fn resources(&self) -> PathBuf {
        self.dir.path().join("resources")
    }
    pub fn zds_socket(&self) -> PathBuf {
        self.dir.path().join("zds.sock")
    }
    pub fn cni_socket(&self) -> PathBuf {
        self.dir.path().join("cni.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub async fn start(&self, ack_timeout: &str) -> Result<App> {
        let source = ["--dir".to_string(), self.resources().display().to_string()];
        self.start_with(&source, ack_timeout).await
    }

    /// Starts with `source` flags (`--dir ...` or `--source kube ...`).
    pub async fn start_with(&self, source: &[String], ack_timeout: &str) -> Result<App> {
        let mut args = vec!["node-agent".to_string(), "--node".into(), "node-a".into()];
        args.extend(source.iter().cloned());
        args.extend([
            "--zds-socket".into(),
            self.zds_socket().display().to_string(),
            "--cni-socket".into(),
            self.cni_socket().display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--ack-timeout".into(),
            ack_timeout.into(),
            "--drain-deadline".into(),
            "2s".into(),
        ]);
        let config = Config::from_args(args)?;
        Ok(App::start(config, LogControl::detached()).await?)
    }

    /// Writes a namespace, with `istio.io/dataplane-mode` when given.
    pub fn namespace(&self, name: &str, mode: Option<&str>) -> Result<()> {
        let labels = match mode {
            Some(m) => format!("\n  labels:\n    istio.io/dataplane-mode: {m}"),
            None => String::new(),
        };
        write_atomically(
            &self.resources().join(format!("ns-{name}.yaml")),
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"),
        )
    }

    pub fn pod(&self, namespace: &str, name: &str, uid: &str, mode: Option<&str>) -> Result<()> {
        let labels = match mode {
            Some(m) => format!("\n  labels:\n    istio.io/dataplane-mode: {m}"),
            None => String::new(),
        };
        write_atomically(
            &self
                .resources()
                .join(format!("pod-{namespace}-{name}.yaml")),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {uid}{labels}\n\
                 spec:\n  nodeName: node-a\n  serviceAccountName: {name}-sa\n  containers:\n  - name: app\n    image: app\n"
            ),
        )
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One plugin run's output.
#[derive(Debug)]
pub struct PluginRun {
    pub stdout: String,
    pub status: std::process::ExitStatus,
}

impl PluginRun {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `ambit-cni` with exactly `env` and `stdin`.
pub async fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Result<PluginRun> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting ambit-cni")?;
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).await?;
    drop(pipe);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("ambit-cni did not finish within 30s")??;
    Ok(PluginRun {
        stdout: String::from_utf8(output.stdout)?,
        status: output.status,
    })
}

/// The plugin's environment for a pod.
pub fn pod_env<'a>(command: &'a str, netns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
        ("CNI_ARGS", args),
    ]
}

/// A network configuration chained after bridge, with a `prevResult`.
pub fn net_conf(socket: &Path, timeout: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "cniSocket": socket,
        "timeout": timeout,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 0}],
        }
    })
    .to_string()
}

/// `iptables-save` in a test netns.
pub fn saved(ns: &mesh_testkit::Netns) -> String {
    ns.exec("iptables-save", &[]).unwrap()
}

pub fn has_rules(ns: &mesh_testkit::Netns) -> bool {
    saved(ns).contains("ISTIO_OUTPUT")
}

pub fn netns_id(ns: &mesh_testkit::Netns) -> NetnsId {
    NetnsHandle::open(&ns.path()).unwrap().id()
}

pub const BRIDGE: &str = "/usr/lib/cni/bridge";

/// Runs the bridge plugin with the node netns as its host side.
pub async fn bridge(
    node: &mesh_testkit::Netns,
    command: &str,
    pod: &mesh_testkit::Netns,
    conf: &Value,
) -> Result<Value> {
    let pod_path = pod.path().display().to_string();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", node.name(), BRIDGE])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", pod_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the bridge plugin")?;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(out.status.success(), "bridge {command}: {stdout}");
    Ok(if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)?
    })
}
