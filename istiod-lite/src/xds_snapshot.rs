//! Building xDS snapshots from successive translations without re-encoding
//! what did not change.
//!
//! Encoding and digesting every resource dominates a rebuild once a registry
//! holds thousands of pods, while a typical change touches one of them. The
//! builder keeps each resource's last message next to its encoded form and
//! reuses the encoded `Arc<Resource>` when the new message is equal, so the
//! snapshot is the same as one built from scratch (a resource's version is a
//! digest of its bytes, and equal messages encode to equal bytes).

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::Address;

use crate::translate::Translation;
use crate::xds::{Resource, Snapshot};

/// The messages and encoded resources of the last snapshot built.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    addresses: Encoded<Address>,
    authorizations: Encoded<Authorization>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot of `translation`, equal to `snapshot_of(&translation)`.
    /// Takes the translation by value: its messages are kept for the next
    /// build instead of being cloned.
    pub fn build(&mut self, translation: Translation) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.types.insert(
            mesh_api::ADDRESS_TYPE_URL.to_string(),
            self.addresses
                .update(mesh_api::ADDRESS_TYPE_URL, translation.addresses),
        );
        snapshot.types.insert(
            mesh_api::AUTHORIZATION_TYPE_URL.to_string(),
            self.authorizations
                .update(mesh_api::AUTHORIZATION_TYPE_URL, translation.authorizations),
        );
        snapshot
    }
}

/// Per resource name, the message last built and its encoding.
#[derive(Debug)]
struct Encoded<M> {
    by_name: BTreeMap<Arc<str>, (M, Arc<Resource>)>,
}

impl<M> Default for Encoded<M> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
        }
    }
}

impl<M: prost::Message + PartialEq> Encoded<M> {
    /// Replaces the kept messages by `current` and returns the resources of
    /// `current`, reusing the encoding of every unchanged message.
    fn update(
        &mut self,
        type_url: &str,
        current: BTreeMap<String, M>,
    ) -> BTreeMap<Arc<str>, Arc<Resource>> {
        let mut previous = std::mem::take(&mut self.by_name);
        // Both maps iterate in name order, so collecting rebuilds them in bulk.
        // Names are kept as the same `Arc<str>` across builds, so clients'
        // bookkeeping shares them too.
        let kept: BTreeMap<Arc<str>, (M, Arc<Resource>)> = current
            .into_iter()
            .map(
                |(name, message)| match previous.remove_entry(name.as_str()) {
                    Some((key, (old, resource))) if old == message => (key, (message, resource)),
                    Some((key, _)) => {
                        let resource = Arc::new(Resource::encode(type_url, &message));
                        (key, (message, resource))
                    }
                    None => {
                        let resource = Arc::new(Resource::encode(type_url, &message));
                        (Arc::from(name), (message, resource))
                    }
                },
            )
            .collect();
        let resources = kept
            .iter()
            .map(|(name, (_, resource))| (name.clone(), resource.clone()))
            .collect();
        self.by_name = kept;
        resources
    }
}

#[cfg(test)]
mod tests;
