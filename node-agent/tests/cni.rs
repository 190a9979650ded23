//! The `ambit-cni` binary run as a process, with real stdin and environment,
//! against a node agent running in-process on temporary sockets and a test
//! ztunnel: ADD, CHECK and DEL of an enrolled pod, refusals that leave
//! nothing behind, and every kind of bad invocation.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Event, Node, TestZtunnel, has_rules, net_conf, netns_id, pod_env, run_plugin};
use mesh_testkit::Netns;
use serde_json::{Value, json};

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=uid-cart-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee";

#[tokio::test]
async fn add_check_del_of_an_enrolled_pod() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    node.pod("shop", "cart-0", "uid-cart-0", None)?;
    let app = node.start("5s").await?;
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());

    let pod = Netns::new("cni-add")?;
    let netns = pod.path().display().to_string();
    let conf = net_conf(&node.cni_socket(), "10s");
    let started = std::time::Instant::now();
    let add = run_plugin(&pod_env("ADD", &netns, ARGS), &conf).await?;
    eprintln!(
        "ADD of an enrolled pod, plugin process included: {:?}",
        started.elapsed()
    );
    assert!(add.status.success(), "{add:?}");
    let prev: Value = serde_json::from_str::<Value>(&conf)?["prevResult"].clone();
    assert_eq!(add.json(), prev, "prevResult passes through unchanged");
    assert_eq!(
        ztunnel.next().await?,
        Event::Add {
            uid: "uid-cart-0".into(),
            name: "cart-0".into(),
            namespace: "shop".into(),
            service_account: "cart-0-sa".into(),
            netns: netns_id(&pod),
        }
    );
    assert!(has_rules(&pod));
    let record = node.state_dir().join("pods/uid-cart-0.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    assert_eq!(saved["enrolled"], true);
    assert_eq!(saved["ips"], json!(["10.22.0.5"]));

    let check = run_plugin(&pod_env("CHECK", &netns, ARGS), &conf).await?;
    assert!(check.status.success(), "{check:?}");
    assert_eq!(check.stdout, "");
    // CHECK notices rules someone removed.
    pod.exec("iptables", &["-t", "nat", "-F", "ISTIO_OUTPUT"])?;
    let check = run_plugin(&pod_env("CHECK", &netns, ARGS), &conf).await?;
    assert!(!check.status.success());
    assert_eq!(check.json()["code"], 101);

    let admin = reqwest_like(app.admin, "/debug/pods").await?;
    assert!(admin.contains("uid-cart-0"), "{admin}");
    let metrics = reqwest_like(app.admin, "/metrics").await?;
    for line in [
        "node_agent_pods_enrolled 1",
        "node_agent_zds_connections 1",
        "node_agent_zds_connections_accepted_total 1",
        r#"node_agent_operations_total{operation="enrol",result="ok",reason=""} 1"#,
        r#"node_agent_cni_requests_total{command="ADD",result="ok"} 1"#,
        r#"node_agent_cni_requests_total{command="CHECK",result="failed"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }

    let del = run_plugin(&pod_env("DEL", &netns, ARGS), &conf).await?;
    assert!(del.status.success(), "{del:?}");
    assert_eq!(del.stdout, "");
    assert_eq!(
        ztunnel.next().await?,
        Event::Del {
            uid: "uid-cart-0".into()
        }
    );
    assert!(!has_rules(&pod));
    assert!(!record.exists());
    // DEL again: nothing left, still fine.
    let del = run_plugin(&pod_env("DEL", &netns, ARGS), &conf).await?;
    assert!(del.status.success(), "{del:?}");
    app.shutdown().await;
    Ok(())
}

/// A tiny HTTP/1.1 GET, enough for the admin port.
async fn reqwest_like(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

#[tokio::test]
async fn a_pod_outside_the_mesh_is_recorded_but_not_wired() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", None)?;
    let app = node.start("5s").await?;
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    let pod = Netns::new("cni-out")?;
    let netns = pod.path().display().to_string();
    let add = run_plugin(
        &pod_env("ADD", &netns, ARGS),
        &net_conf(&node.cni_socket(), "10s"),
    )
    .await?;
    assert!(add.status.success(), "{add:?}");
    assert!(!has_rules(&pod));
    ztunnel.quiet(Duration::from_millis(300)).await?;
    assert!(node.state_dir().join("pods/uid-cart-0.json").exists());
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_nack_fails_the_add_and_leaves_nothing() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    let app = node.start("5s").await?;
    let mut ztunnel = TestZtunnel::connect(&node.zds_socket()).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    ztunnel.nack_adds(Some("no certificate for shop/cart-0"));
    let pod = Netns::new("cni-nack")?;
    let netns = pod.path().display().to_string();
    let add = run_plugin(
        &pod_env("ADD", &netns, ARGS),
        &net_conf(&node.cni_socket(), "10s"),
    )
    .await?;
    assert!(!add.status.success());
    let err = add.json();
    assert_eq!(err["code"], 100);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no certificate for shop/cart-0"),
        "{err}"
    );
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(!has_rules(&pod), "a refused pod keeps no rules");
    assert!(!node.state_dir().join("pods/uid-cart-0.json").exists());
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_a_ztunnel_the_add_fails_in_time_and_leaves_nothing() -> Result<()> {
    let node = Node::new()?;
    node.namespace("shop", Some("ambient"))?;
    let app = node.start("1s").await?;
    let pod = Netns::new("cni-noz")?;
    let netns = pod.path().display().to_string();
    let started = std::time::Instant::now();
    let add = run_plugin(
        &pod_env("ADD", &netns, ARGS),
        &net_conf(&node.cni_socket(), "3s"),
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!add.status.success());
    let err = add.json();
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("no ztunnel"), "{err}");
    assert!(!has_rules(&pod));
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_invocations_get_spec_shaped_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing_socket = dir.path().join("nobody.sock");
    let conf = net_conf(&missing_socket, "2s");
    let pod = Netns::new("cni-bad")?;
    let netns = pod.path().display().to_string();
    let check = |run: &common::PluginRun, code: u64| {
        assert!(!run.status.success(), "{run:?}");
        let err = run.json();
        assert_eq!(err["code"], code, "{err}");
        assert!(!err["msg"].as_str().unwrap().is_empty());
        assert!(err.get("details").is_some());
        assert!(err.get("cniVersion").is_some());
    };
    check(
        &run_plugin(&pod_env("ADD", &netns, ARGS), "{\"cniVersion\":").await?,
        6,
    );
    check(
        &run_plugin(
            &pod_env("ADD", &netns, ARGS),
            r#"{"cniVersion":"1.0.0","type":"ambit-cni"}"#,
        )
        .await?,
        7,
    );
    let mut env = pod_env("ADD", &netns, ARGS);
    env.retain(|(k, _)| *k != "CNI_CONTAINERID");
    check(&run_plugin(&env, &conf).await?, 4);
    check(&run_plugin(&[("CNI_CONTAINERID", "x")], &conf).await?, 4);
    check(&run_plugin(&pod_env("FROB", &netns, ARGS), &conf).await?, 4);
    check(
        &run_plugin(&pod_env("ADD", &netns, "K8S_POD_NAME"), &conf).await?,
        4,
    );
    let unreachable = run_plugin(&pod_env("ADD", &netns, ARGS), &conf).await?;
    check(&unreachable, 11);
    assert!(
        unreachable.json()["msg"]
            .as_str()
            .unwrap()
            .contains("nobody.sock")
    );

    // DEL without an agent: fine when nothing of ours is in the netns...
    let del = run_plugin(&pod_env("DEL", &netns, ARGS), &conf).await?;
    assert!(del.status.success(), "{del:?}");
    let gone = run_plugin(
        &pod_env("DEL", "/var/run/netns/does-not-exist", ARGS),
        &conf,
    )
    .await?;
    assert!(gone.status.success(), "{gone:?}");
    // ...and "try again later" when rules remain there.
    node_agent::redirect::apply::Redirector::default()
        .install(&pod.path(), &[node_agent::redirect::Family::V4], false)
        .await?;
    check(&run_plugin(&pod_env("DEL", &netns, ARGS), &conf).await?, 11);

    let version = run_plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#).await?;
    assert!(version.status.success());
    assert_eq!(
        version.json(),
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
    );
    Ok(())
}
