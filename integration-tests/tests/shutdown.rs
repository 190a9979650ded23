//! SIGTERM: ztunnel stops accepting, lets live connections finish within the
//! drain deadline, then exits; past the deadline it closes what is left.

use std::time::{Duration, Instant};

use anyhow::Result;
use integration_tests::{ECHO_PORT, Mesh, Options, expect_refused};
use mesh_testkit::{echo_roundtrip, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sigterm_lets_a_live_connection_finish_within_the_deadline() -> Result<()> {
    let mesh = Mesh::start(
        "drain",
        Options {
            drain_deadline: "20s".into(),
            ..Default::default()
        },
    )
    .await?;
    let mut live = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut live, b"before").await?;
    mesh.client_ztunnel.sigterm()?;
    // New connections are refused once the listener has closed.
    eventually(
        "client ztunnel stops accepting",
        Duration::from_secs(5),
        || expect_refused(mesh.connect(ECHO_PORT)),
    )
    .await
    .map_err(|e| e.context(mesh.log("client")))?;
    // The live connection keeps working while draining.
    echo_roundtrip(&mut live, b"during drain").await?;
    assert!(
        mesh.client_ztunnel.is_running(),
        "ztunnel exited while a connection was open"
    );
    live.shutdown().await?;
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await?;
    drop(live);
    let closed_at = Instant::now();
    let status = mesh
        .client_ztunnel
        .wait_timeout(Duration::from_secs(10))?
        .expect("ztunnel exits once drained");
    assert!(status.success(), "{status:?}");
    assert!(
        closed_at.elapsed() < Duration::from_secs(5),
        "exit waited for the deadline, not for the connection"
    );
    Ok(())
}

#[tokio::test]
async fn past_the_deadline_open_connections_are_closed_and_ztunnel_exits() -> Result<()> {
    let mesh = Mesh::start(
        "deadline",
        Options {
            drain_deadline: "1s".into(),
            ..Default::default()
        },
    )
    .await?;
    let mut live = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut live, b"before").await?;
    let sent = Instant::now();
    mesh.client_ztunnel.sigterm()?;
    let status = mesh
        .client_ztunnel
        .wait_timeout(Duration::from_secs(10))?
        .expect("ztunnel exits after the deadline");
    assert!(status.success(), "{status:?}");
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited after {took:?}"
    );
    let mut buf = [0u8; 8];
    let got = tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await?;
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "the forced connection must be closed: {got:?}"
    );
    Ok(())
}
