//! The waypoint in-process with real mTLS: HTTP/1.1 and HTTP/2 proxied to
//! destination ztunnels with the waypoint's identity, XFCC, trace context,
//! metrics, unknown authorities and opaque TCP.

mod common;

use anyhow::Result;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_are_proxied_with_xfcc_and_a_forged_xfcc_is_stripped() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    let dest = mesh.destination(1, "echo-a").await?;
    let h1 = Backend::start("echo-h1", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, h1.port)])
        .await?;

    let mut send = mesh.h1(vip).await?;
    let mut req = get("/hello?x=1");
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        "By=spiffe://evil;URI=spiffe://cluster.local/ns/default/sa/admin".parse()?,
    );
    req.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse()?);
    req.headers_mut().insert("x-hop", "secret".parse()?);
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let h = resp.headers().clone();
    if status != StatusCode::OK {
        panic!("{status}: {}", body_text(resp).await?);
    }
    assert_eq!(h["x-backend"], "echo-h1");
    let xfcc = h["echo-x-forwarded-client-cert"].to_str()?;
    let prefix = format!("By=spiffe://cluster.local/ns/default/sa/{GATEWAY};Hash=");
    assert!(xfcc.starts_with(&prefix), "{xfcc}");
    assert!(
        xfcc.ends_with(";URI=spiffe://cluster.local/ns/default/sa/client"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("evil"), "{xfcc}");
    let hash = &xfcc[prefix.len()..xfcc.find(";URI=").unwrap()];
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!h.contains_key("echo-x-hop"), "hop-by-hop header forwarded");
    assert_eq!(h["echo-x-forwarded-proto"], "http");
    assert_eq!(h["echo-x-request-id"].len(), 36);
    assert_eq!(body_text(resp).await?, "echo-h1 /hello 0");

    // The destination saw the waypoint's identity, not the caller's.
    let callers = dest.callers.lock().unwrap().clone();
    assert!(!callers.is_empty());
    assert!(
        callers
            .iter()
            .all(|c| c.as_ref() == Some(&mesh.waypoint_id)),
        "{callers:?}"
    );

    // Keep-alive: a second request on the same connection reuses the tunnel.
    let tunnels = dest.streams.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        send.ready().await?;
        let resp = send.send_request(get("/again")).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        body_text(resp).await?;
    }
    assert_eq!(
        dest.streams.load(std::sync::atomic::Ordering::SeqCst),
        tunnels
    );

    // HTTP/2 from the caller to an HTTP/2 backend.
    let h2b = Backend::start("echo-h2", true).await?;
    let vip2 = mesh
        .service("echo2", 101, 8080, &[("echo-b", 2, h2b.port)])
        .await?;
    let _dest2 = mesh.destination(2, "echo-b").await?;
    let mut send = mesh.h2(vip2).await?;
    let req = http::Request::get("http://echo2.default.svc.cluster.local:8080/h2")
        .header("x-forwarded-client-cert", "URI=spiffe://forged")
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let resp = send.send_request(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
    let xfcc = resp.headers()["echo-x-forwarded-client-cert"]
        .to_str()?
        .to_string();
    assert!(
        xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/client"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("forged"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_keeps_the_trace_with_a_new_parent_and_metrics_name_the_caller() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut send = mesh.h1(vip).await?;

    let mut req = get("/traced");
    req.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
    );
    let resp = send.send_request(req).await?;
    let tp = resp.headers()["echo-traceparent"].to_str()?.to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the parent must be the waypoint's span"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    body_text(resp).await?;

    // Without one, a trace starts.
    send.ready().await?;
    let resp = send.send_request(get("/untraced")).await?;
    assert!(
        resp.headers()["echo-traceparent"]
            .to_str()?
            .starts_with("00-")
    );
    body_text(resp).await?;
    send.ready().await?;
    let resp = send.send_request(get("/status/503")).await?;
    assert_eq!(resp.status(), 503);
    body_text(resp).await?;

    let metrics = mesh.metrics().await?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("no request metric:\n{metrics}"));
    assert!(line.contains("reporter=\"waypoint\""), "{line}");
    assert!(
        line.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/client\""),
        "{line}"
    );
    assert!(line.contains("source_workload=\"client\""), "{line}");
    assert!(line.contains("destination_workload=\"echo-a\""), "{line}");
    assert!(
        line.contains("destination_principal=\"spiffe://cluster.local/ns/default/sa/echo-a\""),
        "{line}"
    );
    assert!(
        line.contains("destination_service=\"echo.default.svc.cluster.local\""),
        "{line}"
    );
    assert!(line.contains("request_protocol=\"http\""), "{line}");
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
    assert!(line.ends_with(" 2"), "{line}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"503\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(metrics.contains("istio_response_bytes_sum{"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_authority_is_refused_and_counted() -> Result<()> {
    let mesh = Mesh::start(|_| {}).await?;
    let nowhere = std::net::SocketAddr::new(mesh.ip(99), 80);
    let err = mesh.connect(nowhere).await.expect_err("refused");
    match err {
        mesh_core::hbone::HboneError::Refused { status, .. } => assert_eq!(status, 400),
        other => panic!("unexpected {other}"),
    }
    let metrics = mesh.metrics().await?;
    assert!(
        metrics.contains("waypoint_rejected_total{reason=\"bad_authority\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_copied_to_an_endpoint() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "db-0").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo = mesh_testkit::EchoServer::start(listener);
    let port = echo.addr.port();
    let vip = mesh.service("db", 100, 5432, &[("db-0", 1, port)]).await?;
    let mut io = mesh.connect(vip).await?;
    // Not HTTP: a binary greeting.
    io.write_all(b"\x00\x01binary protocol\xff").await?;
    let mut buf = [0u8; 18];
    io.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"\x00\x01binary protocol\xff");
    io.shutdown().await?;
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await?;
    assert!(rest.is_empty());
    mesh_testkit::eventually("TCP metrics", PATIENCE, || async {
        let m = mesh.metrics().await?;
        anyhow::ensure!(
            m.lines()
                .any(|l| l.starts_with("istio_tcp_received_bytes_total{")
                    && l.contains("destination_workload=\"db-0\"")
                    && l.ends_with(" 18")),
            "{m}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// An HTTP/2 client whose request bodies are fed from a channel, chunk by chunk.
type Chunks = tokio::sync::mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>;
type StreamedBody = http_body_util::StreamBody<
    tokio_stream::wrappers::ReceiverStream<
        Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>,
    >,
>;

fn streamed() -> (Chunks, StreamedBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (
        tx,
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_bodies_are_forwarded_whole_when_ready_and_as_they_arrive() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    let _dest = mesh.destination(2, "echo-b").await?;
    let h2b = Backend::start("echo-h2", true).await?;
    let vip = mesh
        .service("echo2", 101, 8080, &[("echo-b", 2, h2b.port)])
        .await?;
    let io = mesh.connect(vip).await?;
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, StreamedBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await?;
    tokio::spawn(conn);
    let url = "http://echo2.default.svc.cluster.local:8080/upload";

    // Already here when the waypoint forwards it: sent with the request head.
    let (tx, body) = streamed();
    tx.send(Ok(hyper::body::Frame::data(vec![b'a'; 1000].into())))
        .await?;
    drop(tx);
    let resp = send
        .send_request(http::Request::post(url).body(body)?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await?, "echo-h2 /upload 1000");

    // Still arriving: piped as it comes, across flow-control windows.
    let (tx, body) = streamed();
    let pending = send.send_request(http::Request::post(url).body(body)?);
    let feeder = tokio::spawn(async move {
        for _ in 0..40 {
            tx.send(Ok(hyper::body::Frame::data(vec![b'b'; 100_000].into())))
                .await?;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        anyhow::Ok(())
    });
    let resp = tokio::time::timeout(PATIENCE, pending).await??;
    feeder.await??;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await?, "echo-h2 /upload 4000000");

    // A body that fails midway resets the upstream request; the caller gets
    // an error reply, and the connection keeps serving.
    let (tx, body) = streamed();
    let pending = send.send_request(http::Request::post(url).body(body)?);
    tx.send(Ok(hyper::body::Frame::data(vec![b'c'; 10].into())))
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    tx.send(Err(std::io::Error::other("the client gave up")))
        .await?;
    let failed = tokio::time::timeout(PATIENCE, pending).await?;
    if let Ok(resp) = failed {
        assert_ne!(
            resp.status(),
            StatusCode::OK,
            "a failed body must not look served"
        );
    }
    let (tx, body) = streamed();
    drop(tx);
    send.ready().await?;
    let resp = send
        .send_request(http::Request::post(url).body(body)?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await?, "echo-h2 /upload 0");

    // A head whose body has not started waits for it only briefly: a
    // server that answers on the head alone gets it while the client still
    // holds its body back.
    let (tx, body) = streamed();
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(
        PATIENCE,
        send.send_request(
            http::Request::post("http://echo2.default.svc.cluster.local:8080/head-only")
                .body(body)?,
        ),
    )
    .await??;
    let waited = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await?, "echo-h2 /head-only");
    assert!(
        waited < std::time::Duration::from_millis(500),
        "the head waited {waited:?} for a body that had not started"
    );
    drop(tx);
    Ok(())
}
