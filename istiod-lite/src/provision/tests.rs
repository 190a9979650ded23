use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::placement::{WAYPOINT_VIP_RANGE, allocate_ips, choose_node};
use super::status::{WAYPOINT_BOUND, merge, status};
use super::*;
use crate::model::{Kind, Object, ObjectCondition, ObjectKey};

fn store_of(documents: &[Value]) -> Store {
    let mut store = Store::default();
    for doc in documents {
        let kind = Kind::from_name(doc["kind"].as_str().unwrap()).unwrap();
        store.upsert(Object::from_value(kind, doc.clone()).unwrap());
    }
    store
}

fn gateway(ns: &str, name: &str, port: i32, protocol: &str, extra_labels: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": extra_labels},
           "spec": {"gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": port, "protocol": protocol}]}})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn pod_on(ns: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "containers": [{"name": "c"}]}})
}

fn service(ns: &str, name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
}

fn find<'a>(
    conditions: &'a [ObjectCondition],
    kind: Kind,
    name: &str,
    type_: &str,
) -> &'a ObjectCondition {
    conditions
        .iter()
        .find(|c| c.object.kind == kind && c.object.name.name == name && c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} on {kind} {name} in {conditions:#?}"))
}

#[test]
fn kubernetes_objects_are_owned_by_the_gateway_and_hardened() {
    let store = store_of(&[gateway("shop", "waypoint", 15008, "HBONE", json!({}))]);
    let desired = kube::desired(&store, &Settings::default());
    let documents = &desired[&NamespacedName::new("shop", "waypoint")];
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ServiceAccount", "Service", "Deployment"]);
    for document in documents {
        let owner = &document["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway");
        assert_eq!(owner["uid"], "uid-waypoint");
        assert_eq!(owner["controller"], true);
        assert_eq!(document["metadata"]["labels"][GATEWAY_NAME], "waypoint");
        assert_eq!(
            document["metadata"]["labels"]["istio.io/dataplane-mode"],
            "none"
        );
    }
    let ports = &documents[1]["spec"]["ports"];
    assert_eq!(
        ports[0],
        json!({"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP", "appProtocol": "HBONE"})
    );
    assert_eq!(ports[1]["port"], 15021);
    assert_eq!(
        documents[1]["spec"]["selector"],
        json!({GATEWAY_NAME: "waypoint"})
    );
    assert!(
        documents[1]["spec"].get("clusterIP").is_none(),
        "Kubernetes allocates it"
    );

    let deployment = &documents[2]["spec"];
    assert_eq!(deployment["replicas"], 1);
    let pod = &deployment["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], default_image());
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["GATEWAY_NAME"]["value"], "waypoint");
    assert_eq!(
        env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(env["ISTIOD_TOKEN_FILE"]["value"], objects::TOKEN_PATH);
    assert_eq!(
        env["ISTIOD_ADDRESS"]["value"],
        "https://istiod.istio-system.svc:15012"
    );
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "NODE_NAME",
        "SERVICE_ACCOUNT",
        "ISTIOD_SERVER_NAME",
        "ISTIOD_ROOT_CERT",
        "TRUST_DOMAIN",
    ] {
        assert!(env.contains_key(name), "{name} missing");
    }
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15021})
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let token = &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "istio-ca");
    assert_eq!(token["path"], "istio-token");
}

#[test]
fn the_root_certificate_config_map_comes_first_when_the_root_is_known() {
    let store = store_of(&[gateway("shop", "waypoint", 15008, "HBONE", json!({}))]);
    let settings = Settings {
        root_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
        ..Settings::default()
    };
    let desired = kube::desired(&store, &settings);
    let documents = &desired[&NamespacedName::new("shop", "waypoint")];
    assert_eq!(documents[0]["kind"], "ConfigMap");
    assert_eq!(documents[0]["metadata"]["name"], "istio-ca-root-cert");
    assert_eq!(
        documents[0]["data"]["root-cert.pem"],
        "-----BEGIN CERTIFICATE-----"
    );
    let volumes = &documents[3]["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[1]["configMap"]["name"], "istio-ca-root-cert");
}

#[test]
fn invalid_gateways_and_other_classes_are_not_provisioned() {
    let mut other = gateway("shop", "ingress", 80, "HTTP", json!({}));
    other["spec"]["gatewayClassName"] = json!("istio");
    let store = store_of(&[gateway("shop", "bad", 80, "HTTP", json!({})), other]);
    assert!(kube::desired(&store, &Settings::default()).is_empty());
    assert_eq!(dir::render(&store), "");
}

#[test]
fn node_choice_keeps_the_current_node_else_takes_the_least_loaded() {
    let store = store_of(&[
        node("b"),
        node("a"),
        node("c"),
        pod_on("x", "p1", "a"),
        pod_on("x", "p2", "c"),
    ]);
    assert_eq!(choose_node(&store, None).as_deref(), Some("b"));
    assert_eq!(choose_node(&store, Some("c")).as_deref(), Some("c"));
    assert_eq!(choose_node(&store, Some("gone")).as_deref(), Some("b"));
    let tied = store_of(&[node("n2"), node("n1")]);
    assert_eq!(
        choose_node(&tied, None).as_deref(),
        Some("n1"),
        "ties go by name"
    );
    assert_eq!(choose_node(&Store::default(), None), None);
}

#[test]
fn addresses_are_stable_and_never_collide() {
    let range = WAYPOINT_VIP_RANGE.parse().unwrap();
    let a = NamespacedName::new("shop", "waypoint");
    let b = NamespacedName::new("bank", "waypoint");
    let first = allocate_ips(
        &[a.clone(), b.clone()],
        &BTreeMap::new(),
        &BTreeSet::new(),
        range,
    );
    assert_ne!(first[&a], first[&b]);
    assert!(first.values().all(|ip| range.contains(ip)));
    let again = allocate_ips(
        &[b.clone(), a.clone()],
        &BTreeMap::new(),
        &BTreeSet::new(),
        range,
    );
    assert_eq!(first, again, "the same waypoints get the same addresses");

    // Another Service holds a's address: a moves, b keeps its own.
    let taken = BTreeSet::from([first[&a]]);
    let moved = allocate_ips(&[a.clone(), b.clone()], &BTreeMap::new(), &taken, range);
    assert_ne!(moved[&a], first[&a]);
    assert!(!taken.contains(&moved[&a]));

    // A current address is kept even if it is not the hashed one.
    let kept_ip: Ipv4Addr = "10.96.255.200".parse().unwrap();
    let kept = allocate_ips(
        std::slice::from_ref(&a),
        &BTreeMap::from([(a.clone(), kept_ip)]),
        &BTreeSet::new(),
        range,
    );
    assert_eq!(kept[&a], kept_ip);
    // ... unless it left the range.
    let outside = allocate_ips(
        std::slice::from_ref(&a),
        &BTreeMap::from([(a.clone(), "10.0.0.1".parse().unwrap())]),
        &BTreeSet::new(),
        range,
    );
    assert!(range.contains(&outside[&a]));

    // A full range leaves the newcomer without an address.
    let tiny = "10.96.255.0/30".parse().unwrap();
    let full: BTreeSet<Ipv4Addr> = ["10.96.255.1", "10.96.255.2"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert!(allocate_ips(std::slice::from_ref(&a), &BTreeMap::new(), &full, tiny).is_empty());
}

#[test]
fn the_generated_file_holds_pod_service_and_account_and_stays_put() {
    let mut docs = vec![
        node("n1"),
        node("n2"),
        pod_on("x", "p1", "n1"),
        gateway("shop", "waypoint", 15008, "HBONE", json!({})),
        service("shop", "web", "10.96.0.10", json!({})),
    ];
    let store = store_of(&docs);
    let text = dir::render(&store);
    let parsed = crate::registry::dir::parse_file(std::path::Path::new("gen.yaml"), &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let objects: Vec<_> = parsed
        .objects
        .iter()
        .map(|o| o.object.key().to_string())
        .collect();
    assert_eq!(
        objects,
        [
            "ServiceAccount shop/waypoint",
            "Service shop/waypoint",
            "Pod shop/waypoint"
        ]
    );
    let Object::Pod(pod) = &parsed.objects[2].object else {
        panic!()
    };
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("n2"), "the emptier node");
    assert_eq!(spec.service_account_name.as_deref(), Some("waypoint"));
    assert_eq!(
        spec.containers[0].command.as_deref(),
        Some(&["waypoint".to_string()][..])
    );
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["istio.io/dataplane-mode"], "none");
    assert_eq!(labels[GATEWAY_NAME], "waypoint");

    // Once the registry holds the generated objects, the file is unchanged
    // even when more pods land on n2.
    let mut with_generated = store.clone();
    for object in parsed.objects {
        with_generated.upsert(object.object);
    }
    docs.push(pod_on("x", "p2", "n2"));
    docs.push(pod_on("x", "p3", "n2"));
    for doc in &docs {
        let kind = Kind::from_name(doc["kind"].as_str().unwrap()).unwrap();
        with_generated.upsert(Object::from_value(kind, doc.clone()).unwrap());
    }
    assert_eq!(dir::render(&with_generated), text);
}

#[test]
fn gateway_status_follows_the_service_and_the_pod() {
    let gw = gateway(
        "shop",
        "waypoint",
        15008,
        "HBONE",
        json!({"istio.io/waypoint-for": "all"}),
    );
    let pending = status(&store_of(std::slice::from_ref(&gw)), "cluster.local");
    assert!(find(&pending.conditions, Kind::Gateway, "waypoint", "Accepted").status);
    let programmed = find(&pending.conditions, Kind::Gateway, "waypoint", "Programmed");
    assert!(!programmed.status);
    assert_eq!(programmed.reason, "Pending");
    assert!(pending.addresses.is_empty());

    let svc = service("shop", "waypoint", "10.96.255.9", json!({}));
    let no_pod = status(&store_of(&[gw.clone(), svc.clone()]), "cluster.local");
    let programmed = find(&no_pod.conditions, Kind::Gateway, "waypoint", "Programmed");
    assert!(
        !programmed.status && programmed.message.contains("no ready waypoint pod"),
        "{programmed:?}"
    );
    let key = ObjectKey {
        kind: Kind::Gateway,
        name: NamespacedName::new("shop", "waypoint"),
    };
    assert_eq!(no_pod.addresses[&key][0].type_, "IPAddress");
    assert_eq!(no_pod.addresses[&key][0].value, "10.96.255.9");

    let mut pod = pod_on("shop", "waypoint", "n1");
    pod["metadata"]["labels"] = json!({GATEWAY_NAME: "waypoint"});
    pod["status"] = json!({"phase": "Running", "podIP": "10.244.1.5"});
    let ready = status(
        &store_of(&[gw.clone(), svc.clone(), pod.clone()]),
        "cluster.local",
    );
    let programmed = find(&ready.conditions, Kind::Gateway, "waypoint", "Programmed");
    assert!(programmed.status, "{programmed:?}");
    assert!(programmed.message.contains("10.244.1.5"));

    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    let unready = status(&store_of(&[gw, svc, pod]), "cluster.local");
    assert!(!find(&unready.conditions, Kind::Gateway, "waypoint", "Programmed").status);

    // Without a ClusterIP the address is the Service's hostname.
    let headless = status(
        &store_of(&[
            gateway("shop", "w2", 15008, "HBONE", json!({})),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w2", "namespace": "shop"}, "spec": {}}),
        ]),
        "cluster.local",
    );
    let key = ObjectKey {
        kind: Kind::Gateway,
        name: NamespacedName::new("shop", "w2"),
    };
    assert_eq!(headless.addresses[&key][0].type_, "Hostname");
    assert_eq!(
        headless.addresses[&key][0].value,
        "w2.shop.svc.cluster.local"
    );
}

#[test]
fn invalid_gateways_are_not_accepted_with_a_reason() {
    let store = store_of(&[
        gateway("shop", "http", 80, "HTTP", json!({})),
        gateway(
            "shop",
            "typo",
            15008,
            "HBONE",
            json!({"istio.io/waypoint-for": "services"}),
        ),
    ]);
    let report = status(&store, "cluster.local");
    let http = find(&report.conditions, Kind::Gateway, "http", "Accepted");
    assert!(!http.status);
    assert_eq!(http.reason, "ListenersNotValid");
    assert!(
        http.message.contains("mesh (port 80, protocol HTTP)"),
        "{}",
        http.message
    );
    let typo = find(&report.conditions, Kind::Gateway, "typo", "Accepted");
    assert_eq!(typo.reason, "UnsupportedValue");
    assert!(typo.message.contains("\"services\""));
    assert_eq!(
        find(&report.conditions, Kind::Gateway, "typo", "Programmed").reason,
        "Invalid"
    );
}

#[test]
fn bound_services_get_waypoint_bound_and_others_do_not() {
    let store = store_of(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/use-waypoint": "waypoint"}}}),
        gateway("shop", "waypoint", 15008, "HBONE", json!({})),
        gateway(
            "shop",
            "pods",
            15008,
            "HBONE",
            json!({"istio.io/waypoint-for": "workload"}),
        ),
        service("shop", "via-namespace", "10.96.0.1", json!({})),
        service(
            "shop",
            "opted-out",
            "10.96.0.2",
            json!({"istio.io/use-waypoint": "#none"}),
        ),
        service(
            "shop",
            "own",
            "10.96.0.3",
            json!({"istio.io/use-waypoint": "waypoint"}),
        ),
        service(
            "shop",
            "workload-only",
            "10.96.0.4",
            json!({"istio.io/use-waypoint": "pods"}),
        ),
        service("other", "plain", "10.96.0.5", json!({})),
    ]);
    let report = status(&store, "cluster.local");
    let bound: Vec<&str> = report
        .conditions
        .iter()
        .filter(|c| c.type_ == WAYPOINT_BOUND)
        .map(|c| c.object.name.name.as_str())
        .collect();
    assert_eq!(bound, ["own", "via-namespace"]);
    let via = find(
        &report.conditions,
        Kind::Service,
        "via-namespace",
        WAYPOINT_BOUND,
    );
    assert!(
        via.status && via.message.contains("shop/waypoint") && via.message.contains("namespace")
    );
}

#[test]
fn provisioning_conditions_replace_translations_of_the_same_type() {
    let key = ObjectKey {
        kind: Kind::Gateway,
        name: NamespacedName::new("shop", "w"),
    };
    let c = |type_: &str, status: bool, reason: &str| ObjectCondition {
        object: key.clone(),
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: String::new(),
    };
    let merged = merge(
        &[
            c("Accepted", false, "InvalidWaypointFor"),
            c("Other", true, "Kept"),
        ],
        &[c("Accepted", false, "UnsupportedValue")],
    );
    let reasons: Vec<&str> = merged.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(reasons, ["UnsupportedValue", "Kept"]);
}
