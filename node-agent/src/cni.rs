//! The CNI side of enrolment. `plugin` is the `ambit-cni` binary's logic
//! (CNI spec 1.0: ADD, DEL, CHECK, VERSION; chained after the main plugin);
//! `server` is the node agent's end of the plugin's socket; `install` puts
//! the plugin into a node's CNI configuration. Between plugin and agent runs
//! one small protocol: the plugin connects to the unix stream socket
//! `cniSocket`, writes one JSON [`AgentRequest`], shuts its write side, and
//! reads one JSON [`AgentReply`].

pub mod install;
pub mod plugin;
pub mod server;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the node agent listens for the plugin.
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/cni.sock";

/// Spec error codes the plugin and agent use.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Ours: the node agent could not enrol the pod (rules, ztunnel refusal).
    pub const ENROLMENT_FAILED: u32 = 100;
    /// Ours: CHECK found the pod's redirection missing or wrong.
    pub const CHECK_FAILED: u32 = 101;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// What the plugin tells the agent about a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; may be empty on DEL.
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// `K8S_POD_UID`; empty when the runtime does not pass it.
    #[serde(default)]
    pub pod_uid: String,
    /// The pod's addresses, from `prevResult`.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The plugin gives up after this long; the agent answers before.
    pub timeout_ms: u64,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    /// A CNI error code when not ok.
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub message: String,
}

impl AgentReply {
    pub fn ok() -> AgentReply {
        AgentReply {
            ok: true,
            code: 0,
            message: String::new(),
        }
    }

    pub fn error(code: u32, message: impl Into<String>) -> AgentReply {
        AgentReply {
            ok: false,
            code,
            message: message.into(),
        }
    }
}
