//! ztunnel in in-pod mode, in-process, against a test-side node agent: pods
//! are real network namespaces carrying the node agent's redirection rules
//! (spec 6.1), the agent hands them over ZDS with their netns descriptors, and
//! apps in the pods talk through the listeners ztunnel opened inside them.

#[path = "waypoint/standin.rs"]
mod standin;
#[path = "inpod/support.rs"]
mod support;

use std::path::Path;

use anyhow::{Result, ensure};
use mesh_api::istio::workload::zds::{AddWorkload, ZdsHello, workload_request::Payload};
use mesh_core::drain::DrainOutcome;
use mesh_testkit::{eventually, require_root};
use std::time::Duration;
use support::*;
use ztunnel::config::HumanDuration;

/// Pods A and B on one link (10.77.1.0/24), C and B on another (10.77.2.0/24),
/// all enrolled. Only B and C are in the mesh model: A is a brand-new pod the
/// control plane does not know yet.
fn three_pods(dir: &Path) -> Result<(Pod, Pod, Pod)> {
    let (mut a, mut b, mut c) = (Pod::new("a")?, Pod::new("b")?, Pod::new("c")?);
    link(&mut a, &mut b, "10.77.1")?;
    link(&mut c, &mut b, "10.77.2")?;
    for p in [&a, &b, &c] {
        p.enrol(dir)?;
    }
    Ok((a, b, c))
}

/// Listening sockets on `port` in the pod's netns.
fn listeners_on(pod: &Pod, port: u16) -> Result<usize> {
    let out = pod.ns.exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

async fn until_ready(zt: &Ztunnel) -> Result<()> {
    eventually("ztunnel ready", PATIENCE, || async {
        let (code, body) = zt.ready().await?;
        ensure!(code == 200, "{code} {body}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pods_talk_over_hbone_from_the_snapshot_and_a_deleted_pod_goes_alone() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (a, b, c) = three_pods(dir.path())?;
    let app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let workloads = format!("{}\n{}", workload_yaml(&b), workload_yaml(&c));
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &workloads)?).await?;
    let conn = agent.accept().await?;

    let (code, body) = zt.ready().await?;
    ensure!(
        code == 500 && body.contains("ZDS snapshot"),
        "{code} {body}"
    );
    conn.snapshot(&[&a, &b, &c]).await?;
    until_ready(&zt).await?;

    // A's first connection: captured in A, HBONE from A's netns to B's 15008,
    // delivered to B's app from A's own address.
    let mut ab = a.connect(b.ips[0]).await?;
    roundtrip(&mut ab, b"from a").await?;
    ensure!(
        app_b.caller_ips() == vec![a.ips[0]],
        "B's app saw {:?}, not A's address",
        app_b.caller_ips()
    );
    let metrics = zt.metrics().await?;
    let src = format!("source_principal=\"{}\"", a.identity());
    let dst = format!("destination_principal=\"{}\"", b.identity());
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        ensure!(
            opened_with(
                &metrics,
                &[
                    reporter,
                    &src,
                    &dst,
                    "connection_security_policy=\"mutual_tls\""
                ]
            ),
            "no mTLS {reporter} line from A to B in\n{metrics}"
        );
    }
    ensure!(metrics.contains("workload_manager_active_proxy_count 3"));
    ensure!(metrics.contains("ambit_zds_connected 1"));
    let mut cb = c.connect(b.ips[1]).await?;
    roundtrip(&mut cb, b"from c").await?;

    let dump = zt.config_dump().await?;
    let pods = dump["workloadState"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(pods.len() == 3, "{pods:?}");
    ensure!(
        pods.iter().any(|p| p["uid"] == a.uid.as_str()
            && p["state"] == "Up"
            && p["identity"] == a.identity().as_str()
            && p["netns"].as_str().is_some_and(|n| n.starts_with("net:["))),
        "{pods:?}"
    );

    // Deleting A closes A's listeners and, by the Ack, its connections (an
    // idle one once the release deadline has passed)...
    ensure!(conn.del(&a.uid).await?.is_empty());
    closed(&mut ab).await?;
    ensure!(
        a.connect(b.ips[0]).await.is_err(),
        "A's outbound listener still accepts"
    );
    // ...and leaves B and C alone.
    roundtrip(&mut cb, b"still here").await?;
    let mut cb2 = c.connect(b.ips[1]).await?;
    roundtrip(&mut cb2, b"and new").await?;
    let pods = zt.config_dump().await?["workloadState"].clone();
    ensure!(pods.as_array().map(Vec::len) == Some(2), "{pods}");
    ensure!(
        zt.metrics()
            .await?
            .contains("workload_manager_active_proxy_count 2")
    );

    drop((cb, cb2));
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_restarted_ztunnel_serves_the_pods_again_from_the_snapshot() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("a")?, Pod::new("b")?);
    link(&mut a, &mut b, "10.77.1")?;
    a.enrol(dir.path())?;
    b.enrol(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let workloads = format!("{}\n{}", workload_yaml(&a), workload_yaml(&b));
    let config = config(dir.path(), &agent.path, &workloads)?;

    let first = Ztunnel::start(config.clone()).await?;
    // Held until the first ztunnel is gone, so it does not reconnect.
    let first_conn = agent.accept().await?;
    first_conn.snapshot(&[&a, &b]).await?;
    roundtrip(&mut a.connect(b.ips[0]).await?, b"one").await?;
    first.stop().await?;
    drop(first_conn);
    // Nothing listens in the pods now: the captured connect is refused.
    ensure!(a.connect(b.ips[0]).await.is_err());

    let second = Ztunnel::start(config).await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a, &b]).await?;
    until_ready(&second).await?;
    roundtrip(&mut a.connect(b.ips[0]).await?, b"two").await?;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_second_ztunnel_binds_the_same_pod_ports_while_the_first_serves() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("a")?, Pod::new("b")?);
    link(&mut a, &mut b, "10.77.1")?;
    a.enrol(dir.path())?;
    b.enrol(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let workloads = format!("{}\n{}", workload_yaml(&a), workload_yaml(&b));
    let old_agent = NodeAgent::bind(dir.path().join("old.sock"))?;
    let new_agent = NodeAgent::bind(dir.path().join("new.sock"))?;

    let mut old_config = config(dir.path(), &old_agent.path, &workloads)?;
    old_config.proxy.drain_deadline = HumanDuration(Duration::from_secs(3));
    let old = Ztunnel::start(old_config).await?;
    let old_conn = old_agent.accept().await?;
    old_conn.snapshot(&[&a, &b]).await?;
    let mut long_lived = a.connect(b.ips[0]).await?;
    roundtrip(&mut long_lived, b"before").await?;

    // The new ztunnel binds the same ports in the same pods (an ACK means bound).
    let new = Ztunnel::start(config(dir.path(), &new_agent.path, &workloads)?).await?;
    let new_conn = new_agent.accept().await?;
    new_conn.snapshot(&[&a, &b]).await?;
    until_ready(&new).await?;
    ensure!(listeners_on(&a, 15001)? == 2 && listeners_on(&b, 15008)? == 2);
    for i in 0..4 {
        roundtrip(
            &mut a.connect(b.ips[0]).await?,
            format!("both {i}").as_bytes(),
        )
        .await?;
    }

    // The old one drains: its listeners close at once, its open connection
    // carries on until the deadline, new connections reach the new one.
    old.shutdown.trigger();
    eventually(
        "the old ztunnel's pod listeners closed",
        PATIENCE,
        || async {
            ensure!(listeners_on(&a, 15001)? == 1 && listeners_on(&b, 15008)? == 1);
            Ok(())
        },
    )
    .await?;
    roundtrip(&mut long_lived, b"during the drain").await?;
    for i in 0..4 {
        roundtrip(
            &mut a.connect(b.ips[0]).await?,
            format!("after {i}").as_bytes(),
        )
        .await?;
    }
    let outcome = tokio::time::timeout(PATIENCE, old.running).await??;
    ensure!(outcome == DrainOutcome::Forced, "{outcome:?}");
    closed(&mut long_lived).await?;
    let metrics = new.metrics().await?;
    ensure!(
        opened_with(
            &metrics,
            &[
                "reporter=\"destination\"",
                &format!("source_principal=\"{}\"", a.identity())
            ]
        ),
        "the new ztunnel carried nothing:\n{metrics}"
    );
    new.stop().await?;
    Ok(())
}

#[tokio::test]
async fn protocol_violations_are_nacked_and_end_ztunnel_with_a_failure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let own_netns = Path::new("/proc/self/ns/net");
    let no_info = || {
        Payload::Add(AddWorkload {
            uid: "uid-x".into(),
            workload_info: None,
        })
    };
    for (case, snapshot_first, payload, expected) in [
        (
            "keep after SnapshotSent",
            true,
            Payload::Keep(Default::default()),
            "after SnapshotSent",
        ),
        (
            "second SnapshotSent",
            true,
            Payload::SnapshotSent(Default::default()),
            "second SnapshotSent",
        ),
        (
            "add without workload_info",
            false,
            no_info(),
            "without workload_info",
        ),
    ] {
        let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
        let zt = Ztunnel::start(config(dir.path(), &agent.path, "")?).await?;
        let conn = agent.accept().await?;
        if snapshot_first {
            conn.snapshot(&[]).await?;
        }
        let netns = matches!(payload, Payload::Add(_)).then_some(own_netns);
        let nack = conn.request(payload, netns).await?;
        ensure!(nack.contains(expected), "{case}: NACK {nack:?}");
        tokio::time::timeout(PATIENCE, zt.running).await??;
        let failure = zt.shutdown.failure().unwrap_or_default();
        ensure!(
            failure.contains("ZDS protocol violation"),
            "{case}: {failure:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreadable_message_is_nacked_and_ztunnel_reconnects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let zt = Ztunnel::start(config(dir.path(), &agent.path, "")?).await?;
    let conn = agent.accept().await?;
    // A hello is no WorkloadRequest: field 1 does not decode as AddWorkload.
    conn.socket.send(&ZdsHello { version: 7 }, None).await?;
    let nack = conn.ack().await?;
    ensure!(!nack.is_empty(), "garbage was ACKed");
    let again = agent.accept().await?;
    // A pod whose netns is not known yet is kept during the snapshot.
    ensure!(again.keep("uid-later").await?.is_empty());
    again.snapshot(&[]).await?;
    until_ready(&zt).await?;
    ensure!(zt.shutdown.failure().is_none());
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn pods_outlive_a_lost_connection_and_the_next_snapshot_reconciles() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("a")?, Pod::new("b")?);
    link(&mut a, &mut b, "10.77.1")?;
    a.enrol(dir.path())?;
    b.enrol(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let workloads = format!("{}\n{}", workload_yaml(&a), workload_yaml(&b));
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &workloads)?).await?;
    agent.accept().await?.snapshot(&[&a, &b]).await?;
    let mut ab = a.connect(b.ips[0]).await?;
    roundtrip(&mut ab, b"before").await?;

    // The node agent restarts (the first connection was dropped above):
    // ztunnel reconnects, and the pods serve on meanwhile.
    let conn = agent.accept().await?;
    roundtrip(&mut ab, b"while reconnecting").await?;
    // The new snapshot no longer names B: B's proxy is drained at once.
    ensure!(conn.add(&a).await?.is_empty(), "same netns: a no-op ACK");
    ensure!(conn.snapshot_sent().await?.is_empty());
    closed(&mut ab).await?;
    let pods = zt.config_dump().await?["workloadState"].clone();
    ensure!(
        pods.as_array().map(|p| p.len()) == Some(1) && pods[0]["uid"] == a.uid.as_str(),
        "{pods}"
    );
    // A still serves; B's HBONE port is gone, so A's new connection fails.
    let mut again = a.connect(b.ips[0]).await?;
    closed(&mut again).await?;
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_that_cannot_start_is_nacked_kept_pending_and_retried() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let a = Pod::new("a")?;
    // Something else holds A's outbound port (without SO_REUSEPORT).
    let blocker = a.ns.run(|| std::net::TcpListener::bind("[::]:15001"))?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let zt = Ztunnel::start(config(dir.path(), &agent.path, "")?).await?;
    let conn = agent.accept().await?;
    let nack = conn.add(&a).await?;
    ensure!(
        nack.contains("default/a") && nack.contains("outbound listener on port 15001"),
        "{nack:?}"
    );
    // Sent again, it is tried again (not taken as already running).
    ensure!(conn.add(&a).await? == nack);
    ensure!(conn.snapshot_sent().await?.is_empty());
    let (code, body) = zt.ready().await?;
    ensure!(
        code == 500 && body.contains("pods pending"),
        "{code} {body}"
    );
    let pods = zt.config_dump().await?["workloadState"].clone();
    ensure!(pods[0]["state"] == "Pending", "{pods}");

    drop(blocker);
    until_ready(&zt).await?;
    let pods = zt.config_dump().await?["workloadState"].clone();
    ensure!(pods[0]["state"] == "Up", "{pods}");
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn without_the_capabilities_in_pod_mode_needs_ztunnel_fails_fast_naming_them() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let file = dir.path().join("ztunnel.yaml");
    std::fs::write(
        &file,
        format!(
            "proxy:\n  inpod: {{socket: {}/zds.sock}}\n  certificates: {{ca: {{cert: root.pem, key: root.key}}}}\n  \
             listeners: {{admin: 127.0.0.1:0, metrics: 127.0.0.1:0, readiness: 127.0.0.1:0}}\n",
            dir.path().display()
        ),
    )?;
    for (dropped, expected) in [
        ("-sys_admin", "setns needs CAP_SYS_ADMIN"),
        ("-net_admin,-net_raw", "cannot set SO_MARK 1337"),
    ] {
        // Root without these capabilities in its bounding set loses them at exec.
        let run = tokio::process::Command::new("setpriv")
            .arg(format!("--bounding-set={dropped}"))
            .arg(env!("CARGO_BIN_EXE_ztunnel"))
            .arg("--config")
            .arg(&file)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PATIENCE, run).await??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "{dropped}: {:?} {stderr}",
            out.status
        );
        ensure!(stderr.contains(expected), "{dropped}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn a_pods_own_record_in_the_model_gives_its_policy_and_labels() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (a, b, c) = three_pods(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    // B's record names a policy that denies A's identity, and B's canonical
    // name; C's record has another name than the pod, so only its address
    // ties it to the pod.
    let model = format!(
        "{}\n{}, canonicalName: bee, authorizationPolicies: [default/no-a]}}\n\
         authorizationPolicies:\n\
         - {{name: no-a, namespace: default, scope: WORKLOAD_SELECTOR, action: DENY,\n   \
         rules: [{{clauses: [{{matches: [{{principals: ['cluster.local/ns/default/sa/a']}}]}}]}}]}}",
        workload_yaml(&c).replace("name: c,", "name: c-record,"),
        workload_yaml(&b).trim_end_matches('}'),
    );
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &model)?).await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a, &b, &c]).await?;
    until_ready(&zt).await?;

    let mut ab = a.connect(b.ips[0]).await?;
    closed(&mut ab).await?;
    let mut cb = c.connect(b.ips[1]).await?;
    roundtrip(&mut cb, b"c is allowed").await?;

    let metrics = zt.metrics().await?;
    let denied = metrics.lines().any(|l| {
        l.starts_with("istio_tcp_connections_failed_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("response_flags=\"DENY\"")
            && l.contains(&format!("source_principal=\"{}\"", a.identity()))
            && l.contains("destination_canonical_service=\"bee\"")
    });
    ensure!(denied, "no DENY of A at B in\n{metrics}");
    ensure!(opened_with(
        &metrics,
        &[
            "reporter=\"source\"",
            "source_workload=\"c-record\"",
            "destination_canonical_service=\"bee\""
        ]
    ));
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn ipv6_pods_talk_over_hbone_and_the_app_sees_the_caller() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("a6")?, Pod::new("b6")?);
    link_v6(&mut a, &mut b, 1)?;
    a.enrol(dir.path())?;
    b.enrol(dir.path())?;
    let app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &workload_yaml(&b))?).await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a, &b]).await?;
    until_ready(&zt).await?;

    let mut ab = a.connect(b.ips[0]).await?;
    roundtrip(&mut ab, b"over ipv6").await?;
    ensure!(
        app_b.caller_ips() == vec![a.ips[0]],
        "B's app saw {:?}",
        app_b.caller_ips()
    );
    let metrics = zt.metrics().await?;
    ensure!(
        opened_with(
            &metrics,
            &[
                "reporter=\"destination\"",
                &format!("source_principal=\"{}\"", a.identity()),
                "connection_security_policy=\"mutual_tls\""
            ]
        ),
        "no mTLS line for the IPv6 connection in\n{metrics}"
    );
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn new_connections_keep_working_while_the_old_ztunnel_hands_over() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("a")?, Pod::new("b")?);
    link(&mut a, &mut b, "10.77.1")?;
    a.enrol(dir.path())?;
    b.enrol(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let workloads = format!("{}\n{}", workload_yaml(&a), workload_yaml(&b));
    let old_agent = NodeAgent::bind(dir.path().join("old.sock"))?;
    let new_agent = NodeAgent::bind(dir.path().join("new.sock"))?;
    let old = Ztunnel::start(config(dir.path(), &old_agent.path, &workloads)?).await?;
    let old_conn = old_agent.accept().await?;
    old_conn.snapshot(&[&a, &b]).await?;
    let new = Ztunnel::start(config(dir.path(), &new_agent.path, &workloads)?).await?;
    let new_conn = new_agent.accept().await?;
    new_conn.snapshot(&[&a, &b]).await?;

    // Connections one after another, before, during and after the old one's drain.
    let (mut ok, mut failed) = (0, Vec::new());
    let mut old = Some(old);
    let mut draining = None;
    for i in 0..300 {
        if i == 100 {
            let o = old.take().expect("old ztunnel");
            o.shutdown.trigger();
            draining = Some(o.running);
        }
        let attempt = async {
            let mut s = a.connect(b.ips[0]).await?;
            roundtrip(&mut s, format!("n{i}").as_bytes()).await
        };
        match attempt.await {
            Ok(()) => ok += 1,
            Err(e) => failed.push(format!("{i}: {e:#}")),
        }
    }
    ensure!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
    if let Some(running) = draining {
        tokio::time::timeout(PATIENCE, running).await??;
    }
    new.stop().await?;
    drop((old_conn, new_conn));
    Ok(())
}

/// A captured connection from an enrolled pod to a pod bound to a waypoint
/// leaves the pod's netns over HBONE to the waypoint pod (a stand-in with the
/// waypoint's certificate, in its own netns), with the pod-IP authority, the
/// caller in `forwarded` and the caller's identity on the TLS hop.
#[tokio::test]
async fn a_pods_connection_to_a_waypoint_bound_pod_goes_to_the_waypoint() -> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let ca = mesh_core::tls::CertificateAuthority::from_pem(
        &std::fs::read_to_string(dir.path().join("root.pem"))?,
        &std::fs::read_to_string(dir.path().join("root.key"))?,
    )?;
    // A (enrolled) -- W (the waypoint, never captured); B's address lies beyond W.
    let (mut a, mut w) = (Pod::new("wpa")?, Pod::new("wpw")?);
    link(&mut a, &mut w, "10.78.1")?;
    a.ns.ip(&["route", "add", "10.78.2.0/24", "via", "10.78.1.2"])?;
    a.enrol(dir.path())?;
    let waypoint_id = mesh_core::Identity::new("cluster.local", "default", "waypoint")?;
    let mut waypoint = standin::HboneServer::serve(
        &ca,
        &waypoint_id,
        w.ns.tcp_listener("10.78.1.2:15008".parse()?)?,
    )
    .await?;
    ensure!(waypoint.addr == "10.78.1.2:15008".parse()?);
    let model = format!(
        "{}
- name: waypoint-0
  namespace: default
  serviceAccount: waypoint
  addresses: [10.78.1.2]
  tunnelProtocol: NONE
  services: {{default/waypoint.default.svc.cluster.local: [{{servicePort: 15008, targetPort: 15008}}]}}
- name: b
  namespace: default
  serviceAccount: b
  addresses: [10.78.2.1]
  waypoint: {{hostname: {{namespace: default, hostname: waypoint.default.svc.cluster.local}}}}
services:
- {{name: waypoint, namespace: default, addresses: [10.96.78.1], ports: [{{servicePort: 15008, targetPort: 15008}}]}}",
        workload_yaml(&a)
    );
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &model)?).await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a]).await?;
    until_ready(&zt).await?;

    let mut ab = a.connect("10.78.2.1".parse()?).await?;
    roundtrip(&mut ab, b"to b via the waypoint").await?;
    let seen = waypoint.next().await?;
    ensure!(
        seen.authority == "10.78.2.1:8080".parse()?,
        "{:?}",
        seen.authority
    );
    let client = ab.local_addr()?;
    ensure!(
        seen.forwarded == Some(format!("for=\"{client}\"")),
        "{:?} (client {client})",
        seen.forwarded
    );
    ensure!(
        seen.peer_identity.as_ref().map(|i| i.to_string()) == Some(a.identity()),
        "{:?}",
        seen.peer_identity
    );
    drop(ab);
    zt.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_pods_open_connections_are_served_until_the_deadline_and_closed_before_the_ack()
-> Result<()> {
    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (mut a, mut b) = (Pod::new("release-a")?, Pod::new("release-b")?);
    link(&mut a, &mut b, "10.77.5")?;
    for p in [&a, &b] {
        p.enrol(dir.path())?;
    }
    let _app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let zt = Ztunnel::start(config(dir.path(), &agent.path, &workload_yaml(&b))?).await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a, &b]).await?;
    until_ready(&zt).await?;
    let mut ab = a.connect(b.ips[0]).await?;
    roundtrip(&mut ab, b"before").await?;

    // While ztunnel releases A, its listeners are gone but the connection it
    // holds is still served: the node agent has stopped redirecting new
    // connections by then, and this one ends properly rather than hangs.
    let started = std::time::Instant::now();
    let (ack, during) = tokio::join!(conn.del(&a.uid), async {
        eventually("A's outbound listener closed", PATIENCE, || async {
            ensure!(listeners_on(&a, 15001)? == 0, "still listening");
            Ok(())
        })
        .await?;
        roundtrip(&mut ab, b"during the release").await?;
        Ok::<_, anyhow::Error>(started.elapsed())
    });
    let during = during?;
    ensure!(ack?.is_empty(), "Del NACKed");
    let acked = started.elapsed();
    ensure!(
        during < Duration::from_secs(1),
        "served only after {during:?}"
    );
    // The Ack comes once the idle connection was closed at the deadline.
    ensure!(
        acked >= Duration::from_secs(1) && acked < Duration::from_secs(4),
        "acked after {acked:?}"
    );
    closed(&mut ab).await?;
    zt.stop().await?;
    Ok(())
}

/// A pod's record as the control plane sends it.
fn xds_workload(pod: &Pod, policies: &[&str]) -> mesh_api::istio::workload::Address {
    use mesh_api::istio::workload as xw;
    let addresses = pod
        .ips
        .iter()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        })
        .collect();
    xw::Address {
        r#type: Some(xw::address::Type::Workload(xw::Workload {
            uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: "default".into(),
            service_account: pod.service_account.clone(),
            addresses,
            tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
            authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn inbound_to_a_pod_xds_has_not_described_waits_for_its_record_and_its_policy() -> Result<()>
{
    use mesh_api::istio::security as xsec;
    use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
    use mesh_testkit::xds_server::{XdsServer, resource};
    use tokio::io::AsyncWriteExt;

    require_root();
    let dir = tempfile::tempdir()?;
    write_ca(dir.path())?;
    let (a, b, c) = three_pods(dir.path())?;
    let _app_b = EchoApp::start(&b)?;
    let agent = NodeAgent::bind(dir.path().join("zds.sock"))?;
    let server = XdsServer::start().await?;
    let root = dir.path().join("xds-root.pem");
    std::fs::write(&root, server.root_pem())?;
    let mut config = config(dir.path(), &agent.path, "")?;
    config.proxy.xds = ztunnel::Config::parse(&format!(
        "
proxy:
  workload: default/x
  certificates: {{ca: {{cert: r, key: k}}}}
  xds: {{address: {}, rootCert: {}, token: t, nodeName: node-a, podName: zt, instanceIp: 10.1.0.2}}
",
        server.address(),
        root.display()
    ))?
    .proxy
    .xds;
    let zt = Ztunnel::start(config).await?;
    eventually("both subscriptions", PATIENCE, || async {
        ensure!(server.requests().len() >= 2);
        Ok(())
    })
    .await?;
    // Only A is described; the DENY of plaintext is known but selects no pod yet.
    server
        .push(
            ADDRESS_TYPE_URL,
            vec![resource("a", "1", ADDRESS_TYPE_URL, &xds_workload(&a, &[]))],
            vec![],
        )
        .await?;
    let no_plaintext = xsec::Authorization {
        name: "no-plaintext".into(),
        namespace: "default".into(),
        scope: xsec::Scope::WorkloadSelector as i32,
        action: xsec::Action::Deny as i32,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause {
                matches: vec![xsec::Match {
                    not_principals: vec![xsec::StringMatch {
                        match_type: Some(xsec::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    server
        .push(
            AUTHORIZATION_TYPE_URL,
            vec![resource(
                "default/no-plaintext",
                "1",
                AUTHORIZATION_TYPE_URL,
                &no_plaintext,
            )],
            vec![],
        )
        .await?;
    let conn = agent.accept().await?;
    conn.snapshot(&[&a, &b, &c]).await?;
    until_ready(&zt).await?;

    // B is unknown to A's outbound, so this is plaintext to B's 15006. B is
    // not described: refused once the wait is over, and counted.
    let mut never = a.connect(b.ips[0]).await?;
    never.write_all(b"never described").await?;
    closed(&mut never).await?;
    let metrics = zt.metrics().await?;
    ensure!(
        metrics
            .contains("ambit_hbone_malformed_requests_total{reason=\"local_workload_unknown\"} 1"),
        "no local_workload_unknown refusal in\n{metrics}"
    );

    // Held again; B's record arrives only after the connection was made and
    // the data sent, and the policy it names refuses the connection.
    let mut ab = a.connect(b.ips[0]).await?;
    ab.write_all(b"before the record").await?;
    server
        .push(
            ADDRESS_TYPE_URL,
            vec![resource(
                "b",
                "1",
                ADDRESS_TYPE_URL,
                &xds_workload(&b, &["default/no-plaintext"]),
            )],
            vec![],
        )
        .await?;
    closed(&mut ab).await?;
    let metrics = zt.metrics().await?;
    ensure!(
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_failed_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_flags=\"DENY\"")
                && l.contains("destination_workload=\"b\"")
        }),
        "no DENY at B under its record in\n{metrics}"
    );
    zt.stop().await?;
    Ok(())
}
