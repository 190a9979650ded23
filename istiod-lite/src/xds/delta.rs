//! What one client should be sent of one type: a pure comparison of what it
//! asked for, what it has, and what the snapshot holds.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Held, Resource, Resources};

/// The name that turns wildcard on (subscribe) or off (unsubscribe).
pub const WILDCARD: &str = "*";

/// What a client asked for of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Resources asked for by name (on-demand lookups).
    pub names: BTreeSet<String>,
}

impl Subscription {
    /// Applies one request's subscribe and unsubscribe lists. `first` is the
    /// first request of the type on the stream, where an empty subscribe list
    /// means wildcard. Subscribe is applied before unsubscribe, so `["*"]` in
    /// both (on-demand mode) means "nothing yet".
    /// Returns the names newly subscribed by name.
    pub fn apply(
        &mut self,
        first: bool,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Vec<String> {
        if first && subscribe.is_empty() {
            self.wildcard = true;
        }
        let mut added = Vec::new();
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else if self.names.insert(name.clone()) {
                added.push(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                added.retain(|n| n != name);
            }
        }
        added
    }

    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A version as a client holds it, compactly: the 64-bit digest that a
/// version's 16 hex digits spell. `None` is a version this server could not
/// have issued; it matches no resource.
pub type HeldVersion = Option<u64>;

/// The digest a version spells, if it is one of ours (exactly 16 lowercase
/// hex digits, so equal digests mean equal version strings).
pub fn parse_version(version: &str) -> HeldVersion {
    let lowercase_hex = version.len() == 16
        && version
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lowercase_hex {
        return None;
    }
    u64::from_str_radix(version, 16).ok()
}

/// Whether a client holding `held` has `resource`'s version.
pub fn holds(held: Option<HeldVersion>, resource: &Resource) -> bool {
    match held {
        Some(Some(digest)) => parse_version(&resource.version) == Some(digest),
        _ => false,
    }
}

/// The resources to send and the names to remove.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Names are shared with the snapshot.
    pub resources: Vec<(Arc<str>, Arc<Resource>)>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// What a client that `has` (name -> version) the given resources and asked
/// for `subscription` must be sent so it matches `current` (`None`: a type
/// the server does not know, which has no resources).
pub fn diff(subscription: &Subscription, has: &Held, current: Option<&Resources>) -> Delta {
    let empty = Resources::new();
    let current = current.unwrap_or(&empty);
    let mut delta = Delta::default();
    let mut add = |name: &Arc<str>, resource: &Arc<Resource>| {
        if !holds(has.version(name), resource) {
            delta.resources.push((name.clone(), resource.clone()));
        }
    };
    if subscription.wildcard {
        for (name, resource) in current {
            add(name, resource);
        }
    } else {
        for name in &subscription.names {
            if let Some((name, resource)) = current.get_key_value(name.as_str()) {
                add(name, resource);
            }
        }
    }
    delta.removed = has
        .entries()
        .map(|(name, _)| name)
        .filter(|name| !(subscription.wants(name) && current.contains_key(*name)))
        .map(|name| name.to_string())
        .collect();
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short versions in the tests stand for 16-digit ones.
    fn full(version: &str) -> String {
        format!("{version:0>16}")
    }

    fn resource(version: &str) -> Arc<Resource> {
        Arc::new(Resource {
            version: full(version),
            wire: bytes::Bytes::new(),
        })
    }

    fn current(entries: &[(&str, &str)]) -> Resources {
        entries
            .iter()
            .map(|(n, v)| (Arc::from(*n), resource(v)))
            .collect()
    }

    fn has(entries: &[(&str, &str)]) -> Held {
        Held::Names(
            entries
                .iter()
                .map(|(n, v)| (Arc::from(*n), parse_version(&full(v))))
                .collect(),
        )
    }

    fn names(delta: &Delta) -> Vec<&str> {
        delta.resources.iter().map(|(n, _)| &**n).collect()
    }

    #[test]
    fn only_our_own_version_spelling_is_held_as_a_digest() {
        assert_eq!(parse_version("e3b0c44298fc1c14"), Some(0xe3b0c44298fc1c14));
        for foreign in ["E3B0C44298FC1C14", "e3b0c442", "", "x", "+3b0c44298fc1c14"] {
            assert_eq!(parse_version(foreign), None, "{foreign:?}");
        }
        // A version we could not have issued matches nothing, so the
        // resource is sent.
        let cur = current(&[("a", "1")]);
        let foreign = Held::Names([(Arc::from("a"), None)].into());
        assert_eq!(names(&diff(&wildcard(), &foreign, Some(&cur))), ["a"]);
    }

    fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            names: BTreeSet::new(),
        }
    }

    #[test]
    fn a_new_wildcard_client_gets_everything() {
        let cur = current(&[("a", "1"), ("b", "1")]);
        let d = diff(&wildcard(), &has(&[]), Some(&cur));
        assert_eq!(names(&d), ["a", "b"]);
        assert!(d.removed.is_empty());
    }

    #[test]
    fn only_changed_added_and_removed_names_are_sent() {
        let cur = current(&[("a", "1"), ("b", "2"), ("c", "1")]);
        let d = diff(
            &wildcard(),
            &has(&[("a", "1"), ("b", "1"), ("gone", "1")]),
            Some(&cur),
        );
        assert_eq!(names(&d), ["b", "c"]);
        assert_eq!(d.removed, ["gone"]);
    }

    #[test]
    fn an_up_to_date_client_gets_nothing() {
        let cur = current(&[("a", "1")]);
        assert!(diff(&wildcard(), &has(&[("a", "1")]), Some(&cur)).is_empty());
    }

    #[test]
    fn explicit_names_get_only_those_names() {
        let sub = Subscription {
            wildcard: false,
            names: ["b".to_string(), "missing".to_string()].into(),
        };
        let cur = current(&[("a", "1"), ("b", "1")]);
        let d = diff(&sub, &has(&[("a", "1")]), Some(&cur));
        assert_eq!(names(&d), ["b"]);
        // "a" is no longer subscribed: the client is told to drop it.
        assert_eq!(d.removed, ["a"]);
    }

    #[test]
    fn unknown_types_have_no_resources() {
        let d = diff(&wildcard(), &has(&[("x", "1")]), None);
        assert!(d.resources.is_empty());
        assert_eq!(d.removed, ["x"]);
    }

    #[test]
    fn subscribe_lists_follow_the_delta_rules() {
        let mut s = Subscription::default();
        assert!(s.apply(true, &[], &[]).is_empty());
        assert!(s.wildcard, "an empty first subscribe is wildcard");

        let mut s = Subscription::default();
        s.apply(true, &["*".into()], &["*".into()]);
        assert_eq!(s, Subscription::default(), "on-demand start: nothing");

        let added = s.apply(false, &["ns/a".into(), "ns/b".into()], &[]);
        assert_eq!(added, ["ns/a", "ns/b"]);
        assert!(
            !s.wildcard,
            "a later empty list does not switch wildcard on"
        );
        let added = s.apply(false, &["ns/a".into()], &["ns/b".into()]);
        assert!(added.is_empty(), "ns/a was already subscribed");
        assert!(s.wants("ns/a") && !s.wants("ns/b"));
    }
}
