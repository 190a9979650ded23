//! Waypoint provisioning on Kubernetes, against an in-process API server
//! speaking the real protocol, through kube-rs's own client: objects applied
//! with server-side apply and owned by the Gateway, re-applied when the
//! Gateway changes, and the Gateway's status written.

use std::time::Duration;

use istiod_lite::model::{Kind, NamespacedName};
use istiod_lite::provision::{self, Settings, kube::KubeProvisioner};
use istiod_lite::registry::Registry;
use istiod_lite::registry::kube::resources::api_resource;
use istiod_lite::registry::kube::{KubeSource, KubeSourceOptions, client_from_config};
use mesh_testkit::eventually::eventually;
use mesh_testkit::fake_apiserver::{FakeApiServer, ResourceType};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(10);

fn resource_type(kind: Kind) -> ResourceType {
    let resource = api_resource(kind);
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    ResourceType {
        prefix,
        plural: resource.plural,
        api_version: resource.api_version,
        kind: resource.kind,
        namespaced: kind.namespaced(),
    }
}

fn extra(prefix: &str, plural: &str, api_version: &str, kind: &str) -> ResourceType {
    ResourceType {
        prefix: prefix.into(),
        plural: plural.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        namespaced: true,
    }
}

fn gateway(infrastructure_labels: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "waypoint", "namespace": "shop", "uid": "gw-uid-1",
                        "labels": {"istio.io/waypoint-for": "service"}},
           "spec": {"gatewayClassName": "istio-waypoint",
                    "infrastructure": {"labels": infrastructure_labels},
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

#[tokio::test]
async fn waypoint_objects_are_applied_owned_and_reported() {
    let mut installed: Vec<ResourceType> = Kind::ALL.iter().map(|&k| resource_type(k)).collect();
    installed.push(extra(
        "/apis/apps/v1",
        "deployments",
        "apps/v1",
        "Deployment",
    ));
    installed.push(extra("/api/v1", "configmaps", "v1", "ConfigMap"));
    let server = FakeApiServer::start(installed).await;
    server.apply(gateway(json!({"team": "a"})));
    server.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"istio.io/use-waypoint": "waypoint"}},
        "spec": {"clusterIP": "10.0.0.10", "ports": [{"port": 80}]}}));

    let client = client_from_config(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let registry = Registry::new();
    let source = KubeSource::start(
        client.clone(),
        registry.clone(),
        KubeSourceOptions::default(),
    );
    tokio::time::timeout(PATIENCE, source.wait_synced())
        .await
        .expect("synced");

    let settings = Settings {
        root_cert_pem: "ROOT PEM".into(),
        ..Settings::default()
    };
    let mut provisioner = KubeProvisioner::new(client.clone(), settings.clone());
    provisioner
        .apply(&registry.snapshot())
        .await
        .expect("applied");

    let deployment = server
        .object("/apis/apps/v1/deployments", "shop", "waypoint")
        .expect("Deployment created");
    let service = server
        .object("/api/v1/services", "shop", "waypoint")
        .expect("Service created");
    let account = server
        .object("/api/v1/serviceaccounts", "shop", "waypoint")
        .expect("ServiceAccount created");
    let config_map = server
        .object("/api/v1/configmaps", "shop", "istio-ca-root-cert")
        .expect("root certificate ConfigMap created");
    assert_eq!(config_map["data"]["root-cert.pem"], "ROOT PEM");
    for object in [&deployment, &service, &account] {
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway", "{object}");
        assert_eq!(owner["uid"], "gw-uid-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(object["metadata"]["labels"]["team"], "a");
    }
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "waypoint"
    );
    let applies: Vec<_> = server
        .patches()
        .into_iter()
        .filter(|p| p.content_type == "application/apply-patch+yaml")
        .collect();
    assert_eq!(
        applies.len(),
        4,
        "ConfigMap, ServiceAccount, Service, Deployment"
    );

    // Nothing changed: nothing is sent again.
    provisioner.apply(&registry.snapshot()).await.unwrap();
    assert_eq!(
        server
            .patches()
            .iter()
            .filter(|p| p.content_type == "application/apply-patch+yaml")
            .count(),
        4
    );

    // Kubernetes allocates the ClusterIP and runs the pod.
    let mut service = service.clone();
    service["spec"]["clusterIP"] = json!("10.0.0.77");
    server.apply(service);
    server.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waypoint-abc", "namespace": "shop",
                     "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
        "spec": {"containers": [{"name": "waypoint"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.5",
                   "conditions": [{"type": "Ready", "status": "True"}]}}));
    eventually("the waypoint programmed", PATIENCE, || {
        let store = registry.snapshot();
        async move {
            let report = provision::status::status(&store, "cluster.local");
            anyhow::ensure!(
                report
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status),
                "not programmed yet: {:?}",
                report.conditions
            );
            Ok(())
        }
    })
    .await
    .unwrap();
    let report = provision::status::status(&registry.snapshot(), "cluster.local");
    source
        .write_status(&report.conditions)
        .await
        .expect("status written");
    provisioner
        .write_addresses(&report.addresses)
        .await
        .expect("addresses written");
    let gw = server
        .object(
            "/apis/gateway.networking.k8s.io/v1/gateways",
            "shop",
            "waypoint",
        )
        .unwrap();
    let conditions = gw["status"]["conditions"].as_array().unwrap();
    let status_of = |type_: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| c["status"].clone())
    };
    assert_eq!(status_of("Accepted"), Some(json!("True")));
    assert_eq!(status_of("Programmed"), Some(json!("True")));
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.77"}])
    );
    let web = server.object("/api/v1/services", "shop", "web").unwrap();
    assert_eq!(
        web["status"]["conditions"][0]["type"],
        "istio.io/WaypointBound"
    );
    assert_eq!(web["status"]["conditions"][0]["status"], "True");

    // The Gateway's infrastructure labels change: the objects follow.
    server.apply(gateway(json!({"team": "b"})));
    eventually("the Gateway's new labels", PATIENCE, || {
        let store = registry.snapshot();
        async move {
            let gw = store
                .gateways
                .get(&NamespacedName::new("shop", "waypoint"))
                .ok_or_else(|| anyhow::anyhow!("Gateway gone"))?;
            let labels = gw
                .spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.labels.clone())
                .unwrap_or_default();
            anyhow::ensure!(
                labels.get("team").map(String::as_str) == Some("b"),
                "old labels"
            );
            Ok(())
        }
    })
    .await
    .unwrap();
    provisioner.apply(&registry.snapshot()).await.unwrap();
    let deployment = server
        .object("/apis/apps/v1/deployments", "shop", "waypoint")
        .unwrap();
    assert_eq!(deployment["metadata"]["labels"]["team"], "b");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["team"],
        "b"
    );
}
