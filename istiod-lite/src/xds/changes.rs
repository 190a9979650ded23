//! What changed between two published snapshots, computed once per
//! publication, so a client that was up to date with the previous snapshot
//! is brought up to date in time proportional to the change, not to the
//! number of resources.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::delta::{Delta, Subscription};
use super::{Held, Resource, Resources};

/// The changes that lead from the snapshot of generation `since` to the
/// snapshot carrying them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub since: u64,
    /// Only types with a change are listed.
    pub types: BTreeMap<String, TypeChanges>,
}

/// The changes of one type, each list in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeChanges {
    /// Resources added, or whose version changed.
    pub updated: Vec<(Arc<str>, Arc<Resource>)>,
    /// Names no longer present.
    pub removed: Vec<Arc<str>>,
}

impl TypeChanges {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// What changed from `previous` to `next`, per type. A resource is unchanged
/// when it is the same allocation or has the same version (the version is a
/// digest of the encoding).
pub fn changes_between(
    previous: &BTreeMap<String, Arc<Resources>>,
    next: &BTreeMap<String, Arc<Resources>>,
) -> BTreeMap<String, TypeChanges> {
    let empty = Arc::new(Resources::new());
    let mut out = BTreeMap::new();
    let type_urls = previous.keys().chain(next.keys());
    for type_url in type_urls {
        if out.contains_key(type_url) {
            continue;
        }
        let was = previous.get(type_url).unwrap_or(&empty);
        let is = next.get(type_url).unwrap_or(&empty);
        if Arc::ptr_eq(was, is) {
            continue;
        }
        let changes = type_changes(was, is);
        if !changes.is_empty() {
            out.insert(type_url.clone(), changes);
        }
    }
    out
}

/// Walks both maps in name order at once: one pass, no lookups.
fn type_changes(previous: &Resources, next: &Resources) -> TypeChanges {
    let mut changes = TypeChanges::default();
    let mut old = previous.iter().peekable();
    let mut new = next.iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                let (name, _) = old.next().expect("peeked");
                changes.removed.push(name.clone());
            }
            Ordering::Greater => {
                let (name, resource) = new.next().expect("peeked");
                changes.updated.push((name.clone(), resource.clone()));
            }
            Ordering::Equal => {
                let (_, was) = old.next().expect("peeked");
                let (name, resource) = new.next().expect("peeked");
                if !Arc::ptr_eq(was, resource) && was.version != resource.version {
                    changes.updated.push((name.clone(), resource.clone()));
                }
            }
        }
    }
    changes
}

/// The delta for a client whose `has` matched the snapshot the `changes`
/// lead from (filtered by `subscription`, which has not changed since):
/// the same delta [`super::diff`] computes, from the changes alone.
pub fn delta_from_changes(
    subscription: &Subscription,
    has: &Held,
    changes: Option<&TypeChanges>,
) -> Delta {
    let Some(changes) = changes else {
        return Delta::default();
    };
    Delta {
        resources: changes
            .updated
            .iter()
            .filter(|(name, _)| subscription.wants(name))
            .cloned()
            .collect(),
        removed: changes
            .removed
            .iter()
            .filter(|name| has.contains(name))
            .map(|name| name.to_string())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::delta::{diff, parse_version};

    fn resource(n: u64) -> Arc<Resource> {
        Arc::new(Resource {
            version: format!("{n:016x}"),
            wire: bytes::Bytes::new(),
        })
    }

    fn resources(entries: &[(&str, u64)]) -> Resources {
        entries
            .iter()
            .map(|(name, n)| (Arc::from(*name), resource(*n)))
            .collect()
    }

    fn held(current: &Resources, subscription: &Subscription) -> Held {
        Held::Names(
            current
                .iter()
                .filter(|(name, _)| subscription.wants(name))
                .map(|(name, r)| (name.clone(), parse_version(&r.version)))
                .collect(),
        )
    }

    fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            ..Default::default()
        }
    }

    fn updated_names(c: &TypeChanges) -> Vec<&str> {
        c.updated.iter().map(|(n, _)| &**n).collect()
    }

    #[test]
    fn added_changed_and_removed_names_are_found_in_one_walk() {
        let previous = resources(&[("a", 1), ("b", 1), ("c", 1), ("e", 1)]);
        let next = resources(&[("a", 1), ("b", 2), ("d", 1), ("e", 1)]);
        let c = type_changes(&previous, &next);
        assert_eq!(updated_names(&c), ["b", "d"]);
        assert_eq!(c.removed, [Arc::from("c")]);
    }

    #[test]
    fn the_same_allocation_is_unchanged_without_comparing() {
        let shared = resource(7);
        let previous: Resources = [(Arc::from("a"), shared.clone())].into();
        let next: Resources = [(Arc::from("a"), shared)].into();
        assert!(type_changes(&previous, &next).is_empty());
    }

    #[test]
    fn types_that_appear_or_vanish_are_all_added_or_all_removed() {
        let previous: BTreeMap<String, Arc<Resources>> = [
            ("gone".to_string(), Arc::new(resources(&[("x", 1)]))),
            ("same".to_string(), Arc::new(resources(&[("y", 1)]))),
        ]
        .into();
        let next: BTreeMap<String, Arc<Resources>> = [
            ("new".to_string(), Arc::new(resources(&[("z", 1)]))),
            ("same".to_string(), Arc::new(resources(&[("y", 1)]))),
        ]
        .into();
        let c = changes_between(&previous, &next);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["gone", "new"]);
        assert_eq!(c["gone"].removed, [Arc::from("x")]);
        assert_eq!(updated_names(&c["new"]), ["z"]);
    }

    /// The changes path must give exactly what the full comparison gives, for
    /// wildcard and by-name subscriptions alike.
    #[test]
    fn the_changes_path_matches_the_full_comparison() {
        let previous = resources(&[("a", 1), ("b", 1), ("c", 1), ("e", 1), ("f", 1)]);
        let next = resources(&[("a", 1), ("b", 2), ("d", 1), ("e", 1), ("g", 3)]);
        let changes = type_changes(&previous, &next);
        let by_name = Subscription {
            wildcard: false,
            names: ["b", "c", "d", "f", "missing"]
                .map(String::from)
                .into_iter()
                .collect(),
        };
        for subscription in [wildcard(), by_name, Subscription::default()] {
            let has = held(&previous, &subscription);
            let full = diff(&subscription, &has, Some(&next));
            let fast = delta_from_changes(&subscription, &has, Some(&changes));
            assert_eq!(fast, full, "{subscription:?}");
        }
        let has = held(&previous, &wildcard());
        let fast = delta_from_changes(&wildcard(), &has, Some(&changes));
        assert_eq!(
            fast.resources.iter().map(|(n, _)| &**n).collect::<Vec<_>>(),
            ["b", "d", "g"]
        );
        assert_eq!(fast.removed, ["c", "f"]);
    }

    #[test]
    fn a_type_without_changes_gives_nothing() {
        let has = held(&resources(&[("a", 1)]), &wildcard());
        assert!(delta_from_changes(&wildcard(), &has, None).is_empty());
    }
}
