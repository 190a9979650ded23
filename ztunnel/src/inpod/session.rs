//! The rules of one ZDS connection (spec 5) as a pure decision: given what
//! the node agent sent and which pods run now, what to do. The I/O loop in
//! `client` carries the decisions out and answers each message.

use std::collections::BTreeSet;

use mesh_api::istio::workload::zds::{WorkloadInfo, WorkloadRequest, workload_request::Payload};
use mesh_core::netns::NetnsId;

/// What ztunnel must do for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start a proxy for a new pod; ACK once it serves.
    Start { uid: String, info: WorkloadInfo },
    /// The pod moved to another netns: drain the old proxy, start a new one.
    Replace { uid: String, info: WorkloadInfo },
    /// Nothing to change: ACK.
    Nothing,
    /// Drain that pod's proxy at once; ACK.
    Remove { uid: String },
    /// End of the snapshot: drain every pod not named in it; ACK.
    Reconcile { keep: BTreeSet<String> },
    /// NACK with this text and carry on.
    Refuse(String),
    /// The node agent broke the protocol: NACK, then exit with status 1.
    Violation(String),
}

/// Per-connection state: reset on every reconnect.
#[derive(Debug, Default)]
pub struct Session {
    snapshot_done: bool,
    /// Pods named by Add or Keep during the snapshot.
    named: BTreeSet<String>,
}

impl Session {
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// Decides one request. `running` gives the netns of the proxy already
    /// serving a uid; `netns` is that of the descriptor that came with this
    /// request.
    pub fn step(
        &mut self,
        request: WorkloadRequest,
        netns: Option<NetnsId>,
        running: impl Fn(&str) -> Option<NetnsId>,
    ) -> Step {
        match request.payload {
            None => Step::Refuse("WorkloadRequest with no payload".into()),
            Some(Payload::Add(add)) => {
                let Some(info) = add.workload_info else {
                    return Step::Violation(format!(
                        "AddWorkload for {:?} without workload_info",
                        add.uid
                    ));
                };
                if add.uid.is_empty() {
                    return Step::Refuse("AddWorkload with an empty uid".into());
                }
                let Some(netns) = netns else {
                    return Step::Refuse(format!(
                        "AddWorkload for {} came without a network namespace descriptor",
                        add.uid
                    ));
                };
                if !self.snapshot_done {
                    self.named.insert(add.uid.clone());
                }
                match running(&add.uid) {
                    Some(current) if current == netns => Step::Nothing,
                    Some(_) => Step::Replace { uid: add.uid, info },
                    None => Step::Start { uid: add.uid, info },
                }
            }
            Some(Payload::Keep(keep)) => {
                if self.snapshot_done {
                    return Step::Violation(format!(
                        "KeepWorkload for {:?} after SnapshotSent",
                        keep.uid
                    ));
                }
                self.named.insert(keep.uid);
                Step::Nothing
            }
            Some(Payload::Del(del)) => {
                self.named.remove(&del.uid);
                Step::Remove { uid: del.uid }
            }
            Some(Payload::SnapshotSent(_)) => {
                if self.snapshot_done {
                    return Step::Violation("a second SnapshotSent".into());
                }
                self.snapshot_done = true;
                Step::Reconcile {
                    keep: std::mem::take(&mut self.named),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::istio::workload::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent};

    fn info() -> WorkloadInfo {
        WorkloadInfo {
            name: "p".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
        }
    }
    fn add(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: uid.into(),
                workload_info: Some(info()),
            })),
        }
    }
    fn keep(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Keep(KeepWorkload { uid: uid.into() })),
        }
    }
    fn del(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Del(DelWorkload { uid: uid.into() })),
        }
    }
    fn sent() -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::SnapshotSent(SnapshotSent {})),
        }
    }
    const NS1: NetnsId = NetnsId { dev: 4, ino: 1 };
    const NS2: NetnsId = NetnsId { dev: 4, ino: 2 };

    #[test]
    fn add_starts_replaces_or_does_nothing_by_netns() {
        let mut s = Session::default();
        assert_eq!(
            s.step(add("a"), Some(NS1), |_| None),
            Step::Start {
                uid: "a".into(),
                info: info()
            }
        );
        assert_eq!(s.step(add("a"), Some(NS1), |_| Some(NS1)), Step::Nothing);
        assert_eq!(
            s.step(add("a"), Some(NS2), |_| Some(NS1)),
            Step::Replace {
                uid: "a".into(),
                info: info()
            }
        );
    }

    #[test]
    fn the_snapshot_keeps_what_it_named_minus_deletions() {
        let mut s = Session::default();
        s.step(add("a"), Some(NS1), |_| None);
        s.step(keep("b"), None, |_| None);
        s.step(add("c"), Some(NS2), |_| None);
        assert_eq!(
            s.step(del("c"), None, |_| None),
            Step::Remove { uid: "c".into() }
        );
        assert!(!s.snapshot_done());
        assert_eq!(
            s.step(sent(), None, |_| None),
            Step::Reconcile {
                keep: ["a".to_string(), "b".to_string()].into()
            }
        );
        assert!(s.snapshot_done());
        // After the snapshot, Add starts pods without recording them anywhere.
        assert!(matches!(
            s.step(add("d"), Some(NS1), |_| None),
            Step::Start { .. }
        ));
    }

    #[test]
    fn protocol_violations_and_refusals() {
        let mut s = Session::default();
        let no_info = WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: "x".into(),
                workload_info: None,
            })),
        };
        assert!(matches!(
            s.step(no_info, Some(NS1), |_| None),
            Step::Violation(m) if m.contains("without workload_info")
        ));
        assert!(matches!(
            s.step(add("x"), None, |_| None),
            Step::Refuse(m) if m.contains("network namespace descriptor")
        ));
        assert!(matches!(
            s.step(WorkloadRequest { payload: None }, None, |_| None),
            Step::Refuse(_)
        ));
        s.step(sent(), None, |_| None);
        assert!(matches!(
            s.step(keep("y"), None, |_| None),
            Step::Violation(m) if m.contains("after SnapshotSent")
        ));
        assert!(matches!(
            s.step(sent(), None, |_| None),
            Step::Violation(m) if m.contains("second SnapshotSent")
        ));
    }
}
