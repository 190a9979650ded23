//! The admin port (15000): the config in force with certificates, the log
//! level changed at run time, and a graceful shutdown on request.

use std::time::Duration;

use anyhow::Result;
use integration_tests::{ECHO_PORT, Mesh, Options, http_request, metric};
use mesh_testkit::{echo_roundtrip, eventually};

#[tokio::test]
async fn admin_shows_config_changes_log_level_and_quits_gracefully() -> Result<()> {
    let mesh = Mesh::start("admin", Options::default()).await?;
    let admin = "127.0.0.1:15000".parse()?;
    let ns = &mesh.hosts.client;

    let (status, body) = http_request(ns, admin, "GET", "/config_dump").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"workloads\""), "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{body}"
    );
    assert!(
        body.contains("\"state\": \"Available\""),
        "the client's certificate is listed: {body}"
    );
    assert!(
        body.contains("\"workload\": \"default/client\""),
        "the proxy config is shown: {body}"
    );

    let (status, body) = http_request(ns, admin, "POST", "/logging?level=debug").await?;
    assert_eq!((status, body.trim()), (200, "current log level is debug"));
    let (status, body) = http_request(ns, admin, "POST", "/logging?level=ztunnel%3Dloud").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid log level"), "{body}");
    let (status, _) = http_request(ns, admin, "GET", "/logging").await?;
    assert_eq!(status, 405);
    let (status, _) = http_request(ns, admin, "POST", "/logging?reset").await?;
    assert_eq!(status, 200);

    // Traffic still flows; then a requested shutdown drains and exits cleanly.
    let mut app = mesh.connect(ECHO_PORT).await?;
    echo_roundtrip(&mut app, b"still meshed").await?;
    drop(app);
    // The closed connection is finished (and logged) before shutdown is asked
    // for: a connection still closing when drain starts is held open until the
    // drain deadline (a known race in the drain of half-closed HBONE streams),
    // which is not what this test is about.
    eventually(
        "the closed connection is finished",
        Duration::from_secs(5),
        || async {
            let closed = metric(
                &mesh.metrics("client").await?,
                "istio_tcp_connections_closed_total",
                &[],
            );
            anyhow::ensure!(closed >= 1.0, "{closed} closed: {}", mesh.log("client"));
            Ok(())
        },
    )
    .await?;
    let (status, body) = http_request(ns, admin, "POST", "/quitquitquit").await?;
    assert_eq!((status, body.trim()), (200, "shutdown now"));
    let exit = mesh
        .client_ztunnel
        .wait_timeout(Duration::from_secs(10))?
        .unwrap_or_else(|| panic!("ztunnel exits after /quitquitquit: {}", mesh.log("client")));
    assert!(exit.success(), "{exit:?}");
    Ok(())
}
