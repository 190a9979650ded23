//! Fuzzes the HBONE header helpers (`mesh_core::hbone::headers`).
//!
//! Invariants:
//! - whatever `parse_authority` accepts has a non-zero port, is neither
//!   unspecified nor multicast, has no zone id, and round-trips through
//!   `authority` (format, parse again, same address);
//! - a refusal is a `BadAuthority` error with a non-empty message;
//! - `Baggage::decode`, `forwarded_for` and `forwarded_host` never panic, and
//!   decoded baggage never holds a ',' or surrounding whitespace in a value.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mesh_core::hbone::HboneError;
use mesh_core::hbone::headers::{self, Baggage};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };

    match headers::parse_authority(text) {
        Ok(addr) => {
            assert_ne!(addr.port(), 0, "{text:?}");
            assert!(!addr.ip().is_unspecified(), "{text:?}");
            assert!(!addr.ip().is_multicast(), "{text:?}");
            if let SocketAddr::V6(v6) = addr {
                assert_eq!((v6.scope_id(), v6.flowinfo()), (0, 0), "{text:?}");
            }
            let formatted = headers::authority(addr);
            let again = headers::parse_authority(&formatted)
                .unwrap_or_else(|e| panic!("{text:?} -> {formatted:?} is refused: {e}"));
            assert_eq!(again, addr, "{text:?} -> {formatted:?}");
            assert_eq!(headers::authority(again), formatted);
        }
        Err(e) => {
            assert!(matches!(e, HboneError::BadAuthority { .. }), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    let b = Baggage::decode(text);
    for v in [
        &b.cluster,
        &b.namespace,
        &b.workload_type,
        &b.workload_name,
        &b.service_name,
        &b.service_version,
        &b.region,
        &b.zone,
    ] {
        assert!(!v.contains(','), "{text:?}: {v:?}");
        assert_eq!(v.trim(), v.as_str(), "{text:?}");
    }
    // Encoding what was decoded must itself decode without panicking.
    let _ = Baggage::decode(&b.encode());

    let _ = headers::forwarded_for(text);
    let _ = headers::forwarded_host(text);
});
