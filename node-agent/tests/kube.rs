//! The node agent on the Kubernetes source: namespaces and pods from an
//! in-process API server speaking the real list/watch protocol, read through
//! a kubeconfig, enrolling a pod when its namespace is labelled.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Event, Node, TestZtunnel, has_rules, net_conf, pod_env, run_plugin};
use mesh_registry::kube::resources::api_resource;
use mesh_registry::model::Kind;
use mesh_testkit::fake_apiserver::{FakeApiServer, ResourceType};
use mesh_testkit::{Netns, eventually};
use serde_json::{Value, json};

fn resource_type(kind: Kind) -> ResourceType {
    let resource = api_resource(kind);
    ResourceType {
        prefix: format!("/api/{}", resource.version),
        plural: resource.plural,
        api_version: resource.api_version,
        kind: resource.kind,
        namespaced: kind.namespaced(),
    }
}

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": labels}})
}

#[tokio::test]
async fn namespace_labels_from_the_api_server_enrol_a_running_pod() -> Result<()> {
    let server =
        FakeApiServer::start([resource_type(Kind::Namespace), resource_type(Kind::Pod)]).await;
    server.apply(namespace(json!({})));
    server.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cart-0", "namespace": "shop", "uid": "uid-cart-0"},
        "spec": {"nodeName": "node-a", "serviceAccountName": "cart", "containers": [{"name": "app"}]}}));
    let node = Node::new()?;
    let kubeconfig = node.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
             current-context: c\n",
            server.url()
        ),
    )?;
    let source = [
        "--source".to_string(),
        "kube".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ];
    let app = node.start_with(&source, "5s").await?;
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    let pod = Netns::new("kube")?;
    let netns = pod.path().display().to_string();
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=uid-cart-0";
    let add = run_plugin(
        &pod_env("ADD", &netns, args),
        &net_conf(&node.cni_socket(), "10s"),
    )
    .await?;
    assert!(add.status.success(), "{add:?}");
    assert!(!has_rules(&pod));

    server.apply(namespace(json!({"istio.io/dataplane-mode": "ambient"})));
    let event = ztunnel.next().await?;
    assert!(
        matches!(&event, Event::Add { uid, service_account, .. } if uid == "uid-cart-0" && service_account == "cart"),
        "{event:?}"
    );
    eventually("rules installed", Duration::from_secs(5), || async {
        anyhow::ensure!(has_rules(&pod));
        Ok(())
    })
    .await?;
    app.shutdown().await;
    Ok(())
}
