//! What a client holds of one type: name -> version.
//!
//! A wildcard client in sync holds exactly one snapshot's resources of the
//! type, so it shares that snapshot's map instead of keeping its own copy of
//! every name (with 100 clients and 12,000 resources, tens of MiB). Any other
//! state is kept name by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Resources;
use super::delta::{HeldVersion, parse_version};

#[derive(Clone, Debug)]
pub enum Held {
    /// Exactly these resources, with their versions.
    Snapshot(Arc<Resources>),
    /// Name by name.
    Names(BTreeMap<Arc<str>, HeldVersion>),
}

impl Default for Held {
    fn default() -> Self {
        Held::Names(BTreeMap::new())
    }
}

impl Held {
    pub fn len(&self) -> usize {
        match self {
            Held::Snapshot(r) => r.len(),
            Held::Names(n) => n.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Held::Snapshot(r) => r.contains_key(name),
            Held::Names(n) => n.contains_key(name),
        }
    }

    /// The version held of `name`, if the name is held.
    pub fn version(&self, name: &str) -> Option<HeldVersion> {
        match self {
            Held::Snapshot(r) => r.get(name).map(|r| parse_version(&r.version)),
            Held::Names(n) => n.get(name).copied(),
        }
    }

    /// Every name held, in order, with its version.
    pub fn entries(&self) -> Box<dyn Iterator<Item = (&Arc<str>, HeldVersion)> + '_> {
        match self {
            Held::Snapshot(r) => Box::new(r.iter().map(|(n, r)| (n, parse_version(&r.version)))),
            Held::Names(n) => Box::new(n.iter().map(|(n, v)| (n, *v))),
        }
    }

    pub fn insert(&mut self, name: Arc<str>, version: HeldVersion) {
        self.names_mut().insert(name, version);
    }

    pub fn remove(&mut self, name: &str) {
        if self.contains(name) {
            self.names_mut().remove(name);
        }
    }

    /// Name by name, copied out of a shared snapshot first.
    fn names_mut(&mut self) -> &mut BTreeMap<Arc<str>, HeldVersion> {
        if let Held::Snapshot(r) = self {
            let names = r
                .iter()
                .map(|(n, r)| (n.clone(), parse_version(&r.version)))
                .collect();
            *self = Held::Names(names);
        }
        match self {
            Held::Names(n) => n,
            Held::Snapshot(_) => unreachable!("copied out above"),
        }
    }
}

/// Equal when the same names are held at the same versions, however kept.
impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        if let (Held::Snapshot(a), Held::Snapshot(b)) = (self, other)
            && Arc::ptr_eq(a, b)
        {
            return true;
        }
        self.len() == other.len() && self.entries().eq(other.entries())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::Resource;

    fn resources() -> Arc<Resources> {
        let mut r = Resources::new();
        for (name, body) in [("a", "1"), ("b", "2")] {
            r.insert(
                Arc::from(name),
                Arc::new(Resource::encode("t", name, &body.to_string())),
            );
        }
        Arc::new(r)
    }

    #[test]
    fn a_shared_snapshot_reads_like_the_names_it_holds() {
        let shared = Held::Snapshot(resources());
        let names = Held::Names(
            resources()
                .iter()
                .map(|(n, r)| (n.clone(), parse_version(&r.version)))
                .collect(),
        );
        assert_eq!(shared, names);
        assert_eq!(shared.len(), 2);
        assert!(shared.contains("a") && !shared.contains("c"));
        assert_eq!(shared.version("b"), names.version("b"));
        assert_eq!(shared.version("c"), None);
    }

    #[test]
    fn editing_a_shared_snapshot_copies_it_out() {
        let r = resources();
        let mut held = Held::Snapshot(r.clone());
        held.remove("missing");
        assert!(matches!(held, Held::Snapshot(_)), "nothing to remove");
        held.remove("a");
        held.insert(Arc::from("c"), Some(7));
        assert!(matches!(held, Held::Names(_)));
        let names: Vec<&str> = held.entries().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(r.len(), 2, "the snapshot is untouched");
    }
}
