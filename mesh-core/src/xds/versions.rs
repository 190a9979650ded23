//! Bookkeeping of what was applied, per type: resource name -> version, sent
//! as `initial_resource_versions` on reconnect (spec 3.3), and the text of a
//! NACK.

use std::collections::{BTreeMap, HashSet};

use super::{Rejection, Update};

/// Names and versions of the applied resources of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeVersions {
    applied: BTreeMap<String, String>,
}

impl TypeVersions {
    /// Records the outcome of applying `update`: removals are forgotten,
    /// rejected resources are forgotten too (the server must send them again
    /// after a reconnect), the rest are recorded at their new version.
    pub fn record(&mut self, update: &Update, rejections: &[Rejection]) {
        for name in &update.removed {
            self.applied.remove(name);
        }
        let rejected: HashSet<&str> = rejections.iter().map(|r| r.name.as_str()).collect();
        for r in &update.resources {
            if rejected.contains(r.name.as_str()) {
                self.applied.remove(&r.name);
            } else {
                self.applied.insert(r.name.clone(), r.version.clone());
            }
        }
    }

    /// The `initial_resource_versions` of a new stream (a map of whichever
    /// kind the generated message uses).
    pub fn initial<M: FromIterator<(String, String)>>(&self) -> M {
        self.applied
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// `"<name>: <reason>; <name>: <reason>"` (spec 3.3), or `None` for an ACK.
pub fn nack_message(rejections: &[Rejection]) -> Option<String> {
    if rejections.is_empty() {
        return None;
    }
    Some(
        rejections
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::super::Resource;
    use std::collections::HashMap;

    use super::*;

    fn res(name: &str, version: &str) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            body: prost_types::Any::default(),
        }
    }

    #[test]
    fn nack_lists_every_rejection_in_order() {
        assert_eq!(nack_message(&[]), None);
        assert_eq!(
            nack_message(&[
                Rejection::new("ns/a", "bad address length 5"),
                Rejection::new("uid-2", "unknown tunnel protocol 9"),
            ])
            .unwrap(),
            "ns/a: bad address length 5; uid-2: unknown tunnel protocol 9"
        );
    }

    #[test]
    fn initial_versions_exclude_rejected_and_removed_names() {
        let mut v = TypeVersions::default();
        v.record(
            &Update {
                resources: vec![res("a", "1"), res("b", "1"), res("c", "1")],
                removed: vec![],
            },
            &[Rejection::new("c", "bad")],
        );
        assert_eq!(
            v.initial::<HashMap<_, _>>(),
            HashMap::from([("a".into(), "1".into()), ("b".into(), "1".into())])
        );
        // A later rejection of an applied name drops it; a removal drops it; an
        // update moves the version.
        v.record(
            &Update {
                resources: vec![res("a", "2"), res("b", "2")],
                removed: vec!["x".into()],
            },
            &[Rejection::new("b", "bad")],
        );
        v.record(
            &Update {
                resources: vec![],
                removed: vec!["a".into()],
            },
            &[],
        );
        assert!(v.initial::<Vec<_>>().is_empty());
        v.record(
            &Update {
                resources: vec![res("d", "7")],
                removed: vec![],
            },
            &[],
        );
        assert_eq!(
            v.initial::<HashMap<_, _>>(),
            HashMap::from([("d".into(), "7".into())])
        );
    }
}
