//! A quick latency figure (not a benchmark): p50 and p99 of 10,000
//! sequential HTTP/1.1 requests on one keep-alive connection, directly to
//! the backend, through HBONE only (the L4 path), and through the waypoint.
//! Ignored by default; run with
//! `cargo test --release -p waypoint --test latency -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_core::hbone::{ConnectRequest, PoolKey};
use waypoint::stream_io::StreamIo;

const N: usize = 10_000;

async fn run(
    mut send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(N);
    for i in 0..N + 200 {
        send.ready().await?;
        let started = Instant::now();
        let resp = send.send_request(get("/x")).await?;
        body_text(resp).await?;
        if i >= 200 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    Ok(times)
}

fn report(what: &str, t: &[Duration]) -> Duration {
    let p50 = t[t.len() / 2];
    let p99 = t[t.len() * 99 / 100];
    println!(
        "{what:>10}: p50 {:>6} us  p99 {:>6} us",
        p50.as_micros(),
        p99.as_micros()
    );
    p50
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_direct_vs_hbone_vs_waypoint() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    let dest = mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", b.port)).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let direct = report("direct", &run(send).await?);

    // L4 only: the caller's HBONE straight to the destination's ztunnel.
    let key = PoolKey::new(mesh.client_id.clone(), vec![id("echo-a")], dest.addr, None);
    let (tunnel, _) = mesh
        .client_pool
        .connect(
            &key,
            ConnectRequest {
                authority: std::net::SocketAddr::new(dest.addr.ip(), b.port),
                headers: http::HeaderMap::new(),
            },
        )
        .await?;
    let (send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(StreamIo::from_tunnel(tunnel))).await?;
    tokio::spawn(conn);
    let l4 = report("hbone", &run(send).await?);

    let waypoint = report("waypoint", &run(mesh.h1(vip).await?).await?);
    println!(
        "waypoint adds {} us at p50 over HBONE only ({} us over direct)",
        waypoint.as_micros() as i64 - l4.as_micros() as i64,
        waypoint.as_micros() as i64 - direct.as_micros() as i64
    );
    Ok(())
}
