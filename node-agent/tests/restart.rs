//! The node-agent binary killed (SIGKILL, no chance to clean up) and started
//! again after labels changed: the rules are right and the pods it knew are
//! offered to the next ztunnel.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Event, Node, TestZtunnel, has_rules, net_conf, netns_id, pod_env, run_plugin};
use mesh_testkit::{Netns, eventually};

fn spawn_agent(node: &Node) -> Result<tokio::process::Child> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--node", "node-a", "--admin", "127.0.0.1:0", "--dir"])
        .arg(node.resources())
        .arg("--zds-socket")
        .arg(node.zds_socket())
        .arg("--cni-socket")
        .arg(node.cni_socket())
        .arg("--state-dir")
        .arg(node.state_dir())
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node-agent")
}

/// A ztunnel connected to a (re)started agent, past its snapshot.
async fn connect_ztunnel(node: &Node) -> Result<(TestZtunnel, Vec<Event>)> {
    eventually(
        "the agent's ZDS socket answers",
        Duration::from_secs(20),
        || async {
            let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
            let snapshot = ztunnel.snapshot().await?;
            Ok((ztunnel, snapshot))
        },
    )
    .await
}

async fn add(node: &Node, pod: &Netns, namespace: &str, name: &str) -> Result<()> {
    let netns = pod.path().display().to_string();
    let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}");
    let run = run_plugin(
        &pod_env("ADD", &netns, &args),
        &net_conf(&node.cni_socket(), "10s"),
    )
    .await?;
    ensure!(run.status.success(), "ADD {namespace}/{name}: {run:?}");
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_reconciles_when_it_comes_back() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    node.namespace("bank", Some("ambient"))?;
    let (kept, leaving) = (Netns::new("kill-keep")?, Netns::new("kill-leave")?);

    let mut agent = spawn_agent(&node)?;
    let (mut ztunnel, snapshot) = connect_ztunnel(&node).await?;
    assert!(snapshot.is_empty());
    add(&node, &kept, "shop", "cart-0").await?;
    add(&node, &leaving, "bank", "vault-0").await?;
    for _ in 0..2 {
        assert!(matches!(ztunnel.next().await?, Event::Add { .. }));
    }
    agent.kill().await?;
    drop(ztunnel);

    node.namespace("bank", None)?;
    let _agent = spawn_agent(&node)?;
    let (_ztunnel, snapshot) = connect_ztunnel(&node).await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert!(
        matches!(&snapshot[0], Event::Add { uid, netns, .. } if uid == "uid-cart-0" && *netns == netns_id(&kept))
    );
    assert!(has_rules(&kept));
    assert!(!has_rules(&leaving));
    Ok(())
}
