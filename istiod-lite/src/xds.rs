//! The delta ADS server: snapshots of every resource the control plane can
//! send (`Snapshot`), published with debounce (`publish`), and pushed per
//! client as deltas over `DeltaAggregatedResources` (`XdsServer`).
//!
//! The decisions (what a client is missing, what it asked for, what an ACK or
//! NACK means) are plain functions over plain data in `delta` and `client`;
//! `server` only moves messages between the stream and those functions.

mod client;
mod delta;
mod info;
mod metrics;
mod publish;
mod server;
mod service;

pub use client::{ClientState, MAX_TYPES_PER_CLIENT, NodeInfo, RequestError, RequestOutcome};
pub use delta::{Delta, Subscription, diff};
pub use info::{ClientInfo, TypeInfo};
pub use metrics::XdsMetrics;
pub use publish::{DEFAULT_DEBOUNCE, DEFAULT_MAX_DELAY, publish};
pub use server::{ConnectedClients, XdsServer};
pub use service::AdsService;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Everything the server can send: per type URL, resource name to resource.
/// Built from a translation; the server diffs successive snapshots per client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub types: BTreeMap<String, BTreeMap<String, Arc<Resource>>>,
    /// When the snapshot was handed to the server. `None` until the first
    /// build is published: clients get no answer before that, so a client
    /// reconnecting to a control plane that has not loaded its registry yet
    /// is not told that everything it has was removed.
    pub published_at: Option<Instant>,
}

/// One encoded resource and its version. The version is a digest of the
/// encoded bytes, so it is the same across control-plane restarts and a
/// reconnecting client's `initial_resource_versions` can be trusted.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub version: String,
    pub body: prost_types::Any,
}

impl Resource {
    /// Encodes `message` as a resource of `type_url`.
    pub fn encode(type_url: &str, message: &impl prost::Message) -> Self {
        let value = message.encode_to_vec();
        Resource {
            version: version_of(&value),
            body: prost_types::Any {
                type_url: type_url.to_string(),
                value,
            },
        }
    }
}

impl Snapshot {
    /// Adds (or replaces) the resource `name` of `type_url`.
    pub fn insert(
        &mut self,
        type_url: &str,
        name: impl Into<String>,
        message: &impl prost::Message,
    ) {
        self.types
            .entry(type_url.to_string())
            .or_default()
            .insert(name.into(), Arc::new(Resource::encode(type_url, message)));
    }

    /// Declares a type URL the server knows, even while it has no resources,
    /// so subscriptions to it are not reported as unknown.
    pub fn declare(&mut self, type_url: &str) {
        self.types.entry(type_url.to_string()).or_default();
    }

    /// The resources of `type_url`, if the type is known.
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.types.get(type_url)
    }

    /// Whether the content (not the publish time) is the same.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.types == other.types
    }

    /// This snapshot, marked as published now.
    pub fn published_now(mut self) -> Self {
        self.published_at = Some(Instant::now());
        self
    }
}

/// 16 hex characters of the SHA-256 of the encoded bytes: stable across
/// builds and releases, unlike `std`'s hasher.
fn version_of(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::istio::workload::{Address, Workload, address};

    fn workload(uid: &str, name: &str) -> Address {
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: uid.into(),
                name: name.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn versions_are_stable_digests_of_the_encoding() {
        let mut a = Snapshot::default();
        a.insert(mesh_api::ADDRESS_TYPE_URL, "u1", &workload("u1", "a"));
        let mut b = Snapshot::default();
        b.insert(mesh_api::ADDRESS_TYPE_URL, "u1", &workload("u1", "a"));
        let va = &a.types[mesh_api::ADDRESS_TYPE_URL]["u1"].version;
        assert_eq!(va.len(), 16);
        assert_eq!(va, &b.types[mesh_api::ADDRESS_TYPE_URL]["u1"].version);
        // The SHA-256 of the empty string starts with e3b0c442 98fc1c14.
        assert_eq!(version_of(b""), "e3b0c44298fc1c14");

        b.insert(mesh_api::ADDRESS_TYPE_URL, "u1", &workload("u1", "b"));
        assert_ne!(va, &b.types[mesh_api::ADDRESS_TYPE_URL]["u1"].version);
        let any = &b.types[mesh_api::ADDRESS_TYPE_URL]["u1"].body;
        assert_eq!(any.type_url, mesh_api::ADDRESS_TYPE_URL);
        assert_eq!(
            <Address as prost::Message>::decode(any.value.as_slice()).unwrap(),
            workload("u1", "b")
        );
    }

    #[test]
    fn content_comparison_ignores_the_publish_time() {
        let mut a = Snapshot::default();
        a.declare(mesh_api::AUTHORIZATION_TYPE_URL);
        let b = a.clone().published_now();
        assert!(a.same_content(&b));
        assert_ne!(a, b);
    }
}
