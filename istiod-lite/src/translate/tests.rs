//! Table tests: each `testdata/<case>.yaml` is a multi-document set of objects,
//! `testdata/<case>.expected.yaml` the resources it must produce, written in a
//! readable projection of the xDS messages (see `projection`).

mod projection;

use std::path::PathBuf;

use anyhow::{Context, bail};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::{MeshConfig, Translation, translate};
use crate::model::{Kind, Object, Store};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/translate/testdata")
        .join(name)
}

/// Reads a multi-document YAML file of objects into a store.
pub(super) fn load_store(text: &str) -> anyhow::Result<Store> {
    let mut store = Store::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("document {i}"))?;
        if value.is_null() {
            continue;
        }
        let kind_name = value["kind"]
            .as_str()
            .with_context(|| format!("document {i} has no kind"))?
            .to_string();
        let Some(kind) = Kind::from_name(&kind_name) else {
            bail!("document {i}: unknown kind {kind_name}");
        };
        let object = Object::from_value(kind, value)
            .with_context(|| format!("document {i} ({kind_name})"))?;
        store.upsert(object);
    }
    Ok(store)
}

pub(super) fn fixture_store(case: &str) -> Store {
    let path = testdata(&format!("{case}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    load_store(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// What a fixture expects. Listed addresses and authorizations must equal
/// the projection exactly; `absent` names must not be produced; conditions
/// are the complete list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(default)]
    addresses: serde_json::Map<String, Value>,
    #[serde(default)]
    authorizations: serde_json::Map<String, Value>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    conditions: Vec<String>,
}

fn yaml(v: &impl serde::Serialize) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

fn check_fixture(case: &str) {
    let store = fixture_store(case);
    let out = translate(&store, &MeshConfig::default());
    let path = testdata(&format!("{case}.expected.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expected: Expected =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    let mut failures = Vec::new();
    for (key, want) in &expected.addresses {
        match out.addresses.get(key) {
            None => failures.push(format!(
                "address {key} missing; produced: {:?}",
                out.addresses.keys().collect::<Vec<_>>()
            )),
            Some(got) => {
                let got = projection::address(got);
                if &got != want {
                    failures.push(format!(
                        "address {key}:\n--- want\n{}--- got\n{}",
                        yaml(want),
                        yaml(&got)
                    ));
                }
            }
        }
    }
    for (key, want) in &expected.authorizations {
        match out.authorizations.get(key) {
            None => failures.push(format!(
                "authorization {key} missing; produced: {:?}",
                out.authorizations.keys().collect::<Vec<_>>()
            )),
            Some(got) => {
                let got = projection::authorization(got);
                if &got != want {
                    failures.push(format!(
                        "authorization {key}:\n--- want\n{}--- got\n{}",
                        yaml(want),
                        yaml(&got)
                    ));
                }
            }
        }
    }
    for key in &expected.absent {
        if out.addresses.contains_key(key) || out.authorizations.contains_key(key) {
            failures.push(format!("{key} should not be produced"));
        }
    }
    let conditions: Vec<String> = out.conditions.iter().map(projection::condition).collect();
    if conditions != expected.conditions {
        failures.push(format!(
            "conditions:\n--- want\n{}--- got\n{}",
            yaml(&expected.conditions),
            yaml(&conditions)
        ));
    }
    assert!(failures.is_empty(), "{case}:\n{}", failures.join("\n"));
}

#[test]
fn enrolment_identity_and_owners() {
    check_fixture("enrolment");
}

#[test]
fn services_ports_headless_and_endpoint_slices() {
    check_fixture("services");
}

#[test]
fn waypoint_bindings() {
    check_fixture("waypoints");
}

#[test]
fn authorization_l4_fields() {
    check_fixture("authorization_l4");
}

#[test]
fn authorization_l7_in_l4() {
    check_fixture("authorization_l7");
}

#[test]
fn waypoint_l7_conditions() {
    check_fixture("waypoint_l7");
}

#[test]
fn peer_authentication_modes() {
    check_fixture("peer_authentication");
}

#[test]
fn service_entries() {
    check_fixture("service_entry");
}

fn encoded(t: &Translation) -> Vec<(String, Vec<u8>)> {
    let addresses = t
        .addresses
        .iter()
        .map(|(k, v)| (k.clone(), v.encode_to_vec()));
    let authorizations = t
        .authorizations
        .iter()
        .map(|(k, v)| (k.clone(), v.encode_to_vec()));
    addresses.chain(authorizations).collect()
}

/// Every fixture in one store (later documents replace earlier ones of the
/// same name).
pub(super) fn all_fixtures() -> Store {
    let texts: Vec<String> = FIXTURES
        .iter()
        .map(|case| std::fs::read_to_string(testdata(&format!("{case}.yaml"))).unwrap_or_default())
        .collect();
    load_store(&texts.join("\n---\n")).unwrap_or_else(|e| panic!("{e:#}"))
}

pub(super) const FIXTURES: &[&str] = &[
    "enrolment",
    "services",
    "waypoints",
    "authorization_l4",
    "authorization_l7",
    "peer_authentication",
    "service_entry",
    "waypoint_l7",
];

#[test]
fn same_input_gives_byte_identical_output() {
    let store = all_fixtures();
    let mesh = MeshConfig::default();
    let first = translate(&store, &mesh);
    let second = translate(&store.clone(), &mesh);
    assert!(!first.addresses.is_empty());
    assert_eq!(encoded(&first), encoded(&second));
    assert_eq!(first.conditions, second.conditions);
}

#[test]
fn a_one_pod_change_touches_only_that_pods_workload() {
    let mut store = fixture_store("services");
    let mesh = MeshConfig::default();
    let before = translate(&store, &mesh);

    let key = crate::model::ObjectKey {
        kind: Kind::Pod,
        name: crate::model::NamespacedName::new("apps", "web-1"),
    };
    let Some(Object::Pod(pod)) = store.get(&key) else {
        panic!("fixture has no pod apps/web-1")
    };
    let mut pod = (*pod).clone();
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("version".into(), "v2".into());
    assert!(store.upsert(Object::Pod(std::sync::Arc::new(pod))));
    let after = translate(&store, &mesh);

    let (before, after) = (encoded(&before), encoded(&after));
    let names = |e: &[(String, Vec<u8>)]| e.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after));
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, _)| b.0.as_str())
        .collect();
    assert_eq!(changed, vec!["Kubernetes//Pod/apps/web-1"]);
}

#[test]
fn a_bad_fixture_names_its_document() {
    let err = load_store("kind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: 3}\nspec: {containers: 1}\n")
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("document 1 (Pod)"), "{text}");
}

#[test]
fn document_order_does_not_change_the_output() {
    let mesh = MeshConfig::default();
    for case in FIXTURES {
        let text = std::fs::read_to_string(testdata(&format!("{case}.yaml"))).unwrap();
        let mut documents: Vec<&str> = text.split("\n---\n").collect();
        documents.reverse();
        let backward = load_store(&documents.join("\n---\n")).unwrap();
        let forward = fixture_store(case);
        assert_eq!(
            encoded(&translate(&forward, &mesh)),
            encoded(&translate(&backward, &mesh)),
            "{case}"
        );
    }
}

#[test]
fn mesh_settings_reach_every_workload() {
    let mesh = MeshConfig {
        trust_domain: "corp.example".into(),
        cluster_id: "east".into(),
        root_namespace: "mesh-root".into(),
        cluster_domain: "east.local".into(),
        network: "net-1".into(),
    };
    let out = translate(&fixture_store("services"), &mesh);
    let got = projection::address(&out.addresses["east//Pod/apps/web-1"]);
    assert_eq!(got["workload"]["trustDomain"], "corp.example");
    assert_eq!(got["workload"]["clusterId"], "east");
    assert_eq!(got["workload"]["network"], "net-1");
    let services = got["workload"]["services"].as_object().unwrap();
    assert!(
        services.contains_key("apps/web.apps.svc.east.local"),
        "{services:?}"
    );
    let svc = projection::address(&out.addresses["apps/web.apps.svc.east.local"]);
    assert_eq!(svc["service"]["addresses"][0], "net-1/10.96.0.10");
}

/// Many namespaces, each with pods, Services and selector policies: every pod
/// finds exactly its own Service and policy (the indexes by namespace and
/// first selector label neither miss nor cross namespaces).
#[test]
fn indexes_stay_correct_at_scale() {
    let mut docs = Vec::new();
    for ns in 0..20 {
        docs.push(format!("kind: Namespace\nmetadata: {{name: ns{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}"));
        for app in 0..20 {
            docs.push(format!(
                "kind: Service\nmetadata: {{name: app{app}, namespace: ns{ns}}}\nspec: {{selector: {{app: app{app}}}, clusterIP: 10.96.{ns}.{app}, ports: [{{port: 80, targetPort: 8080}}]}}"
            ));
            docs.push(format!(
                "kind: AuthorizationPolicy\nmetadata: {{name: p{app}, namespace: ns{ns}}}\nspec: {{selector: {{matchLabels: {{app: app{app}}}}}, rules: [{{from: [{{source: {{namespaces: [ns{ns}]}}}}]}}]}}"
            ));
            for pod in 0..5 {
                docs.push(format!(
                    "kind: Pod\nmetadata: {{name: app{app}-{pod}, namespace: ns{ns}, labels: {{app: app{app}, pod: p{pod}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.{ns}.{app}.{pod}}}"
                ));
            }
        }
    }
    let store = load_store(&docs.join("\n---\n")).unwrap();
    let out = translate(&store, &MeshConfig::default());
    assert_eq!(out.addresses.len(), 20 * 20 * (1 + 5));
    assert_eq!(out.authorizations.len(), 20 * 20);
    for ns in 0..20 {
        for app in 0..20 {
            for pod in 0..5 {
                let uid = format!("Kubernetes//Pod/ns{ns}/app{app}-{pod}");
                let w = projection::address(&out.addresses[&uid]);
                let services: Vec<&String> = w["workload"]["services"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect();
                assert_eq!(
                    services,
                    vec![&format!("ns{ns}/app{app}.ns{ns}.svc.cluster.local")]
                );
                assert_eq!(
                    w["workload"]["authorizationPolicies"],
                    serde_json::json!([format!("ns{ns}/p{app}")])
                );
            }
        }
    }
}
