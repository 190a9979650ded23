//! Kubelet probe SNAT (spec 6.2, `--probe-snat`): the node-agent binary runs
//! in a node netns bridged to a pod netns; a connection the node itself
//! opens to the enrolled pod reaches the app from 169.254.7.127 instead of
//! being captured to 15006, and the rule goes when the pod does.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Event, Node, TestZtunnel, bridge, pod_env, run_plugin};
use mesh_testkit::{Netns, eventually};
use serde_json::json;

#[tokio::test]
async fn probes_from_the_node_reach_the_app_uncaptured() -> Result<()> {
    let agent = Node::new()?;
    agent.namespace("shop", Some("ambient"))?;
    let node = Netns::new("pnode")?;
    let pod = Netns::new("ppod")?;
    let bin = env!("CARGO_BIN_EXE_node-agent");
    let resources = agent.resources().display().to_string();
    let zds = agent.zds_socket().display().to_string();
    let cni = agent.cni_socket().display().to_string();
    let state = agent.state_dir().display().to_string();
    let _process = node.spawn(
        bin,
        &[
            "--node",
            "node-a",
            "--dir",
            &resources,
            "--zds-socket",
            &zds,
            "--cni-socket",
            &cni,
            "--state-dir",
            &state,
            "--admin",
            "127.0.0.1:0",
            "--probe-snat",
            "--log",
            "warn",
        ],
    )?;
    let mut ztunnel = eventually(
        "the agent's ZDS socket answers",
        Duration::from_secs(20),
        || async {
            let mut ztunnel = TestZtunnel::connect(&agent.zds_socket()).await?;
            ensure!(ztunnel.snapshot().await?.is_empty());
            Ok(ztunnel)
        },
    )
    .await?;

    let network = format!("amb-probe-{}", std::process::id());
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": network, "type": "bridge", "bridge": "amb1", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.78.0.0/24", "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": agent.dir.path().join("ipam")},
    });
    let result = bridge(&node, "ADD", &pod, &bridge_conf).await?;
    let address = result["ips"][0]["address"].as_str().context("an address")?;
    let pod_ip = address.split('/').next().unwrap().to_string();
    let conf = json!({"cniVersion": "1.0.0", "name": network, "type": "ambit-cni",
                      "cniSocket": agent.cni_socket(), "timeout": "10s", "prevResult": result});
    let netns = pod.path().display().to_string();
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=uid-web-0";
    let add = run_plugin(&pod_env("ADD", &netns, args), &conf.to_string()).await?;
    assert!(add.status.success(), "{add:?}");
    assert!(matches!(ztunnel.next().await?, Event::Add { .. }));
    let saved = node.exec("iptables-save", &["-t", "nat"])?;
    assert!(
        saved.contains(&format!("-A ISTIO_POSTRT -d {pod_ip}/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127")),
        "{saved}"
    );

    // The app, and ztunnel's inbound capture port, inside the pod.
    let app = pod.tcp_listener("0.0.0.0:8080".parse()?)?;
    let capture = pod.tcp_listener("0.0.0.0:15006".parse()?)?;
    let target = format!("{pod_ip}:8080").parse()?;
    let (probe, accepted) = tokio::join!(
        node.tcp_connect(target),
        tokio::time::timeout(Duration::from_secs(5), app.accept())
    );
    let _probe = probe?;
    let (_, peer) = accepted.context("the probe did not reach the app")??;
    assert_eq!(peer.ip().to_string(), "169.254.7.127");
    let captured = tokio::time::timeout(Duration::from_millis(200), capture.accept()).await;
    assert!(captured.is_err(), "the probe was captured");

    // Control: without the SNAT rule the same connection is captured.
    node.exec("iptables", &["-t", "nat", "-F", "ISTIO_POSTRT"])?;
    let (unsnatted, captured) = tokio::join!(
        node.tcp_connect(target),
        tokio::time::timeout(Duration::from_secs(5), capture.accept())
    );
    let _unsnatted = unsnatted?;
    captured.context("without SNAT the connection was not captured")??;

    let del = run_plugin(&pod_env("DEL", &netns, args), &conf.to_string()).await?;
    assert!(del.status.success(), "{del:?}");
    let saved = node.exec("iptables-save", &["-t", "nat"])?;
    assert!(!saved.contains(&pod_ip), "{saved}");
    bridge(&node, "DEL", &pod, &bridge_conf).await?;
    Ok(())
}
