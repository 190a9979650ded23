//! Building xDS snapshots from successive translations without re-encoding
//! what did not change.
//!
//! Encoding and digesting every resource dominates a rebuild once a registry
//! holds thousands of pods, while a typical change touches one of them. The
//! builder keeps the encoded resources of the last snapshot; after an
//! incremental translation it encodes only the keys the translation says it
//! touched, and an encoding with an unchanged version keeps the previous
//! `Arc<Resource>`, so the snapshot is the same as one built from scratch (a
//! resource's version is a digest of its bytes) and unchanged resources stay
//! the same allocation, shared with every client.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::translate::{Touched, Translation};
use crate::xds::{Resource, Resources, Snapshot};

/// The encoded resources of the last snapshot built. A type without a
/// change keeps its map, shared with the snapshots published since.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    addresses: Arc<Resources>,
    authorizations: Arc<Resources>,
    waypoints: Arc<Resources>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot of `translation`, equal to `snapshot_of(translation)`.
    pub fn build(&mut self, translation: &Translation) -> Snapshot {
        self.update(translation, &Touched::All)
    }

    /// The snapshot of `translation`, given that only the `touched`
    /// resources may differ from the translation of the last build.
    pub fn update(&mut self, translation: &Translation, touched: &Touched) -> Snapshot {
        match touched {
            Touched::All => {
                rebuild(
                    &mut self.addresses,
                    mesh_api::ADDRESS_TYPE_URL,
                    &translation.addresses,
                );
                rebuild(
                    &mut self.authorizations,
                    mesh_api::AUTHORIZATION_TYPE_URL,
                    &translation.authorizations,
                );
                rebuild(
                    &mut self.waypoints,
                    mesh_api::WAYPOINT_TYPE_URL,
                    &translation.waypoints,
                );
            }
            Touched::Keys {
                addresses,
                authorizations,
                waypoints,
            } => {
                patch(
                    &mut self.addresses,
                    mesh_api::ADDRESS_TYPE_URL,
                    &translation.addresses,
                    addresses,
                );
                patch(
                    &mut self.authorizations,
                    mesh_api::AUTHORIZATION_TYPE_URL,
                    &translation.authorizations,
                    authorizations,
                );
                patch(
                    &mut self.waypoints,
                    mesh_api::WAYPOINT_TYPE_URL,
                    &translation.waypoints,
                    waypoints,
                );
            }
        }
        let mut snapshot = Snapshot::default();
        snapshot.types.insert(
            mesh_api::ADDRESS_TYPE_URL.to_string(),
            self.addresses.clone(),
        );
        snapshot.types.insert(
            mesh_api::AUTHORIZATION_TYPE_URL.to_string(),
            self.authorizations.clone(),
        );
        snapshot.types.insert(
            mesh_api::WAYPOINT_TYPE_URL.to_string(),
            self.waypoints.clone(),
        );
        snapshot
    }
}

/// Replaces `kept` by the encoding of every message of `current`.
fn rebuild<M: prost::Message>(
    kept: &mut Arc<Resources>,
    type_url: &str,
    current: &BTreeMap<String, M>,
) {
    let mut previous = Arc::unwrap_or_clone(std::mem::take(kept));
    // Both maps iterate in name order, so collecting builds the map in bulk.
    let rebuilt: Resources = current
        .iter()
        .map(|(name, message)| {
            let fresh = Resource::encode(type_url, name, message);
            match previous.remove_entry(name.as_str()) {
                // Names and unchanged resources stay shared with what
                // clients hold.
                Some((key, old)) if old.version == fresh.version => (key, old),
                Some((key, _)) => (key, Arc::new(fresh)),
                None => (Arc::from(name.as_str()), Arc::new(fresh)),
            }
        })
        .collect();
    *kept = Arc::new(rebuilt);
}

/// Encodes again only the `touched` names of `current`.
fn patch<M: prost::Message>(
    kept: &mut Arc<Resources>,
    type_url: &str,
    current: &BTreeMap<String, M>,
    touched: &BTreeSet<String>,
) {
    if touched.is_empty() {
        return;
    }
    // A copy of the map (not of the resources) when a snapshot shares it.
    let kept = Arc::make_mut(kept);
    for name in touched {
        let Some(message) = current.get(name) else {
            kept.remove(name.as_str());
            continue;
        };
        let fresh = Resource::encode(type_url, name, message);
        match kept.get_mut(name.as_str()) {
            Some(old) if old.version == fresh.version => {}
            Some(old) => *old = Arc::new(fresh),
            None => {
                kept.insert(Arc::from(name.as_str()), Arc::new(fresh));
            }
        }
    }
}

#[cfg(test)]
mod tests;
