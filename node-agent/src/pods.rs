//! The node's pods as the agent knows them: each pod's open network
//! namespace and its enrolment record, kept in memory and on disk (one small
//! file per pod, written atomically) so a restarted agent reconciles instead
//! of forgetting pods.

pub mod record;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;

use mesh_core::netns::Netns;

pub use record::{PodRecord, RecordError, RecordStore};

/// One pod with a known network namespace.
#[derive(Debug)]
pub struct PodEntry {
    pub record: PodRecord,
    pub netns: Arc<Netns>,
    /// The last operation's failure, for `/debug/pods`.
    pub last_error: Option<String>,
}

impl PodEntry {
    /// A path that names exactly the namespace we hold open, whatever
    /// happened to the runtime's path since: our own descriptor in /proc.
    pub fn netns_path(&self) -> PathBuf {
        held_netns_path(&self.netns)
    }
}

pub fn held_netns_path(netns: &Netns) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        netns.as_fd().as_raw_fd()
    ))
}

/// Pods by uid.
pub type PodTable = BTreeMap<String, PodEntry>;
