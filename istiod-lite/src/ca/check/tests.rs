use super::*;
use crate::model::{Kind, Object};
use mesh_core::tls::new_csr;
use serde_json::json;

fn pod(ns: &str, name: &str, sa: Option<&str>, node: &str) -> Object {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    Object::from_value(
        Kind::Pod,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap()
}

fn store() -> Store {
    let mut store = Store::default();
    store.upsert(pod("shop", "cart-1", Some("cart"), "node-a"));
    store.upsert(pod("shop", "web-1", None, "node-a"));
    store.upsert(pod("bank", "vault-1", Some("vault"), "node-b"));
    store
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn request(csr_for: &Identity, impersonate: Option<&str>, ttl: i64) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: new_csr(csr_for).unwrap().0,
        validity_duration: ttl,
        metadata: impersonate.map(|who| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(who.into())),
                },
            )]
            .into(),
        }),
    }
}

fn node(name: &str) -> Caller {
    Caller {
        node: Some(name.into()),
        identity: None,
        description: format!("node {name}"),
    }
}

fn workload(identity: &str, node: Option<&str>) -> Caller {
    Caller {
        node: node.map(Into::into),
        identity: Some(id(identity)),
        description: identity.into(),
    }
}

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/default";
const VAULT: &str = "spiffe://cluster.local/ns/bank/sa/vault";
const ZTUNNEL: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";

#[test]
fn a_node_token_gets_identities_with_a_pod_on_its_node() {
    let policy = CaPolicy::default();
    let ok = check_request(
        &request(&id(CART), Some(CART), 0),
        &node("node-a"),
        &store(),
        &policy,
    )
    .unwrap();
    assert_eq!(ok.identity, id(CART));
    assert_eq!(ok.ttl, policy.default_ttl);
    // Without the metadata field the CSR's SAN names the identity; an unset
    // service account is `default`.
    let ok = check_request(
        &request(&id(WEB), None, 0),
        &node("node-a"),
        &store(),
        &policy,
    )
    .unwrap();
    assert_eq!(ok.identity, id(WEB));
}

#[test]
fn an_identity_not_on_the_callers_node_is_refused_naming_both() {
    let err = check_request(
        &request(&id(VAULT), Some(VAULT), 0),
        &node("node-a"),
        &store(),
        &CaPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOnNode);
    assert!(
        err.message.contains(VAULT) && err.message.contains("node-a"),
        "{err}"
    );
}

#[test]
fn a_trusted_node_account_may_impersonate_only_on_its_node() {
    let policy = CaPolicy::default();
    let zt = workload(ZTUNNEL, Some("node-b"));
    assert!(check_request(&request(&id(VAULT), Some(VAULT), 0), &zt, &store(), &policy).is_ok());
    let err =
        check_request(&request(&id(CART), Some(CART), 0), &zt, &store(), &policy).unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOnNode);
    // The same account name in another trust domain is not ours to trust.
    let foreign = workload(
        "spiffe://elsewhere/ns/istio-system/sa/ztunnel",
        Some("node-b"),
    );
    let err = check_request(
        &request(&id(VAULT), Some(VAULT), 0),
        &foreign,
        &store(),
        &policy,
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOwnIdentity);
    let nowhere = workload(ZTUNNEL, None);
    let err = check_request(
        &request(&id(VAULT), Some(VAULT), 0),
        &nowhere,
        &store(),
        &policy,
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOnNode);
}

#[test]
fn a_workload_gets_its_own_identity_and_nothing_else() {
    let policy = CaPolicy::default();
    let cart = workload(CART, Some("node-a"));
    assert!(check_request(&request(&id(CART), None, 0), &cart, &store(), &policy).is_ok());
    // Even a pod on the same node may not act as a node proxy.
    let err =
        check_request(&request(&id(WEB), Some(WEB), 0), &cart, &store(), &policy).unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOwnIdentity);
}

#[test]
fn a_csr_whose_san_differs_from_the_impersonated_identity_is_refused() {
    let err = check_request(
        &request(&id(WEB), Some(CART), 0),
        &node("node-a"),
        &store(),
        &CaPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::BadCsr);
    assert!(
        err.message.contains(WEB) && err.message.contains(CART),
        "{err}"
    );
}

#[test]
fn other_trust_domains_bad_csrs_and_bad_metadata_are_refused() {
    let policy = CaPolicy::default();
    let foreign = "spiffe://other.example/ns/shop/sa/cart";
    let err = check_request(
        &request(&id(foreign), None, 0),
        &node("node-a"),
        &store(),
        &policy,
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::WrongTrustDomain);

    let mut bad = request(&id(CART), None, 0);
    bad.csr =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let err = check_request(&bad, &node("node-a"), &store(), &policy).unwrap_err();
    assert_eq!(err.reason, RefusalReason::BadCsr);

    let mut bad = request(&id(CART), None, 0);
    bad.metadata = Some(prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(1.0)),
            },
        )]
        .into(),
    });
    let err = check_request(&bad, &node("node-a"), &store(), &policy).unwrap_err();
    assert_eq!(err.reason, RefusalReason::BadRequest);
    assert!(err.message.contains(IMPERSONATED_IDENTITY), "{err}");
}

#[test]
fn lifetimes_are_clamped_and_a_bad_policy_does_not_panic() {
    let policy = CaPolicy {
        min_ttl: Duration::from_secs(600),
        max_ttl: Duration::from_secs(3600),
        ..CaPolicy::default()
    };
    assert_eq!(lifetime(1, &policy), Duration::from_secs(600));
    assert_eq!(lifetime(1800, &policy), Duration::from_secs(1800));
    assert_eq!(lifetime(i64::MAX, &policy), Duration::from_secs(3600));
    // The 24 h default is above this policy's maximum.
    assert_eq!(lifetime(-5, &policy), Duration::from_secs(3600));
    let upside_down = CaPolicy {
        min_ttl: Duration::from_secs(7200),
        max_ttl: Duration::from_secs(60),
        ..CaPolicy::default()
    };
    assert_eq!(lifetime(100, &upside_down), Duration::from_secs(60));
}

#[test]
fn finished_pods_do_not_grant_their_identity() {
    let mut store = store();
    let mut done = pod("bank", "job-1", Some("batch"), "node-a");
    if let Object::Pod(p) = &mut done {
        std::sync::Arc::make_mut(p).status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
    }
    store.upsert(done);
    let batch = "spiffe://cluster.local/ns/bank/sa/batch";
    let err = check_request(
        &request(&id(batch), Some(batch), 0),
        &node("node-a"),
        &store,
        &CaPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOnNode);
}

#[test]
fn a_provisioned_waypoint_pod_gives_its_node_the_waypoints_identity() {
    // The generated waypoint objects, as directory mode writes them.
    let mut store = store();
    for name in ["node-a", "node-b"] {
        store.upsert(
            Object::from_value(
                Kind::Node,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
            )
            .unwrap(),
        );
    }
    store.upsert(
        Object::from_value(
            Kind::Gateway,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "waypoint", "namespace": "shop"},
                   "spec": {"gatewayClassName": "istio-waypoint",
                            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
        )
        .unwrap(),
    );
    let generated = crate::provision::dir::render(&store);
    let parsed = crate::registry::dir::parse_file(std::path::Path::new("gen.yaml"), &generated);
    for object in parsed.objects {
        store.upsert(object.object);
    }
    let waypoint = "spiffe://cluster.local/ns/shop/sa/waypoint";
    // node-b has one pod, node-a two: the waypoint went to node-b.
    let ok = check_request(
        &request(&id(waypoint), Some(waypoint), 0),
        &node("node-b"),
        &store,
        &CaPolicy::default(),
    )
    .unwrap();
    assert_eq!(ok.identity, id(waypoint));
    let err = check_request(
        &request(&id(waypoint), Some(waypoint), 0),
        &node("node-a"),
        &store,
        &CaPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::NotOnNode);
}
