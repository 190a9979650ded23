//! `ambit-cni` chained after the standard `bridge` + `host-local` plugins,
//! as a runtime runs them: the bridge plugin's result is ambit-cni's
//! `prevResult` and comes out unchanged, the pod is enrolled with the
//! address the bridge gave it, and an outbound connection from the pod to
//! its gateway lands on 15001 inside the pod's netns.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{Event, Node, TestZtunnel, bridge, netns_id, pod_env, run_plugin};
use mesh_testkit::Netns;
use serde_json::{Value, json};

#[tokio::test]
async fn chained_after_bridge_the_pod_is_enrolled_and_redirected() -> Result<()> {
    let agent = Node::new()?;
    agent.namespace("shop", Some("ambient"))?;
    let app = agent.start("5s").await?;
    let mut ztunnel = TestZtunnel::connect(&agent.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());

    let node = Netns::new("node")?;
    let pod = Netns::new("pod")?;
    let network = format!("amb-chain-{}", std::process::id());
    let bridge_conf = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "bridge",
        "bridge": "amb0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "subnet": "10.77.0.0/24",
            "dataDir": agent.dir.path().join("ipam"),
        },
    });
    let result = bridge(&node, "ADD", &pod, &bridge_conf).await?;
    let address = result["ips"][0]["address"]
        .as_str()
        .context("an address")?
        .to_string();

    let conf = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "ambit-cni",
        "cniSocket": agent.cni_socket(),
        "timeout": "10s",
        "prevResult": result,
    });
    let netns = pod.path().display().to_string();
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=uid-cart-0";
    let add = run_plugin(&pod_env("ADD", &netns, args), &conf.to_string()).await?;
    assert!(add.status.success(), "{add:?}");
    assert_eq!(
        add.json(),
        result,
        "the bridge's result passes through unchanged"
    );
    assert!(
        matches!(ztunnel.next().await?, Event::Add { uid, netns, .. } if uid == "uid-cart-0" && netns == netns_id(&pod))
    );
    let record: Value = serde_json::from_slice(&std::fs::read(
        agent.state_dir().join("pods/uid-cart-0.json"),
    )?)?;
    assert_eq!(record["ips"][0], address.split('/').next().unwrap());

    // The app's connection to its gateway is captured inside the pod.
    let listener = pod.tcp_listener("0.0.0.0:15001".parse()?)?;
    let gateway: SocketAddr = "10.77.0.1:80".parse()?;
    let (client, accepted) = tokio::join!(
        pod.tcp_connect(gateway),
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
    );
    let _client = client?;
    let (stream, _) = accepted??;
    let original = socket2::SockRef::from(&stream).original_dst_v4()?;
    assert_eq!(original.as_socket(), Some(gateway));

    let del = run_plugin(&pod_env("DEL", &netns, args), &conf.to_string()).await?;
    assert!(del.status.success(), "{del:?}");
    assert_eq!(
        ztunnel.next().await?,
        Event::Del {
            uid: "uid-cart-0".into()
        }
    );
    bridge(&node, "DEL", &pod, &bridge_conf).await?;
    app.shutdown().await;
    Ok(())
}
