//! A client app reaches a server app through two ztunnels over mTLS HBONE,
//! over IPv4 and IPv6; the wire carries only TLS; both ztunnels count the
//! connection with the right identities.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use integration_tests::{ECHO_PORT, Mesh, Options, connect_uncaptured, metric};
use mesh_testkit::{echo_roundtrip, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

async fn tunnel_carries_traffic_with_identities(ipv6: bool) -> Result<()> {
    let mesh = Mesh::start(
        if ipv6 { "tun6" } else { "tun4" },
        Options {
            ipv6,
            ..Default::default()
        },
    )
    .await?;
    let mut app = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut app, b"hello through the mesh").await?;
    echo_roundtrip(&mut app, &vec![0x5a; 1 << 20]).await?;
    app.shutdown().await?;
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await?;
    assert!(
        rest.is_empty(),
        "half-close answered with EOF after the echo"
    );
    drop(app);

    // The server's app saw the connection arrive (from the server ztunnel).
    assert_eq!(mesh.echo.accepted(), 1);
    let server = eventually(
        "server counts the closed connection",
        Duration::from_secs(5),
        || async {
            let m = mesh.metrics("server").await?;
            let closed = metric(
                &m,
                "istio_tcp_connections_closed_total",
                &[("reporter", "destination")],
            );
            anyhow::ensure!(closed >= 1.0, "closed = {closed}");
            Ok(m)
        },
    )
    .await?;
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("source_principal", CLIENT_ID),
        ("destination_workload", "server"),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        metric(&server, "istio_tcp_connections_opened_total", &labels),
        1.0,
        "{server}"
    );
    let payload = 22.0 + f64::from(1u32 << 20);
    assert_eq!(
        metric(&server, "istio_tcp_received_bytes_total", &labels),
        payload
    );
    assert_eq!(
        metric(&server, "istio_tcp_sent_bytes_total", &labels),
        payload
    );

    let client = mesh.metrics("client").await?;
    let labels = [
        ("reporter", "source"),
        ("source_principal", CLIENT_ID),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        metric(&client, "istio_tcp_connections_opened_total", &labels),
        1.0,
        "{client}"
    );
    // Exactly one access-log line per connection, on each side.
    for side in ["server", "client"] {
        let lines = mesh.log(side).matches("connection complete").count();
        assert_eq!(lines, 1, "{side} access log: {}", mesh.log(side));
    }
    Ok(())
}

#[tokio::test]
async fn ipv4_tunnel_carries_traffic_with_identities() -> Result<()> {
    tunnel_carries_traffic_with_identities(false).await
}

#[tokio::test]
async fn ipv6_tunnel_carries_traffic_with_identities() -> Result<()> {
    tunnel_carries_traffic_with_identities(true).await
}

/// What crosses the veth is TLS: a marker sent by the app never appears in
/// the clear, while TLS application-data records do; and plaintext to 15008 fails.
#[tokio::test]
async fn the_wire_carries_only_tls() -> Result<()> {
    let mesh = Mesh::start("wire", Options::default()).await?;
    let pcap = mesh.dir().join("veth.pcap");
    let dump_log = mesh.dir().join("tcpdump.log");
    let server_if = mesh.hosts.server_if.clone();
    let _dump = mesh.hosts.server.spawn_with(
        "tcpdump",
        &[
            "-i",
            &server_if,
            "-U",
            "-n",
            "-w",
            pcap.to_str().unwrap_or_default(),
            "tcp",
        ],
        &[],
        Some(&dump_log),
    )?;
    eventually("tcpdump listening", Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&dump_log).unwrap_or_default();
        anyhow::ensure!(log.contains("listening on"), "{log}");
        Ok(())
    })
    .await?;
    let marker = b"AMBIT-PLAINTEXT-MARKER-0123456789".repeat(64);
    let mut app = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut app, &marker).await?;
    drop(app);
    let captured = eventually(
        "capture holds the tunnel's packets",
        Duration::from_secs(10),
        || async {
            let bytes = std::fs::read(&pcap)?;
            anyhow::ensure!(bytes.len() > marker.len(), "{} bytes captured", bytes.len());
            anyhow::ensure!(
                bytes.windows(3).any(|w| w == [0x17, 0x03, 0x03]),
                "no TLS application data yet"
            );
            Ok(bytes)
        },
    )
    .await?;
    let needle = b"AMBIT-PLAINTEXT-MARKER";
    assert!(
        !captured.windows(needle.len()).any(|w| w == needle),
        "the marker crossed the veth in plaintext"
    );

    // Plaintext HTTP CONNECT to 15008, bypassing capture, gets no tunnel.
    let mut plain =
        connect_uncaptured(&mesh.hosts.client, SocketAddr::new(mesh.server_ip, 15008)).await?;
    plain
        .write_all(
            format!(
                "CONNECT {}:{ECHO_PORT} HTTP/1.1\r\nHost: x\r\n\r\n",
                mesh.server_ip
            )
            .as_bytes(),
        )
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await?;
    assert!(
        !String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "plaintext CONNECT was served"
    );
    let m = mesh.metrics("server").await?;
    assert!(
        metric(
            &m,
            "ambit_hbone_handshake_failures_total",
            &[("reason", "tls")]
        ) >= 1.0,
        "{m}"
    );
    Ok(())
}

/// An upstream reset reaches the client app as a reset, not a clean close.
#[tokio::test]
async fn an_upstream_reset_reaches_the_client_as_a_reset() -> Result<()> {
    let mesh = Mesh::start("reset", Options::default()).await?;
    let listener = mesh
        .hosts
        .server
        .tcp_listener(SocketAddr::new(mesh.server_ip, 9100))?;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        mesh_core::hbone::copy::reset_tcp(&s);
        drop(s);
        anyhow::Ok(())
    });
    let mut app = mesh.connect(9100).await?;
    app.write_all(b"ping").await?;
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_secs(5), app.read(&mut buf)).await?;
    let err = got.expect_err("the app must see a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    server.await??;
    Ok(())
}
