//! Fuzzes istiod-lite's certificate request checking (`ca::check_request`):
//! arbitrary bytes decoded as an `IstioCertificateRequest`, checked for a node
//! token caller and a trusted node account against a small fixed registry.
//!
//! The first byte picks the mode: odd keeps the fuzzed CSR; even swaps in a
//! valid CSR for a pod on the caller's node, so the metadata and lifetime
//! paths are reached without the fuzzer having to forge a signature.
//!
//! Invariants:
//! - never a panic, whatever the bytes;
//! - an approved identity is in the CA's trust domain, is exactly the CSR's
//!   one URI SAN, and has a pod on the caller's node;
//! - an approved lifetime lies within the policy's bounds;
//! - a refusal carries a non-empty message.
#![no_main]

use std::sync::OnceLock;

use istiod_lite::auth::Caller;
use istiod_lite::ca::{CaPolicy, check_request};
use istiod_lite::ca::check::has_pod_on_node;
use istiod_lite::model::{Kind, Object, Store};
use libfuzzer_sys::fuzz_target;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use prost::Message;

const NODE: &str = "node-a";

struct Fixed {
    store: Store,
    policy: CaPolicy,
    valid_csr: String,
    callers: Vec<Caller>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut store = Store::default();
        for (ns, name, sa, node) in [
            ("shop", "cart-1", "cart", NODE),
            ("bank", "vault-1", "vault", "node-b"),
        ] {
            let pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
            });
            store.upsert(Object::from_value(Kind::Pod, pod).expect("a valid pod"));
        }
        let cart = "spiffe://cluster.local/ns/shop/sa/cart".parse().expect("an identity");
        let valid_csr = mesh_core::tls::new_csr(&cart).expect("a CSR").0;
        let callers = vec![
            Caller {
                node: Some(NODE.into()),
                identity: None,
                description: "node token".into(),
            },
            Caller {
                node: Some(NODE.into()),
                identity: Some(
                    "spiffe://cluster.local/ns/istio-system/sa/ztunnel".parse().expect("an identity"),
                ),
                description: "ztunnel".into(),
            },
        ];
        Fixed {
            store,
            policy: CaPolicy::default(),
            valid_csr,
            callers,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((mode, rest)) = input.split_first() else {
        return;
    };
    let Ok(mut request) = IstioCertificateRequest::decode(rest) else {
        return;
    };
    let f = fixed();
    if mode % 2 == 0 {
        request.csr = f.valid_csr.clone();
    }
    for caller in &f.callers {
        match check_request(&request, caller, &f.store, &f.policy) {
            Ok(approved) => {
                assert_eq!(approved.identity.trust_domain(), f.policy.trust_domain);
                assert_eq!(approved.csr.identity().ok().as_ref(), Some(&approved.identity));
                assert!(has_pod_on_node(&f.store, &approved.identity, NODE, &f.policy.trust_domain));
                assert!(approved.ttl >= f.policy.min_ttl && approved.ttl <= f.policy.max_ttl);
            }
            Err(refusal) => assert!(!refusal.message.is_empty()),
        }
    }
});
