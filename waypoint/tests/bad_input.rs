//! Bad and slow clients get a clean error or close, are counted, and do not
//! disturb other clients; drain lets in-flight requests finish.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use http::StatusCode;
use mesh_core::drain::DrainOutcome;
use tokio::io::AsyncWriteExt;

/// Another client's request through the waypoint succeeds.
async fn others_still_served(mesh: &Mesh, vip: std::net::SocketAddr) -> Result<()> {
    let mut send = mesh.h1(vip).await?;
    let resp = send.send_request(get("/ok")).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    body_text(resp).await?;
    Ok(())
}

async fn mesh_with_echo(
    tweak: impl FnOnce(&mut waypoint::Settings),
) -> Result<(Mesh, std::net::SocketAddr)> {
    let mut mesh = Mesh::start(tweak).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    Ok((mesh, vip))
}

async fn rejected(mesh: &Mesh, reason: &str) -> Result<()> {
    let want = format!("waypoint_rejected_total{{reason=\"{reason}\"}} 1");
    mesh_testkit::eventually(&want, PATIENCE, || async {
        let m = mesh.metrics().await?;
        anyhow::ensure!(m.contains(&want), "{m}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_gets_400_and_a_close() -> Result<()> {
    let (mesh, vip) = mesh_with_echo(|_| {}).await?;
    let mut io = mesh.connect(vip).await?;
    io.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nNo colon here\r\n\r\n")
        .await?;
    let answer = read_to_close(&mut io, PATIENCE).await?;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    rejected(&mesh, "malformed").await?;
    others_still_served(&mesh, vip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() -> Result<()> {
    let (mesh, vip) = mesh_with_echo(|s| s.max_header_bytes = 16 * 1024).await?;
    let mut io = mesh.connect(vip).await?;
    let mut req = b"GET / HTTP/1.1\r\nHost: echo\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 32 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    // The waypoint may answer before it has read everything.
    let _ = io.write_all(&req).await;
    let answer = read_to_close(&mut io, PATIENCE).await?;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    rejected(&mesh, "header_too_large").await?;
    others_still_served(&mesh, vip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_protocol_violation_gets_goaway_for_that_connection_only() -> Result<()> {
    let (mesh, vip) = mesh_with_echo(|_| {}).await?;
    let mut io = mesh.connect(vip).await?;
    let mut frames = h2_preface();
    // HEADERS on stream 2: clients must use odd stream ids (RFC 9113, 5.1.1).
    frames.extend_from_slice(&[0, 0, 3, 0x1, 0x5, 0, 0, 0, 2, 0x82, 0x86, 0x84]);
    io.write_all(&frames).await?;
    let goaway = read_until_frame(&mut io, 0x7).await?.expect("a GOAWAY");
    let code = u32::from_be_bytes([goaway[4], goaway[5], goaway[6], goaway[7]]);
    assert_eq!(code, 0x1, "PROTOCOL_ERROR");
    rejected(&mesh, "h2_protocol").await?;
    others_still_served(&mesh, vip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_is_closed_while_others_are_served() -> Result<()> {
    let (mesh, vip) =
        mesh_with_echo(|s| s.header_read_timeout = Duration::from_millis(800)).await?;
    let mut io = mesh.connect(vip).await?;
    let started = Instant::now();
    io.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n").await?;
    // While it dawdles, another client is served.
    others_still_served(&mesh, vip).await?;
    read_to_close(&mut io, PATIENCE).await?;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    rejected(&mesh, "slow_client").await?;
    others_still_served(&mesh, vip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_sends_goaway_and_exits_in_time() -> Result<()> {
    let (mut mesh, vip) = mesh_with_echo(|s| s.drain_deadline = Duration::from_secs(3)).await?;
    // An HTTP/2 client with no request in flight.
    let mut h2 = mesh.connect(vip).await?;
    h2.write_all(&h2_preface()).await?;
    // An HTTP/1.1 request in flight when the drain starts.
    let mut send = mesh.h1(vip).await?;
    let in_flight = tokio::spawn(send.send_request(get("/delay/700")));
    mesh_testkit::eventually("the request reached the backend", PATIENCE, || async {
        // Nothing is recorded until it ends; wait on the upstream tunnel instead.
        anyhow::ensure!(
            mesh.destinations[0]
                .streams
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1
        );
        Ok(())
    })
    .await?;
    let run = mesh.run_in_background();
    let started = Instant::now();
    mesh.shutdown.trigger();
    let goaway = read_until_frame(&mut h2, 0x7).await?;
    assert!(goaway.is_some(), "no GOAWAY for the HTTP/2 client");
    // This raw client does not answer the PING of a graceful shutdown; it
    // leaves, as a client told to go away does.
    drop(h2);
    let resp = in_flight.await??;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["connection"], "close");
    body_text(resp).await?;
    let outcome = run.await?;
    let took = started.elapsed();
    assert_eq!(outcome, DrainOutcome::Complete);
    assert!(took < Duration::from_secs(3), "{took:?}");
    Ok(())
}
