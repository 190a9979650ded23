//! One client stream's state as plain data: what it subscribed to per type,
//! what it was sent, and which response it has not acknowledged yet. The
//! server feeds requests and snapshots in and sends the responses out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::changes::delta_from_changes;
use super::delta::{Delta, Subscription, diff, parse_version};
use super::response::{PushResponse, SentResource};
use super::{Held, Snapshot};

/// More types than any client of workload xDS uses; a bound on the state a
/// stream can make the server hold.
pub const MAX_TYPES_PER_CLIENT: usize = 16;

/// A request the server refuses; the stream ends with this error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request has no type_url")]
    MissingTypeUrl,
    #[error("subscribed to more than {MAX_TYPES_PER_CLIENT} types; refusing type_url {0:?}")]
    TooManyTypes(String),
}

/// What a request meant.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestOutcome {
    /// The first request of this type on the stream.
    Opened,
    /// The outstanding response was accepted; it carried a snapshot
    /// published at this instant.
    Acked { published_at: Option<Instant> },
    /// The outstanding response was rejected with this text.
    Nacked { message: String },
    /// A nonce that is not the outstanding one: an answer to a response
    /// already superseded, nothing to do.
    StaleNonce,
    /// Only the subscription changed.
    SubscriptionChanged,
}

/// The response of a type that has not been answered yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub nonce: String,
    pub published_at: Option<Instant>,
}

/// What one client has of one type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeState {
    pub subscription: Subscription,
    /// Name -> version of what the client has (was sent, or said it had).
    /// Names sent are shared with the snapshot they came from; a wildcard
    /// client in sync shares the snapshot's whole map.
    pub has: Held,
    /// The generation of the snapshot `has` matches (filtered by the
    /// subscription), when known: set by a response, or by finding nothing
    /// to send; cleared by a subscription change. A client one generation
    /// behind is brought up to date from that snapshot's changes alone.
    pub synced: Option<u64>,
    /// At most one response per type is in flight; changes wait behind it
    /// and are sent together once it is answered.
    pub pending: Option<Pending>,
    /// Whether the type has had its first response.
    pub answered: bool,
    /// Names just subscribed by name: answered even when they do not exist
    /// (as removed), so an on-demand lookup is not left waiting.
    pub unanswered_names: BTreeSet<String>,
    pub last_nonce: Option<String>,
    pub last_nack: Option<String>,
    pub responses_sent: u64,
    pub bytes_sent: u64,
}

/// The node a client described in its first request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub metadata: BTreeMap<String, String>,
}

/// One stream's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientState {
    pub node: Option<NodeInfo>,
    pub types: BTreeMap<String, TypeState>,
}

impl ClientState {
    /// Applies one request.
    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
    ) -> Result<RequestOutcome, RequestError> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            return Err(RequestError::MissingTypeUrl);
        }
        if self.node.is_none() {
            self.node = request.node.as_ref().map(node_info);
        }
        let first = !self.types.contains_key(type_url);
        if first && self.types.len() >= MAX_TYPES_PER_CLIENT {
            return Err(RequestError::TooManyTypes(type_url.to_string()));
        }
        let state = self.types.entry(type_url.to_string()).or_default();

        let added = state.subscription.apply(
            first,
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
        );
        state.unanswered_names.extend(added);
        if !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty()
        {
            state.synced = None;
        }
        for name in &request.resource_names_unsubscribe {
            // The client forgets what it unsubscribed from; if wildcard still
            // covers it, the next diff sends it again.
            state.has.remove(name);
            state.unanswered_names.remove(name);
        }
        if first {
            for (name, version) in &request.initial_resource_versions {
                if !state.subscription.wildcard {
                    state.subscription.names.insert(name.clone());
                }
                // An empty version is a name the client asked for and never got.
                if version.is_empty() {
                    state.unanswered_names.insert(name.clone());
                } else {
                    state
                        .has
                        .insert(Arc::from(name.as_str()), parse_version(version));
                }
            }
            return Ok(RequestOutcome::Opened);
        }

        if request.response_nonce.is_empty() {
            return Ok(RequestOutcome::SubscriptionChanged);
        }
        match &state.pending {
            Some(p) if p.nonce == request.response_nonce => {
                let pending = state.pending.take().expect("matched above");
                match &request.error_detail {
                    // The rejected resources count as sent: resending the same
                    // versions would be rejected again, in a loop. The next
                    // change of a resource sends it again.
                    Some(status) => {
                        state.last_nack = Some(status.message.clone());
                        Ok(RequestOutcome::Nacked {
                            message: status.message.clone(),
                        })
                    }
                    None => Ok(RequestOutcome::Acked {
                        published_at: pending.published_at,
                    }),
                }
            }
            _ => Ok(RequestOutcome::StaleNonce),
        }
    }

    /// The responses due against `snapshot`: for every type without a
    /// response in flight, what changed since the client's last one. Nothing
    /// before the first snapshot is published; never an empty response,
    /// except a type's first, which the client waits for to become ready.
    pub fn responses(
        &mut self,
        snapshot: &Snapshot,
        mut next_nonce: impl FnMut() -> String,
    ) -> Vec<PushResponse> {
        if snapshot.published_at.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (type_url, state) in &mut self.types {
            if state.pending.is_some() {
                continue;
            }
            let (delta, path) = state.delta_to(type_url, snapshot);
            // Generation 0 is a snapshot never published: no identity.
            state.synced = (snapshot.generation != 0).then_some(snapshot.generation);
            match path {
                // A wildcard client that held all of the previous snapshot
                // holds all of this one once the changes are applied.
                Path::Changes
                    if state.subscription.wildcard && matches!(state.has, Held::Snapshot(_)) =>
                {
                    state.has = held_of(&state.subscription, snapshot.types.get(type_url));
                }
                Path::Changes => {
                    for (name, resource) in &delta.resources {
                        state
                            .has
                            .insert(name.clone(), parse_version(&resource.version));
                    }
                    for name in &delta.removed {
                        state.has.remove(name);
                    }
                }
                // After a full response the client holds exactly what it
                // wants of the snapshot; rebuilding shares every name with
                // the snapshot, including names a reconnecting client sent.
                Path::Full => {
                    state.has = held_of(&state.subscription, snapshot.types.get(type_url));
                }
            }
            if delta.is_empty() && state.answered {
                continue;
            }
            let nonce = next_nonce();
            let response = PushResponse {
                resources: delta
                    .resources
                    .into_iter()
                    .map(|(name, resource)| SentResource { name, resource })
                    .collect(),
                type_url: type_url.clone(),
                nonce: nonce.clone(),
                removed_resources: delta.removed,
            };
            state.answered = true;
            state.pending = Some(Pending {
                nonce: nonce.clone(),
                published_at: snapshot.published_at,
            });
            state.last_nonce = Some(nonce);
            state.responses_sent += 1;
            state.bytes_sent += response.encoded_len() as u64;
            out.push(response);
        }
        out
    }
}

/// How a delta was found, which says how to update what the client holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// From the changes since the generation the client matched: apply it.
    Changes,
    /// From a full comparison.
    Full,
}

/// What a client subscribed as `subscription` holds once it matches
/// `current`: all of it shared for a wildcard client, else names shared
/// with the snapshot.
fn held_of(subscription: &Subscription, current: Option<&Arc<super::Resources>>) -> Held {
    let Some(current) = current else {
        return Held::default();
    };
    if subscription.wildcard {
        return Held::Snapshot(current.clone());
    }
    Held::Names(
        subscription
            .names
            .iter()
            .filter_map(|name| current.get_key_value(name.as_str()))
            .map(|(name, resource)| (name.clone(), parse_version(&resource.version)))
            .collect(),
    )
}

impl TypeState {
    /// What this client must be sent of `type_url` to match `snapshot`.
    /// Up to date: nothing. One generation behind with nothing asked for
    /// since: the snapshot's shared changes, filtered. Otherwise a full
    /// comparison, which gives the same answer in any state.
    fn delta_to(&mut self, type_url: &str, snapshot: &Snapshot) -> (Delta, Path) {
        if self.unanswered_names.is_empty() && self.synced.is_some() {
            if self.synced == Some(snapshot.generation) {
                return (Delta::default(), Path::Changes);
            }
            if let Some(changes) = snapshot.changes.as_deref()
                && self.synced == Some(changes.since)
            {
                let delta =
                    delta_from_changes(&self.subscription, &self.has, changes.types.get(type_url));
                return (delta, Path::Changes);
            }
        }
        (self.full_delta(type_url, snapshot), Path::Full)
    }

    fn full_delta(&mut self, type_url: &str, snapshot: &Snapshot) -> Delta {
        let current = snapshot.resources(type_url);
        let mut delta = diff(&self.subscription, &self.has, current);
        for name in std::mem::take(&mut self.unanswered_names) {
            let exists = current.is_some_and(|c| c.contains_key(name.as_str()));
            if !exists && !self.has.contains(&name) {
                delta.removed.push(name);
            }
        }
        delta
    }
}

fn node_info(node: &mesh_api::envoy::config::core::v3::Node) -> NodeInfo {
    use prost_types::value::Kind;
    let metadata = node
        .metadata
        .iter()
        .flat_map(|s| s.fields.iter())
        .map(|(k, v)| {
            let value = match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                _ => "<structured>".to_string(),
            };
            (k.clone(), value)
        })
        .collect();
    NodeInfo {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::google::rpc::Status as RpcStatus;

    const T: &str = "type.googleapis.com/test.Thing";

    fn snapshot(entries: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        s.declare(T);
        for (name, text) in entries {
            s.insert(T, *name, &text.to_string());
        }
        s.published_now()
    }

    fn request(f: impl FnOnce(&mut DeltaDiscoveryRequest)) -> DeltaDiscoveryRequest {
        let mut r = DeltaDiscoveryRequest {
            type_url: T.into(),
            ..Default::default()
        };
        f(&mut r);
        r
    }

    fn nonces() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("n{n}")
        }
    }

    fn names(r: &PushResponse) -> Vec<&str> {
        r.resources.iter().map(|r| &*r.name).collect()
    }

    #[test]
    fn one_response_in_flight_and_changes_coalesce_behind_it() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        assert_eq!(c.on_request(&request(|_| {})), Ok(RequestOutcome::Opened));
        let first = c.responses(&snapshot(&[("a", "1")]), &mut nonce);
        assert_eq!(first.len(), 1);
        assert_eq!(names(&first[0]), ["a"]);

        // Two changes while unacknowledged: nothing is sent.
        assert!(c.responses(&snapshot(&[("a", "2")]), &mut nonce).is_empty());
        let latest = snapshot(&[("b", "1")]);
        assert!(c.responses(&latest, &mut nonce).is_empty());

        let ack = c
            .on_request(&request(|r| r.response_nonce = "n1".into()))
            .unwrap();
        assert!(matches!(
            ack,
            RequestOutcome::Acked {
                published_at: Some(_)
            }
        ));
        let next = c.responses(&latest, &mut nonce);
        assert_eq!(next.len(), 1);
        assert_eq!(names(&next[0]), ["b"]);
        assert_eq!(next[0].removed_resources, ["a"]);
        assert_eq!(next[0].nonce, "n2");
    }

    #[test]
    fn a_nack_is_recorded_and_the_same_versions_are_not_resent() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|_| {})).unwrap();
        let snap = snapshot(&[("a", "bad")]);
        assert_eq!(c.responses(&snap, &mut nonce).len(), 1);
        let nack = c
            .on_request(&request(|r| {
                r.response_nonce = "n1".into();
                r.error_detail = Some(RpcStatus {
                    code: 3,
                    message: "a: bad address".into(),
                    details: vec![],
                });
            }))
            .unwrap();
        assert_eq!(
            nack,
            RequestOutcome::Nacked {
                message: "a: bad address".into()
            }
        );
        assert!(c.responses(&snap, &mut nonce).is_empty());
        assert_eq!(c.types[T].last_nack.as_deref(), Some("a: bad address"));
        // A fix is sent.
        assert_eq!(
            c.responses(&snapshot(&[("a", "good")]), &mut nonce).len(),
            1
        );
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|_| {})).unwrap();
        c.responses(&snapshot(&[("a", "1")]), &mut nonce);
        let stale = c.on_request(&request(|r| r.response_nonce = "old".into()));
        assert_eq!(stale, Ok(RequestOutcome::StaleNonce));
        assert!(c.types[T].pending.is_some());
    }

    #[test]
    fn the_first_response_is_sent_even_when_empty_and_later_empty_ones_never() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|_| {})).unwrap();
        let empty = snapshot(&[]);
        let r = c.responses(&empty, &mut nonce);
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty() && r[0].removed_resources.is_empty());
        c.on_request(&request(|r| r.response_nonce = "n1".into()))
            .unwrap();
        assert!(c.responses(&empty, &mut nonce).is_empty());
    }

    #[test]
    fn types_the_server_does_not_know_are_answered_empty() {
        let mut c = ClientState::default();
        c.on_request(&request(|r| {
            r.type_url = "type.googleapis.com/some.Other".into()
        }))
        .unwrap();
        let r = c.responses(&snapshot(&[("a", "1")]), nonces());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].type_url, "type.googleapis.com/some.Other");
        assert!(r[0].resources.is_empty());
    }

    #[test]
    fn the_node_of_the_first_request_is_kept() {
        use prost_types::{Struct, Value, value::Kind};
        let mut c = ClientState::default();
        let node = |id: &str| mesh_api::envoy::config::core::v3::Node {
            id: id.into(),
            cluster: "c".into(),
            metadata: Some(Struct {
                fields: [(
                    "NODE_NAME".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("node-1".into())),
                    },
                )]
                .into(),
            }),
        };
        c.on_request(&request(|r| r.node = Some(node("first"))))
            .unwrap();
        c.on_request(&request(|r| {
            r.type_url = "other".into();
            r.node = Some(node("second"));
        }))
        .unwrap();
        let n = c.node.as_ref().unwrap();
        assert_eq!(n.id, "first");
        assert_eq!(n.metadata["NODE_NAME"], "node-1");
    }

    #[test]
    fn nothing_is_sent_before_a_snapshot_is_published() {
        let mut c = ClientState::default();
        c.on_request(&request(|_| {})).unwrap();
        assert!(c.responses(&Snapshot::default(), nonces()).is_empty());
    }

    #[test]
    fn initial_versions_limit_the_first_response_to_the_difference() {
        let snap = snapshot(&[("same", "1"), ("changed", "2"), ("new", "1")]);
        let same_version = snap.types[T]["same"].version.clone();
        let mut c = ClientState::default();
        c.on_request(&request(|r| {
            r.initial_resource_versions = [
                ("same".to_string(), same_version),
                ("changed".to_string(), "old".to_string()),
                ("gone".to_string(), "x".to_string()),
            ]
            .into();
        }))
        .unwrap();
        let r = c.responses(&snap, nonces());
        assert_eq!(names(&r[0]), ["changed", "new"]);
        assert_eq!(r[0].removed_resources, ["gone"]);
    }

    #[test]
    fn on_demand_names_are_answered_even_when_missing() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|r| {
            r.resource_names_subscribe = vec!["*".into()];
            r.resource_names_unsubscribe = vec!["*".into()];
        }))
        .unwrap();
        let snap = snapshot(&[("ns/a", "1"), ("ns/b", "1")]);
        let r = c.responses(&snap, &mut nonce);
        assert!(r[0].resources.is_empty(), "subscribed to nothing yet");
        c.on_request(&request(|r| {
            r.response_nonce = "n1".into();
            r.resource_names_subscribe = vec!["ns/a".into(), "ns/missing".into()];
        }))
        .unwrap();
        let r = c.responses(&snap, &mut nonce);
        assert_eq!(names(&r[0]), ["ns/a"]);
        assert_eq!(r[0].removed_resources, ["ns/missing"]);
    }

    fn content(entries: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        s.declare(T);
        for (name, text) in entries {
            s.insert(T, *name, &text.to_string());
        }
        s
    }

    /// Publishes `entries` after `previous`, as the publisher does.
    fn next(previous: &Snapshot, entries: &[(&str, &str)]) -> Snapshot {
        content(entries)
            .published_after(previous)
            .expect("the content differs")
    }

    fn ack(c: &mut ClientState, nonce: &str) {
        let outcome = c.on_request(&request(|r| r.response_nonce = nonce.into()));
        assert!(matches!(outcome, Ok(RequestOutcome::Acked { .. })));
    }

    #[test]
    fn a_client_one_generation_behind_is_sent_the_published_changes() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|_| {})).unwrap();
        let first = next(&Snapshot::default(), &[("a", "1"), ("b", "1")]);
        c.responses(&first, &mut nonce);
        ack(&mut c, "n1");
        assert_eq!(c.types[T].synced, Some(first.generation));
        assert!(c.responses(&first, &mut nonce).is_empty(), "up to date");

        // The changes name only "b"; a full comparison would also find "a".
        // Sending only "b" shows the changes were used, not a comparison.
        let mut second = next(&first, &[("a", "1"), ("b", "2")]);
        Arc::make_mut(second.types.get_mut(T).unwrap()).insert(
            Arc::from("a"),
            Arc::new(super::super::Resource::encode(T, "a", &"3".to_string())),
        );
        let r = c.responses(&second, &mut nonce);
        assert_eq!(names(&r[0]), ["b"]);
        assert_eq!(c.types[T].synced, Some(second.generation));
    }

    #[test]
    fn the_changes_path_and_the_full_comparison_send_the_same() {
        let steps: [&[(&str, &str)]; 5] = [
            &[("a", "1"), ("b", "1"), ("c", "1")],
            &[("a", "1"), ("b", "2"), ("c", "1"), ("d", "1")],
            &[("b", "2"), ("d", "2")],
            &[("a", "9"), ("b", "2"), ("d", "2"), ("e", "1")],
            &[],
        ];
        let subscriptions: [fn(&mut DeltaDiscoveryRequest); 2] = [
            |_| {},
            |r| r.resource_names_subscribe = vec!["b".into(), "d".into(), "zz".into()],
        ];
        for subscribe in subscriptions {
            // `fast` gets snapshots carrying their changes; `full` gets the
            // same content with none, so it always compares in full.
            let (mut fast, mut full) = (ClientState::default(), ClientState::default());
            let (mut fast_nonce, mut full_nonce) = (nonces(), nonces());
            fast.on_request(&request(subscribe)).unwrap();
            full.on_request(&request(subscribe)).unwrap();
            let mut previous = Snapshot::default();
            for (i, entries) in steps.iter().enumerate() {
                let published = next(&previous, entries);
                let unchanged = content(entries).published_now();
                assert!(unchanged.changes.is_none());
                let a = fast.responses(&published, &mut fast_nonce);
                let b = full.responses(&unchanged, &mut full_nonce);
                assert_eq!(a, b, "step {i}");
                assert_eq!(fast.types[T].has, full.types[T].has, "step {i}");
                for r in &a {
                    ack(&mut fast, &r.nonce);
                    ack(&mut full, &r.nonce);
                }
                previous = published;
            }
        }
    }

    #[test]
    fn a_client_further_behind_or_resubscribed_is_compared_in_full() {
        let mut c = ClientState::default();
        let mut nonce = nonces();
        c.on_request(&request(|_| {})).unwrap();
        let first = next(&Snapshot::default(), &[("a", "1")]);
        c.responses(&first, &mut nonce);
        // Two publications while the first response is in flight: the last
        // one's changes lead from the second, which the client never had.
        let second = next(&first, &[("a", "2")]);
        let third = next(&second, &[("a", "2"), ("b", "1")]);
        assert!(c.responses(&second, &mut nonce).is_empty());
        ack(&mut c, "n1");
        let r = c.responses(&third, &mut nonce);
        assert_eq!(names(&r[0]), ["a", "b"]);
        ack(&mut c, "n2");

        // A subscription change forgets the generation: an explicit name is
        // answered even though it does not exist.
        c.on_request(&request(|r| {
            r.resource_names_subscribe = vec!["missing".into()];
        }))
        .unwrap();
        assert_eq!(c.types[T].synced, None);
        let r = c.responses(&third, &mut nonce);
        assert!(r[0].resources.is_empty());
        assert_eq!(r[0].removed_resources, ["missing"]);
    }

    #[test]
    fn a_reconnecting_client_holds_names_shared_with_the_snapshot() {
        let snap = snapshot(&[("a", "1"), ("b", "1")]);
        let version = snap.types[T]["a"].version.clone();
        let mut c = ClientState::default();
        c.on_request(&request(|r| {
            r.initial_resource_versions = [
                ("a".to_string(), version),
                ("gone".to_string(), "x".to_string()),
            ]
            .into();
        }))
        .unwrap();
        let r = c.responses(&snap, nonces());
        assert_eq!(names(&r[0]), ["b"]);
        assert_eq!(r[0].removed_resources, ["gone"]);
        // In sync and wildcard: the client holds the snapshot's own map.
        let Held::Snapshot(shared) = &c.types[T].has else {
            panic!("a wildcard client in sync copied the snapshot's names");
        };
        assert!(Arc::ptr_eq(shared, &snap.types[T]));

        // By name: each name held is the snapshot's.
        let mut c = ClientState::default();
        c.on_request(&request(|r| {
            r.resource_names_subscribe = vec!["a".into(), "b".into()];
        }))
        .unwrap();
        c.responses(&snap, nonces());
        let has = &c.types[T].has;
        assert_eq!(has.len(), 2);
        for (name, version) in has.entries() {
            let (own, resource) = snap.types[T].get_key_value(name).unwrap();
            assert!(Arc::ptr_eq(own, name), "{name} is a copy");
            assert_eq!(version, parse_version(&resource.version));
        }
    }

    #[test]
    fn requests_without_a_type_and_too_many_types_are_refused() {
        let mut c = ClientState::default();
        assert_eq!(
            c.on_request(&request(|r| r.type_url.clear())),
            Err(RequestError::MissingTypeUrl)
        );
        for i in 0..MAX_TYPES_PER_CLIENT {
            c.on_request(&request(|r| r.type_url = format!("t{i}")))
                .unwrap();
        }
        assert!(matches!(
            c.on_request(&request(|r| r.type_url = "one-more".into())),
            Err(RequestError::TooManyTypes(_))
        ));
    }
}
