//! Identities are enforced at the handshake: a client certificate from
//! another trust domain or an expired one is refused by the server, and a
//! server that is not who the client expects is refused by the client.

use std::time::Duration;

use anyhow::Result;
use integration_tests::{ClientCert, ECHO_PORT, Mesh, Options, expect_refused, metric};
use mesh_testkit::eventually;

async fn assert_refused(mesh: &Mesh) -> Result<()> {
    expect_refused(mesh.connect(ECHO_PORT)).await?;
    assert_eq!(mesh.echo.accepted(), 0, "the server app was reached");
    Ok(())
}

async fn server_refused_handshake(mesh: &Mesh) -> Result<()> {
    eventually(
        "server counts the refused handshake",
        Duration::from_secs(5),
        || async {
            let m = mesh.metrics("server").await?;
            let n = metric(
                &m,
                "ambit_hbone_handshake_failures_total",
                &[("reason", "tls")],
            );
            anyhow::ensure!(n >= 1.0, "{n}");
            Ok(())
        },
    )
    .await
}

#[tokio::test]
async fn a_client_from_another_trust_domain_is_refused() -> Result<()> {
    let mesh = Mesh::start(
        "othertd",
        Options {
            client_cert: ClientCert::OtherTrustDomain,
            ..Default::default()
        },
    )
    .await?;
    assert_refused(&mesh).await?;
    server_refused_handshake(&mesh).await?;
    assert!(
        mesh.log("server").contains("not in trust domain"),
        "{}",
        mesh.log("server")
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() -> Result<()> {
    let mesh = Mesh::start(
        "expired",
        Options {
            client_cert: ClientCert::Expired,
            ..Default::default()
        },
    )
    .await?;
    assert_refused(&mesh).await?;
    server_refused_handshake(&mesh).await
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused_by_the_client() -> Result<()> {
    let opts = Options {
        server_sa_seen_by_client: "payments".into(),
        ..Default::default()
    };
    let mesh = Mesh::start("wrongid", opts).await?;
    assert_refused(&mesh).await?;
    eventually(
        "client counts the identity error",
        Duration::from_secs(5),
        || async {
            let m = mesh.metrics("client").await?;
            let n = metric(
                &m,
                "istio_tcp_connections_failed_total",
                &[("response_flags", "IDENTITY_ERROR")],
            );
            anyhow::ensure!(n == 1.0, "{n}: {m}");
            Ok(())
        },
    )
    .await
}
