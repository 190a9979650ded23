//! Fuzzes ztunnel's handling of workload xDS resource bodies: decoding,
//! conversion (`ztunnel::state::from_xds`) and the state rebuild
//! (`ztunnel::xds::Resources`).
//!
//! Input: the first byte picks the type (even: `Address`, odd:
//! `Authorization`), the rest is the protobuf body.
//!
//! Invariants:
//! - nothing panics;
//! - a refused resource is reported under its name with a non-empty reason,
//!   and is not kept;
//! - resources that were accepted always build a state (conversion checks
//!   everything the state needs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::xds::{Resource, Update};
use ztunnel::xds::Resources;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    let address = selector % 2 == 0;
    let type_url = if address {
        ADDRESS_TYPE_URL
    } else {
        AUTHORIZATION_TYPE_URL
    };
    let update = Update {
        resources: vec![Resource {
            name: "fuzzed".into(),
            version: "1".into(),
            body: prost_types::Any {
                type_url: type_url.into(),
                value: body.to_vec(),
            },
        }],
        removed: vec![],
    };
    let mut resources = Resources::default();
    let rejected = if address {
        resources.apply_addresses(&update)
    } else {
        resources.apply_authorizations(&update)
    };
    let kept = resources.workloads.len() + resources.services.len() + resources.policies.len();
    match rejected.as_slice() {
        [] => assert_eq!(kept, 1, "an accepted resource is kept"),
        [r] => {
            assert_eq!(r.name, "fuzzed");
            assert!(!r.reason.trim().is_empty(), "empty reason");
            assert_eq!(kept, 0, "a refused resource is not kept");
        }
        more => panic!("one resource, {} rejections", more.len()),
    }
    if let Err(e) = resources.build_state() {
        panic!("accepted resources do not build a state: {e}");
    }
});
