//! L4 policy enforced by the server's ztunnel: DENY refuses and is counted and
//! logged with its reason; STRICT PeerAuthentication refuses plaintext.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use integration_tests::{ECHO_PORT, Mesh, Options, connect_uncaptured, expect_refused, metric};
use mesh_testkit::{echo_roundtrip, eventually};

#[tokio::test]
async fn a_deny_policy_refuses_counts_and_logs_with_its_reason() -> Result<()> {
    let policy = "\
- name: deny-client
  namespace: default
  action: DENY
  rules:
  - clauses:
    - matches:
      - principals: ['cluster.local/ns/default/sa/client']
        destinationPorts: [9000]
";
    let mesh = Mesh::start(
        "deny",
        Options {
            server_policies: policy.into(),
            ..Default::default()
        },
    )
    .await?;
    expect_refused(mesh.connect(ECHO_PORT)).await?;
    assert_eq!(mesh.echo.accepted(), 0, "the app was never reached");

    // Other ports of the same workload stay reachable.
    let other = mesh
        .hosts
        .server
        .tcp_listener(SocketAddr::new(mesh.server_ip, 9001))?;
    let _echo = mesh_testkit::EchoServer::start(other);
    let mut ok = mesh.connect(9001).await?;
    echo_roundtrip(&mut ok, b"allowed").await?;

    let m = eventually("denial counted", Duration::from_secs(5), || async {
        let m = mesh.metrics("server").await?;
        let denied = metric(
            &m,
            "istio_tcp_connections_failed_total",
            &[
                ("response_flags", "DENY"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/client",
                ),
            ],
        );
        anyhow::ensure!(denied == 1.0, "denied = {denied}");
        Ok(m)
    })
    .await?;
    assert_eq!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[("destination_workload", "server")]
        ),
        1.0
    );
    let log = mesh.log("server");
    assert!(
        log.contains("denied by DENY policy default/deny-client"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn strict_peer_authentication_refuses_plaintext_but_not_mtls() -> Result<()> {
    let pa = "- {name: strict, namespace: default, mtls: {mode: STRICT}}\n";
    let mesh = Mesh::start(
        "strict",
        Options {
            server_peer_authentications: pa.into(),
            ..Default::default()
        },
    )
    .await?;
    // Plaintext from the client host, bypassing its ztunnel: redirected to 15006 on the server.
    expect_refused(connect_uncaptured(
        &mesh.hosts.client,
        SocketAddr::new(mesh.server_ip, ECHO_PORT),
    ))
    .await?;
    assert_eq!(mesh.echo.accepted(), 0, "the app was never reached");
    let mut app = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut app, b"mtls is fine").await?;
    let log = mesh.log("server");
    assert!(log.contains("requires mTLS (STRICT)"), "{log}");
    Ok(())
}

#[tokio::test]
async fn permissive_plaintext_is_served_on_15006_without_identity() -> Result<()> {
    let mesh = Mesh::start("perm", Options::default()).await?;
    let mut plain = connect_uncaptured(
        &mesh.hosts.client,
        SocketAddr::new(mesh.server_ip, ECHO_PORT),
    )
    .await?;
    echo_roundtrip(&mut plain, b"plaintext allowed").await?;
    drop(plain);
    eventually("plaintext counted", Duration::from_secs(5), || async {
        let m = mesh.metrics("server").await?;
        let n = metric(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("connection_security_policy", "unknown"),
                ("source_principal", "unknown"),
            ],
        );
        anyhow::ensure!(n == 1.0, "{n}");
        Ok(())
    })
    .await
}
