//! Enrolment that follows labels on running pods, reconciliation after a
//! restart, and a shutdown bounded by its deadline.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Event, Node, TestZtunnel, has_rules, net_conf, netns_id, pod_env, run_plugin};
use mesh_testkit::{Netns, eventually};

fn args(namespace: &str, name: &str) -> String {
    format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}")
}

async fn add(node: &Node, pod: &Netns, namespace: &str, name: &str) -> Result<()> {
    let netns = pod.path().display().to_string();
    let args = args(namespace, name);
    let run = run_plugin(
        &pod_env("ADD", &netns, &args),
        &net_conf(&node.cni_socket(), "10s"),
    )
    .await?;
    ensure!(run.status.success(), "ADD {namespace}/{name}: {run:?}");
    Ok(())
}

async fn rules(pod: &Netns, present: bool) -> Result<()> {
    eventually("rules in the pod netns", Duration::from_secs(5), || async {
        ensure!(has_rules(pod) == present, "rules present: {}", !present);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn labels_on_running_pods_enrol_and_remove_them_live() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", None)?;
    node.pod("shop", "cart-0", "uid-cart-0", None)?;
    let app = node.start("5s").await?;
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    let pod = Netns::new("live")?;
    add(&node, &pod, "shop", "cart-0").await?;
    assert!(!has_rules(&pod));

    // The namespace is labelled: the running pod joins.
    let started = Instant::now();
    node.namespace("shop", Some("ambient"))?;
    let event = ztunnel.next().await?;
    let took = started.elapsed();
    assert!(
        matches!(&event, Event::Add { uid, netns, .. } if uid == "uid-cart-0" && *netns == netns_id(&pod)),
        "{event:?}"
    );
    eprintln!("namespace label to ztunnel Add: {took:?}");
    assert!(took < Duration::from_secs(1), "enrolled after {took:?}");
    rules(&pod, true).await?;

    // The pod opts out: ztunnel lets go, then the rules go.
    let started = Instant::now();
    node.pod("shop", "cart-0", "uid-cart-0", Some("none"))?;
    assert_eq!(
        ztunnel.next().await?,
        Event::Del {
            uid: "uid-cart-0".into()
        }
    );
    rules(&pod, false).await?;
    let took = started.elapsed();
    eprintln!("pod opt-out to rules removed: {took:?}");
    assert!(took < Duration::from_secs(1), "removed after {took:?}");

    // The pod label goes; the namespace's applies again.
    node.pod("shop", "cart-0", "uid-cart-0", None)?;
    assert!(matches!(ztunnel.next().await?, Event::Add { uid, .. } if uid == "uid-cart-0"));
    rules(&pod, true).await?;

    // The pod is deleted from the registry: it leaves before its CNI DEL.
    std::fs::remove_file(node.resources().join("pod-shop-cart-0.yaml"))?;
    assert_eq!(
        ztunnel.next().await?,
        Event::Del {
            uid: "uid-cart-0".into()
        }
    );
    rules(&pod, false).await?;
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_restart_reconciles_rules_and_remembers_pods() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    node.namespace("bank", Some("ambient"))?;
    let (kept, leaving, gone) = (
        Netns::new("keep")?,
        Netns::new("leave")?,
        Netns::new("gone")?,
    );
    {
        let app = node.start("5s").await?;
        let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
        assert!(ztunnel.snapshot().await?.is_empty());
        add(&node, &kept, "shop", "cart-0").await?;
        add(&node, &leaving, "bank", "vault-0").await?;
        add(&node, &gone, "shop", "cart-1").await?;
        for _ in 0..3 {
            assert!(matches!(ztunnel.next().await?, Event::Add { .. }));
        }
        app.shutdown().await;
    }
    // While the agent is down: a label goes, a pod's netns goes, and
    // someone flushes a kept pod's rules.
    node.namespace("bank", None)?;
    let gone_path = gone.path();
    drop(gone);
    assert!(!gone_path.exists());
    kept.exec("iptables", &["-t", "nat", "-F", "ISTIO_OUTPUT"])?;

    let app = node.start("5s").await?;
    // Reconciled before the sockets open.
    assert!(
        !has_rules(&leaving),
        "rules left in an unlabelled namespace's pod"
    );
    let redirector = node_agent::redirect::apply::Redirector::default();
    assert!(
        redirector
            .is_installed(&kept.path(), &[node_agent::redirect::Family::V4], false)
            .await?
    );
    assert!(!node.state_dir().join("pods/uid-cart-1.json").exists());
    let leaving_record: serde_json::Value = serde_json::from_slice(&std::fs::read(
        node.state_dir().join("pods/uid-vault-0.json"),
    )?)?;
    assert_eq!(leaving_record["enrolled"], false);

    // A ztunnel connecting now is offered the kept pod, and only it.
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    let snapshot = ztunnel.snapshot().await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert!(
        matches!(&snapshot[0], Event::Add { uid, netns, .. } if uid == "uid-cart-0" && *netns == netns_id(&kept))
    );

    // Labelled again: the remembered pod joins without a CNI ADD.
    node.namespace("bank", Some("ambient"))?;
    assert!(matches!(ztunnel.next().await?, Event::Add { uid, .. } if uid == "uid-vault-0"));
    rules(&leaving, true).await?;
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_is_bounded_with_an_add_in_flight() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    let app = node.start("30s").await?;
    let pod = Netns::new("stop")?;
    let netns = pod.path().display().to_string();
    let args = args("shop", "cart-0");
    let conf = net_conf(&node.cni_socket(), "30s");
    let env: Vec<(String, String)> = pod_env("ADD", &netns, &args)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // No ztunnel: the ADD waits for one.
    let plugin = tokio::spawn(async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_plugin(&env, &conf).await
    });
    eventually("the ADD is in flight", Duration::from_secs(5), || async {
        ensure!(has_rules(&pod), "no rules yet");
        Ok(())
    })
    .await?;
    let started = Instant::now();
    app.shutdown().await;
    // The drain deadline is 2 s; forced work gets 1 s more.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let run = tokio::time::timeout(Duration::from_secs(5), plugin).await???;
    assert!(!run.status.success(), "{run:?}");
    assert_eq!(run.json()["code"], 11);
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{run:?}"
    );
    // The interrupted ADD was undone: no half-wired pod is left behind.
    assert!(!has_rules(&pod));
    assert!(!node.state_dir().join("pods/uid-cart-0.json").exists());
    Ok(())
}
