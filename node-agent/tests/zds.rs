//! The ZDS server against a ztunnel-side client written here: hello,
//! snapshot with netns descriptors, Add to the newest ztunnel, Del to all,
//! NACKs, waiting for a ztunnel, and dropping a ztunnel that went away.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use common::{Event, TestZtunnel};
use mesh_core::drain;
use mesh_core::netns::Netns as NetnsHandle;
use mesh_core::zds::ZdsListener;
use mesh_testkit::{Netns, eventually};
use node_agent::metrics::Metrics;
use node_agent::zds::{ZdsPod, ZdsServer, ZdsServerError};
use tokio::time::Instant;

fn pod(uid: &str, ns: &Netns) -> ZdsPod {
    ZdsPod {
        uid: uid.into(),
        name: format!("{uid}-name"),
        namespace: "shop".into(),
        service_account: "cart".into(),
        netns: Arc::new(NetnsHandle::open(&ns.path()).unwrap()),
    }
}

struct Server {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    server: ZdsServer,
    snapshot: Arc<Mutex<Vec<ZdsPod>>>,
    _drain: drain::DrainTrigger,
}

fn serve(message_timeout: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let snapshot: Arc<Mutex<Vec<ZdsPod>>> = Arc::default();
    let pods = snapshot.clone();
    let server = ZdsServer::new(
        Arc::new(move || pods.lock().unwrap().clone()),
        message_timeout,
        Metrics::default(),
    );
    let (trigger, watcher) = drain::channel();
    server.serve(ZdsListener::bind(&path).unwrap(), watcher);
    Server {
        _dir: dir,
        path,
        server,
        snapshot,
        _drain: trigger,
    }
}

async fn connected(server: &ZdsServer, n: usize) -> Result<()> {
    eventually("ztunnels connected", Duration::from_secs(5), || async {
        anyhow::ensure!(server.connected() == n, "{} connected", server.connected());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn snapshot_then_adds_to_the_newest_and_dels_to_all() -> Result<()> {
    let (a, b, c) = (
        Netns::new("zds-a")?,
        Netns::new("zds-b")?,
        Netns::new("zds-c")?,
    );
    let s = serve(Duration::from_secs(5));
    s.snapshot.lock().unwrap().push(pod("uid-a", &a));

    let mut first = TestZtunnel::connect(&s.path).await?;
    let snapshot = first.snapshot().await?;
    assert_eq!(
        snapshot,
        vec![Event::Add {
            uid: "uid-a".into(),
            name: "uid-a-name".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            netns: common::netns_id(&a),
        }]
    );
    connected(&s.server, 1).await?;

    s.server
        .add(&pod("uid-b", &b), Instant::now() + Duration::from_secs(5))
        .await?;
    assert!(
        matches!(first.next().await?, Event::Add { uid, netns, .. } if uid == "uid-b" && netns == common::netns_id(&b))
    );

    // An upgrade: a second ztunnel gets the same snapshot; new pods go to it only.
    let mut second = TestZtunnel::connect(&s.path).await?;
    assert_eq!(second.snapshot().await?.len(), 1);
    connected(&s.server, 2).await?;
    s.server
        .add(&pod("uid-c", &c), Instant::now() + Duration::from_secs(5))
        .await?;
    assert!(matches!(second.next().await?, Event::Add { uid, .. } if uid == "uid-c"));
    first.quiet(Duration::from_millis(200)).await?;

    assert_eq!(s.server.del("uid-b").await, 2);
    assert_eq!(
        first.next().await?,
        Event::Del {
            uid: "uid-b".into()
        }
    );
    assert_eq!(
        second.next().await?,
        Event::Del {
            uid: "uid-b".into()
        }
    );

    // The newest goes away: Adds fall back to the one left.
    drop(second);
    connected(&s.server, 1).await?;
    s.server
        .add(&pod("uid-c", &c), Instant::now() + Duration::from_secs(5))
        .await?;
    assert!(matches!(first.next().await?, Event::Add { uid, .. } if uid == "uid-c"));
    Ok(())
}

#[tokio::test]
async fn a_nack_fails_the_add_with_ztunnels_words() -> Result<()> {
    let a = Netns::new("zds-nack")?;
    let s = serve(Duration::from_secs(5));
    let mut ztunnel = TestZtunnel::connect(&s.path).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    connected(&s.server, 1).await?;
    ztunnel.nack_adds(Some("cannot enter the netns"));
    let err = s
        .server
        .add(&pod("uid-a", &a), Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ZdsServerError::Nack { message, .. } if message == "cannot enter the netns"),
        "{err}"
    );
    assert!(err.to_string().contains("cannot enter the netns"));
    // A NACK does not end the connection.
    assert_eq!(s.server.connected(), 1);
    Ok(())
}

#[tokio::test]
async fn an_add_waits_for_a_ztunnel_within_its_deadline() -> Result<()> {
    let a = Netns::new("zds-wait")?;
    let s = serve(Duration::from_secs(5));
    let started = Instant::now();
    let err = s
        .server
        .add(
            &pod("uid-a", &a),
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ZdsServerError::NoZtunnel(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let server = s.server.clone();
    let target = pod("uid-a", &a);
    let add = tokio::spawn(async move {
        server
            .add(&target, Instant::now() + Duration::from_secs(10))
            .await
    });
    let mut ztunnel = TestZtunnel::connect(&s.path).await?;
    assert!(ztunnel.snapshot().await?.is_empty());
    assert!(matches!(ztunnel.next().await?, Event::Add { uid, .. } if uid == "uid-a"));
    add.await??;
    Ok(())
}

#[tokio::test]
async fn a_silent_or_wrong_peer_is_dropped() -> Result<()> {
    let s = serve(Duration::from_millis(300));
    // Connects but never says hello.
    let silent = mesh_core::zds::ZdsSocket::connect(&s.path).await?;
    // Says hello but never answers the snapshot's end.
    let mute = mesh_core::zds::ZdsSocket::connect(&s.path).await?;
    mute.send(
        &mesh_api::istio::workload::zds::ZdsHello { version: 1 },
        None,
    )
    .await?;
    let sent = tokio::time::timeout(Duration::from_secs(5), mute.recv()).await??;
    let request: mesh_api::istio::workload::zds::WorkloadRequest =
        sent.decode("WorkloadRequest")?;
    assert!(matches!(
        request.payload,
        Some(mesh_api::istio::workload::zds::workload_request::Payload::SnapshotSent(_))
    ));
    // Both are closed by the server after the message deadline.
    for socket in [&silent, &mute] {
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.recv().await {
                    Err(mesh_core::zds::ZdsError::Closed) => return,
                    Err(e) => panic!("{e}"),
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the server kept a peer that broke the protocol"
        );
    }
    assert_eq!(s.server.connected(), 0);
    Ok(())
}
