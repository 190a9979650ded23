//! `ambit-cni`: a chained CNI plugin (CNI spec 1.0). It reads the network
//! configuration on stdin and the `CNI_*` environment, reports the pod to the
//! node agent and prints `prevResult` through unchanged on ADD (nothing on
//! DEL and CHECK). Every failure is a spec-shaped error on stdout and a
//! non-zero exit. Invocations without `K8S_POD_NAME`/`K8S_POD_NAMESPACE` in
//! `CNI_ARGS` are not Kubernetes pods and pass through untouched.
//!
//! DEL when the agent is unreachable succeeds only if nothing is left to
//! undo: the netns is gone (or was not given), or it holds none of our
//! rules. The agent drops records of pods whose netns is gone when it
//! starts, and ztunnel drops their proxies with the snapshot it then gets.
//! Otherwise DEL fails with code 11 and the runtime retries it.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::{AgentReply, AgentRequest, Command, DEFAULT_SOCKET, code};
use crate::redirect::apply::Redirector;

pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Default bound on the agent exchange (the `timeout` key).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply the plugin reads from the agent.
const MAX_REPLY: u64 = 64 * 1024;

/// A CNI error result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// The network configuration's keys the plugin reads.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub cni_socket: PathBuf,
    pub timeout: Duration,
    pub prev_result: Option<Value>,
}

/// Parses stdin: 6 when it is not JSON, 7 when keys are missing or wrong,
/// 1 for a version this plugin does not speak.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin",
            e.to_string(),
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not a JSON object",
            "expected {\"cniVersion\": ..., \"name\": ..., \"type\": ...}",
        ));
    };
    let string = |key: &str| -> Result<String, CniError> {
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration key {key:?} must be a non-empty string"),
                "",
            )),
            None => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration has no {key:?}"),
                "",
            )),
        }
    };
    let cni_version = string("cniVersion")?;
    let name = string("name")?;
    let plugin_type = string("type")?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {cni_version} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let cni_socket = match map.get("cniSocket") {
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(_) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "\"cniSocket\" must be a non-empty path",
                "",
            ));
        }
    };
    let timeout = match map.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(Value::String(s)) => mesh_core::duration::parse(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("\"timeout\" {s:?} is not a duration like 500ms, 5s or 1m"),
                    "",
                )
            })?,
        Some(_) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "\"timeout\" must be a string such as \"30s\"",
                "",
            ));
        }
    };
    let prev_result = match map.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "\"prevResult\" must be an object",
                "",
            ));
        }
    };
    Ok(NetConf {
        cni_version,
        name,
        plugin_type,
        cni_socket,
        timeout,
        prev_result,
    })
}

/// The pod's addresses in a result (`ips[].address`, CIDR notation).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn parse_args(args: &str) -> Result<Vec<(String, String)>, CniError> {
    args.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_ARGS is not a list of KEY=VALUE pairs separated by ';'",
                format!("bad entry {pair:?}"),
            )),
        })
        .collect()
}

/// What one run prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs the plugin: `env` reads an environment variable.
pub async fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let conf_version = || {
        serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| "1.0.0".to_string())
    };
    match run_command(&env, stdin).await {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(error) => Outcome {
            stdout: format!("{}\n", error.to_json(&conf_version())),
            exit_code: 1,
        },
    }
}

async fn run_command(
    env: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<String, CniError> {
    let command = env("CNI_COMMAND")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set", ""))?;
    let command = match command.as_str() {
        "VERSION" => {
            let version = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "1.0.0".to_string());
            return Ok(format!(
                "{}\n",
                json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
            ));
        }
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        other => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("unknown CNI_COMMAND {other:?}"),
                "expected ADD, DEL, CHECK or VERSION",
            ));
        }
    };
    let conf = parse_conf(stdin)?;
    let required = |name: &str| {
        env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
                format!("{} needs it", command.as_str()),
            )
        })
    };
    let container_id = required("CNI_CONTAINERID")?;
    let ifname = required("CNI_IFNAME")?;
    let netns = match command {
        Command::Del => env("CNI_NETNS").unwrap_or_default(),
        _ => required("CNI_NETNS")?,
    };
    let args = parse_args(&env("CNI_ARGS").unwrap_or_default())?;
    let arg = |key: &str| {
        args.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let passthrough = || match (command, &conf.prev_result) {
        (Command::Add, Some(prev)) => format!("{prev}\n"),
        (Command::Add, None) => format!("{}\n", json!({"cniVersion": conf.cni_version})),
        _ => String::new(),
    };
    let (pod_namespace, pod_name) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME"));
    if pod_namespace.is_empty() || pod_name.is_empty() {
        return Ok(passthrough());
    }
    let pod = format!("{pod_namespace}/{pod_name}");
    let request = AgentRequest {
        command,
        container_id,
        netns: netns.clone(),
        ifname,
        pod_namespace,
        pod_name,
        pod_uid: arg("K8S_POD_UID"),
        ips: conf
            .prev_result
            .as_ref()
            .map(result_ips)
            .unwrap_or_default(),
        timeout_ms: u64::try_from(conf.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let socket = conf.cni_socket.clone();
    // Leave the agent room to answer after its own bound.
    let patience = conf.timeout + Duration::from_secs(2);
    let exchange = tokio::task::spawn_blocking(move || ask_agent(&socket, &request, patience))
        .await
        .map_err(|e| CniError::new(code::IO_FAILURE, "the agent exchange failed", e.to_string()))?;
    match exchange {
        Ok(reply) if reply.ok => Ok(passthrough()),
        Ok(reply) => Err(CniError::new(
            if reply.code == 0 {
                code::ENROLMENT_FAILED
            } else {
                reply.code
            },
            format!("node agent: {}", reply.message),
            format!("pod {pod}"),
        )),
        Err(Unreachable(reason)) if command == Command::Del => {
            del_without_agent(&conf.cni_socket, &netns, &reason).await?;
            Ok(String::new())
        }
        Err(Unreachable(reason)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the node agent is unreachable at {}",
                conf.cni_socket.display()
            ),
            reason,
        )),
    }
}

struct Unreachable(String);

/// One request, one reply, all within `patience`.
fn ask_agent(
    socket: &Path,
    request: &AgentRequest,
    patience: Duration,
) -> Result<AgentReply, Unreachable> {
    let mut stream = UnixStream::connect(socket).map_err(|e| Unreachable(e.to_string()))?;
    let io = |e: std::io::Error| Unreachable(format!("talking to the node agent: {e}"));
    stream.set_write_timeout(Some(patience)).map_err(io)?;
    stream.set_read_timeout(Some(patience)).map_err(io)?;
    let body = serde_json::to_vec(request).map_err(|e| Unreachable(e.to_string()))?;
    stream.write_all(&body).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut reply = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut reply).map_err(io)?;
    serde_json::from_slice(&reply)
        .map_err(|e| Unreachable(format!("the node agent's reply is not valid: {e}")))
}

/// DEL with no agent: fine if the netns is gone or holds nothing of ours.
async fn del_without_agent(socket: &Path, netns: &str, reason: &str) -> Result<(), CniError> {
    if netns.is_empty() || !Path::new(netns).exists() {
        return Ok(());
    }
    let redirector = Redirector::default();
    match redirector.any_installed(Path::new(netns)).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the node agent is unreachable at {} and redirection rules remain in {netns}",
                socket.display()
            ),
            reason.to_string(),
        )),
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the node agent is unreachable at {} and {netns} cannot be inspected",
                socket.display()
            ),
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_with_our_keys() {
        let conf = parse_conf(
            br#"{"cniVersion":"0.4.0","name":"k8s","type":"ambit-cni","cniSocket":"/run/x.sock","timeout":"2s",
                 "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.5/24"},{"address":"fd00::5/64"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.cni_socket, PathBuf::from("/run/x.sock"));
        assert_eq!(conf.timeout, Duration::from_secs(2));
        let ips = result_ips(conf.prev_result.as_ref().unwrap());
        assert_eq!(
            ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let conf =
            parse_conf(br#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni"}"#).unwrap();
        assert_eq!(conf.cni_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
        assert_eq!(conf.prev_result, None);
        let code_of = |s: &[u8]| parse_conf(s).unwrap_err().code;
        assert_eq!(code_of(b"{not json"), code::DECODE_FAILURE);
        assert_eq!(code_of(b"[1]"), code::DECODE_FAILURE);
        assert_eq!(code_of(br#"{"name":"k","type":"t"}"#), code::INVALID_CONFIG);
        assert_eq!(
            code_of(br#"{"cniVersion":"9.9.9","name":"k","type":"t"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","name":"k","type":"t","timeout":"soon"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","name":"k","type":"t","prevResult":3}"#),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn cni_args() {
        let args =
            parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0").unwrap();
        assert_eq!(args[1], ("K8S_POD_NAMESPACE".into(), "shop".into()));
        assert_eq!(parse_args("").unwrap(), vec![]);
        assert_eq!(
            parse_args("novalue").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[tokio::test]
    async fn a_container_that_is_not_a_pod_passes_through() {
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_CONTAINERID" => Some("c1".to_string()),
            "CNI_NETNS" => Some("/var/run/netns/x".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            _ => None,
        };
        let stdin = br#"{"cniVersion":"1.0.0","name":"k","type":"ambit-cni","prevResult":{"cniVersion":"1.0.0","ips":[]}}"#;
        let out = run(env, stdin).await;
        assert_eq!(out.exit_code, 0);
        assert_eq!(
            serde_json::from_str::<Value>(&out.stdout).unwrap(),
            json!({"cniVersion":"1.0.0","ips":[]})
        );
    }
}
