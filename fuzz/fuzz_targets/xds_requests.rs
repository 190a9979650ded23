//! Fuzzes istiod-lite's per-client delta ADS state (`xds::ClientState`) with
//! sequences of requests decoded from arbitrary bytes, against a small
//! snapshot, exactly as a stream's messages would reach it.
//!
//! Input: a sequence of chunks, each a 2-byte big-endian length and that many
//! bytes of a `DeltaDiscoveryRequest` (undecodable chunks are dropped, as the
//! gRPC layer would refuse them). After each accepted request the due
//! responses are computed, and their nonces may be ACKed or NACKed by later
//! requests that reference them.
//!
//! Invariants:
//! - no panic, whatever the order of subscribes, unsubscribes, nonces and
//!   initial versions;
//! - never more than one response in flight per type: a type gets a second
//!   response only after a request answered the first;
//! - a response never carries a resource the snapshot does not hold, nor
//!   the same name both as a resource and as removed.
#![no_main]

use std::collections::BTreeMap;
use std::time::Instant;

use istiod_lite::xds::{ClientState, Snapshot};
use libfuzzer_sys::fuzz_target;
use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_api::istio::security::Authorization;
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;

fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    s.declare(ADDRESS_TYPE_URL);
    for (ns, name) in [("a", "p1"), ("a", "p2"), ("b", "p3")] {
        let policy = Authorization {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        };
        s.insert(AUTHORIZATION_TYPE_URL, format!("{ns}/{name}"), &policy);
    }
    s.published_at = Some(Instant::now());
    s
}

fuzz_target!(|input: &[u8]| {
    let snapshot = snapshot();
    let mut state = ClientState::default();
    let mut nonce = 0u64;
    let mut in_flight: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = input;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let Ok(mut request) = DeltaDiscoveryRequest::decode(chunk) else {
            continue;
        };
        // Let the fuzzer reach real nonces: a nonce "#<type>" means "the one
        // in flight for that type".
        if let Some(t) = request.response_nonce.strip_prefix('#') {
            request.response_nonce = in_flight.get(t).cloned().unwrap_or_default();
        }
        let answered = request.response_nonce.clone();
        if state.on_request(&request).is_err() {
            continue;
        }
        in_flight.retain(|_, n| *n != answered);
        for response in state.responses(&snapshot, || {
            nonce += 1;
            nonce.to_string()
        }) {
            assert!(
                in_flight
                    .insert(response.type_url.clone(), response.nonce.clone())
                    .is_none(),
                "a second response in flight for {}",
                response.type_url
            );
            let held = snapshot.resources(&response.type_url);
            for r in &response.resources {
                assert!(
                    held.is_some_and(|h| h.contains_key(&*r.name)),
                    "sent {} which the snapshot does not hold",
                    r.name
                );
                assert!(!response.removed_resources.iter().any(|n| **n == *r.name));
            }
        }
    }
});
