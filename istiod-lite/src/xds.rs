//! The delta ADS server: snapshots of every resource the control plane can
//! send (`Snapshot`), published with debounce (`publish`), and pushed per
//! client as deltas over `DeltaAggregatedResources` (`XdsServer`).
//!
//! The decisions (what a client is missing, what it asked for, what an ACK or
//! NACK means) are plain functions over plain data in `delta` and `client`;
//! `server` only moves messages between the stream and those functions.

mod changes;
mod client;
mod codec;
mod delta;
mod held;
mod info;
mod metrics;
mod publish;
mod push_limit;
mod response;
mod server;
mod service;

pub use changes::{Changes, TypeChanges, changes_between};
pub use client::{ClientState, MAX_TYPES_PER_CLIENT, NodeInfo, RequestError, RequestOutcome};
pub use delta::{Delta, HeldVersion, Subscription, diff, parse_version};
pub use held::Held;
pub use info::{ClientInfo, TypeInfo};
pub use metrics::XdsMetrics;
pub use publish::{DEFAULT_DEBOUNCE, DEFAULT_MAX_DELAY, join, publish};
pub use push_limit::{DEFAULT_LARGE_PUSHES, LARGE_PUSH_BYTES, PERMIT_HOLD_MAX};
pub use response::PushResponse;
pub use server::{ConnectedClients, XdsServer};
pub use service::AdsService;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use mesh_api::envoy::service::discovery::v3::Resource as WireResource;
use prost::Message;

/// The resources of one type by name. Names are `Arc<str>` so that what each
/// client holds shares them with the snapshot instead of copying them.
pub type Resources = BTreeMap<Arc<str>, Arc<Resource>>;

/// Everything the server can send: per type URL, resource name to resource.
/// Built from a translation. A client up to date with the previous snapshot
/// is sent this one's `changes`; any other client is compared in full.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Shared, so that a client in sync holds its type's map instead of a
    /// copy of every name.
    pub types: BTreeMap<String, Arc<Resources>>,
    /// When the snapshot was handed to the server. `None` until the first
    /// build is published: clients get no answer before that, so a client
    /// reconnecting to a control plane that has not loaded its registry yet
    /// is not told that everything it has was removed.
    pub published_at: Option<Instant>,
    /// Names this snapshot's content among all published in the process
    /// (0 until published). Clients record the generation they match.
    pub generation: u64,
    /// What changed since the snapshot published before it, when it was
    /// published after one: clients that matched that one need only this.
    pub changes: Option<Arc<Changes>>,
}

/// One resource as sent: its version and the envoy `Resource` message (name,
/// version, body) encoded once per change of the resource, so every client's
/// response carries the same bytes instead of its own copy. The version is a
/// digest of the encoded body, so it is the same across control-plane
/// restarts and a reconnecting client's `initial_resource_versions` can be
/// trusted.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub version: String,
    /// The encoded envoy `Resource` message.
    pub wire: Bytes,
}

impl Resource {
    /// Encodes `message` as the resource `name` of `type_url`.
    pub fn encode(type_url: &str, name: &str, message: &impl prost::Message) -> Self {
        Self::from_body(
            name,
            prost_types::Any {
                type_url: type_url.to_string(),
                value: message.encode_to_vec(),
            },
        )
    }

    /// The resource `name` with an already encoded body.
    pub fn from_body(name: &str, body: prost_types::Any) -> Self {
        let version = version_of(&body.value);
        let wire = WireResource {
            version: version.clone(),
            resource: Some(body),
            name: name.to_string(),
            ..Default::default()
        }
        .encode_to_vec();
        Resource {
            version,
            wire: Bytes::from(wire),
        }
    }

    /// The body, decoded from the wire form (for debugging and tests; the
    /// push path never decodes).
    pub fn body(&self) -> prost_types::Any {
        WireResource::decode(self.wire.clone())
            .ok()
            .and_then(|r| r.resource)
            .unwrap_or_default()
    }
}

impl Snapshot {
    /// Adds (or replaces) the resource `name` of `type_url`.
    pub fn insert(
        &mut self,
        type_url: &str,
        name: impl Into<Arc<str>>,
        message: &impl prost::Message,
    ) {
        let name = name.into();
        let resource = Arc::new(Resource::encode(type_url, &name, message));
        let resources = self.types.entry(type_url.to_string()).or_default();
        Arc::make_mut(resources).insert(name, resource);
    }

    /// Declares a type URL the server knows, even while it has no resources,
    /// so subscriptions to it are not reported as unknown.
    pub fn declare(&mut self, type_url: &str) {
        self.types.entry(type_url.to_string()).or_default();
    }

    /// The resources of `type_url`, if the type is known.
    pub fn resources(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url).map(|r| &**r)
    }

    /// Whether the content (not the publish time) is the same.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.types == other.types
    }

    /// This snapshot, marked as published now, with a new generation and
    /// no known changes: every client compares it in full.
    pub fn published_now(mut self) -> Self {
        self.published_at = Some(Instant::now());
        self.generation = next_generation();
        self.changes = None;
        self
    }

    /// This snapshot, published now as the successor of `previous`, with
    /// the changes since it; `None` when `previous` was published and has
    /// the same content, so there is nothing to publish.
    pub fn published_after(self, previous: &Snapshot) -> Option<Self> {
        let types = changes_between(&previous.types, &self.types);
        let same_types = previous.types.keys().eq(self.types.keys());
        if previous.published_at.is_some() && same_types && types.is_empty() {
            return None;
        }
        let since = previous.generation;
        let mut published = self.published_now();
        if since != 0 {
            published.changes = Some(Arc::new(Changes { since, types }));
        }
        Some(published)
    }
}

/// Generations are unique in the process, so a client can never mistake a
/// snapshot for another, even one published by a different publisher.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
        let any = b.types[mesh_api::ADDRESS_TYPE_URL]["u1"].body();
        assert_eq!(any.type_url, mesh_api::ADDRESS_TYPE_URL);
        assert_eq!(
            <Address as prost::Message>::decode(any.value.as_slice()).unwrap(),
            workload("u1", "b")
        );
    }

    #[test]
    fn each_publication_carries_its_changes_since_the_one_before() {
        let t = mesh_api::ADDRESS_TYPE_URL;
        let mut a = Snapshot::default();
        a.insert(t, "u1", &workload("u1", "a"));
        let first = a.clone().published_after(&Snapshot::default()).unwrap();
        assert!(first.changes.is_none(), "nothing was published before");
        assert!(a.clone().published_after(&first).is_none(), "same content");

        let mut b = a.clone();
        b.insert(t, "u2", &workload("u2", "b"));
        let second = b.published_after(&first).unwrap();
        assert!(second.generation > first.generation);
        let changes = second.changes.as_deref().unwrap();
        assert_eq!(changes.since, first.generation);
        let updated: Vec<&str> = changes.types[t].updated.iter().map(|(n, _)| &**n).collect();
        assert_eq!(updated, ["u2"]);
        assert!(changes.types[t].removed.is_empty());

        // Declaring a type with no resources is a change of content too.
        let mut c = Snapshot::default();
        c.insert(t, "u1", &workload("u1", "a"));
        c.insert(t, "u2", &workload("u2", "b"));
        c.declare(mesh_api::AUTHORIZATION_TYPE_URL);
        let third = c.published_after(&second).unwrap();
        assert!(third.changes.as_deref().unwrap().types.is_empty());
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
