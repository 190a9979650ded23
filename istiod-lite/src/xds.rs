//! The delta ADS server.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything the server can send: per type URL, resource name to resource.
/// Built from a translation; the server diffs successive snapshots per client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub types: BTreeMap<String, BTreeMap<String, Arc<Resource>>>,
}

/// One encoded resource and its version. The version is a digest of the
/// encoded bytes, so it is the same across control-plane restarts and a
/// reconnecting client's `initial_resource_versions` can be trusted.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub version: String,
    pub body: prost_types::Any,
}
