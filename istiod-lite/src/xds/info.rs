//! What `/debug/clients` shows: each connected stream and what it was sent.

use std::collections::BTreeMap;

use serde::Serialize;

use super::client::ClientState;

/// One connected client.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientInfo {
    pub stream_id: u64,
    /// The authenticated caller, when the server authenticates.
    pub caller: Option<String>,
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    pub node_metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub connected_since: u64,
    pub types: BTreeMap<String, TypeInfo>,
}

/// What one client subscribed to and was sent of one type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TypeInfo {
    pub wildcard: bool,
    /// Names subscribed by name (on-demand).
    pub names: Vec<String>,
    /// How many resources the client holds.
    pub resources: usize,
    pub last_nonce: Option<String>,
    /// `acked` when nothing is in flight, else `pending`.
    pub state: &'static str,
    pub last_nack: Option<String>,
    pub responses_sent: u64,
    pub bytes_sent: u64,
}

impl ClientInfo {
    pub(super) fn describe(
        stream_id: u64,
        caller: Option<&str>,
        connected_since: u64,
        state: &ClientState,
    ) -> Self {
        ClientInfo {
            stream_id,
            caller: caller.map(str::to_string),
            node_id: state.node.as_ref().map(|n| n.id.clone()),
            node_cluster: state.node.as_ref().map(|n| n.cluster.clone()),
            node_metadata: state
                .node
                .as_ref()
                .map(|n| n.metadata.clone())
                .unwrap_or_default(),
            connected_since,
            types: state
                .types
                .iter()
                .map(|(type_url, t)| {
                    let info = TypeInfo {
                        wildcard: t.subscription.wildcard,
                        names: t.subscription.names.iter().cloned().collect(),
                        resources: t.has.len(),
                        last_nonce: t.last_nonce.clone(),
                        state: if t.pending.is_some() {
                            "pending"
                        } else {
                            "acked"
                        },
                        last_nack: t.last_nack.clone(),
                        responses_sent: t.responses_sent,
                        bytes_sent: t.bytes_sent,
                    };
                    (type_url.clone(), info)
                })
                .collect(),
        }
    }
}
