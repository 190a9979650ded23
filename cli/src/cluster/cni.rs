//! Calling CNI plugins as a container runtime does (libcni semantics): the
//! network configuration list each node uses, the environment and stdin of
//! each plugin call (pure, tested), and running a chain: ADD in order, each
//! plugin given the previous one's result, DEL in reverse with the ADD's
//! result. Plugins run inside the node's namespace, so the bridge and the
//! host ends of pod veths live on the node.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::plan::{NodePlan, POD_IFNAME, Plan, PodPlan};

/// The CNI spec version of the conflist (Debian's plugins support it).
pub const CNI_VERSION: &str = "1.0.0";
/// Where Debian's containernetworking-plugins live.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The bridge each node's pods attach to, inside the node namespace.
pub const NODE_BRIDGE: &str = "cni0";
/// A plugin that has not answered by then is killed and the call fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin:?} not found in {path}")]
    NotFound { plugin: String, path: String },
    #[error("{command} {plugin} for pod {pod}: cannot run the plugin: {source}")]
    Spawn {
        command: &'static str,
        plugin: String,
        pod: String,
        source: std::io::Error,
    },
    #[error("{command} {plugin} for pod {pod} failed ({status}): {message}")]
    Failed {
        command: &'static str,
        plugin: String,
        pod: String,
        status: String,
        message: String,
    },
    #[error("{command} {plugin} for pod {pod}: no answer within {timeout:?}; killed")]
    Timeout {
        command: &'static str,
        plugin: String,
        pod: String,
        timeout: Duration,
    },
    #[error("{command} {plugin} for pod {pod}: the result is not JSON: {reason}")]
    BadResult {
        command: &'static str,
        plugin: String,
        pod: String,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// The node's network configuration list: `bridge` with `host-local` IPAM
/// on the node's pod CIDR, then `ambit-cni` when the mesh runs.
///
/// `isGateway`: the bridge holds the pods' default gateway, so the node
/// routes pod traffic to other nodes. `ipMasq` is off: pods reach each other
/// by their own addresses, as Kubernetes requires, and there is nothing
/// outside the fabric to masquerade towards. IPAM state lives in the state
/// directory so `ambit down` removes it with everything else.
pub fn conflist(plan: &Plan, node: &NodePlan) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": NODE_BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": node.pod_cidr.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": node.dir.join("ipam"),
        },
    })];
    if plan.mesh {
        plugins.push(json!({
            "type": "ambit-cni",
            "cniSocket": cni_socket(node),
        }));
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": format!("ambit-{}", plan.cluster),
        "plugins": plugins,
    })
}

/// The node agent's CNI socket, where `ambit-cni` reports pods.
pub fn cni_socket(node: &NodePlan) -> PathBuf {
    node.dir.join("cni.sock")
}

/// The configuration one plugin of the list receives on stdin: the list's
/// name and version, the plugin's own keys, and the previous result.
pub fn plugin_config(list: &Value, index: usize, prev_result: Option<&Value>) -> Value {
    let mut config = list["plugins"][index].clone();
    if let Value::Object(map) = &mut config {
        map.insert("cniVersion".into(), list["cniVersion"].clone());
        map.insert("name".into(), list["name"].clone());
        if let Some(prev) = prev_result {
            map.insert("prevResult".into(), prev.clone());
        }
    }
    config
}

/// The environment of a plugin call for `pod`, as a kubelet's runtime sets it.
pub fn plugin_env(
    command: CniCommand,
    pod: &PodPlan,
    netns_path: &Path,
    cni_path: &str,
) -> Vec<(String, String)> {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.container_id, pod.uid
    );
    vec![
        ("CNI_COMMAND".into(), command.as_str().into()),
        ("CNI_CONTAINERID".into(), pod.container_id.clone()),
        ("CNI_NETNS".into(), netns_path.display().to_string()),
        ("CNI_IFNAME".into(), POD_IFNAME.into()),
        ("CNI_ARGS".into(), args),
        ("CNI_PATH".into(), cni_path.into()),
    ]
}

/// `CNI_PATH`: the system plugins, then ours (`ambit-cni`).
pub fn cni_path(bin_dir: &Path) -> String {
    format!("{SYSTEM_PLUGIN_DIR}:{}", bin_dir.display())
}

/// The pod's IPv4 addresses in a CNI result.
pub fn result_ips(result: &Value) -> Vec<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|address| address.split('/').next())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// One chain call for one pod.
pub struct Call<'a> {
    pub list: &'a Value,
    pub pod: &'a PodPlan,
    pub pod_netns_path: &'a Path,
    pub node_netns: &'a str,
    pub cni_path: &'a str,
}

impl Call<'_> {
    /// ADD through every plugin in order; the last result is the pod's.
    pub fn add(&self) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        let count = self.plugin_count();
        for index in 0..count {
            let result = self.invoke(CniCommand::Add, index, prev.as_ref())?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through every plugin in reverse, each given the ADD's result;
    /// every plugin is called even if one fails, and the first error is
    /// returned, so a failed teardown still releases what it can.
    pub fn del(&self, add_result: Option<&Value>) -> Result<(), CniError> {
        let mut first_error = None;
        for index in (0..self.plugin_count()).rev() {
            if let Err(e) = self.invoke(CniCommand::Del, index, add_result) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn plugin_count(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    fn invoke(
        &self,
        command: CniCommand,
        index: usize,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let config = plugin_config(self.list, index, prev);
        let plugin = config["type"].as_str().unwrap_or_default().to_string();
        let binary = find_plugin(&plugin, self.cni_path)?;
        let pod = self.pod.key();
        let cmd = command.as_str();
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.node_netns])
            .arg(&binary)
            .envs(plugin_env(
                command,
                self.pod,
                self.pod_netns_path,
                self.cni_path,
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CniError::Spawn {
                command: cmd,
                plugin: plugin.clone(),
                pod: pod.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its stdin is judged by its
            // exit status below.
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CniError::Timeout {
                        command: cmd,
                        plugin,
                        pod,
                        timeout: PLUGIN_TIMEOUT,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(CniError::Spawn {
                        command: cmd,
                        plugin,
                        pod,
                        source,
                    });
                }
            }
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        if !status.success() {
            return Err(CniError::Failed {
                command: cmd,
                plugin,
                pod,
                status: status.to_string(),
                message: error_message(&stdout, &stderr),
            });
        }
        if command == CniCommand::Del || stdout.trim().is_empty() {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_str(&stdout).map_err(|e| CniError::BadResult {
            command: cmd,
            plugin,
            pod,
            reason: e.to_string(),
        })
    }
}

/// A plugin's error: the spec's `{code, msg, details}` on stdout, else stderr.
fn error_message(stdout: &str, stderr: &str) -> String {
    if let Ok(error) = serde_json::from_str::<Value>(stdout)
        && let Some(msg) = error["msg"].as_str()
    {
        let details = error["details"].as_str().unwrap_or_default();
        let code = error["code"].as_u64().unwrap_or_default();
        return if details.is_empty() {
            format!("code {code}: {msg}")
        } else {
            format!("code {code}: {msg}: {details}")
        };
    }
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    text.trim().to_string()
}

fn find_plugin(name: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    cni_path
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::NotFound {
            plugin: name.into(),
            path: cni_path.into(),
        })
}

#[cfg(test)]
#[path = "cni_tests.rs"]
mod tests;
