//! ztunnel filled from a control plane: the scripted ADS server over real
//! TLS, the app in-process on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use mesh_api::istio::security as xsec;
use mesh_api::istio::workload as xw;
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::CertificateAuthority;
use mesh_testkit::eventually;
use mesh_testkit::xds_server::{XdsServer, resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::{App, Config};

const PATIENCE: Duration = Duration::from_secs(10);

/// Plaintext to the local workload is refused (reset or closed at once)
/// when the strict policy from the control plane applies.
async fn plaintext_refused(addr: SocketAddr) -> Result<()> {
    // On loopback the reset can arrive before the connect completes.
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(anyhow!("plaintext was served: {n} bytes came back")),
        Err(_) => Err(anyhow!("plaintext connection neither served nor refused")),
    }
}

fn denied_count(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_failed_total{") && l.contains("DENY"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as usize
        })
        .sum()
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {buf:?}"))?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

fn local_workload(uid: &str, name: &str, ip: &[u8]) -> xw::Address {
    xw::Address {
        r#type: Some(xw::address::Type::Workload(xw::Workload {
            uid: uid.into(),
            name: name.into(),
            namespace: "default".into(),
            service_account: name.into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
            node: "node-a".into(),
            authorization_policies: vec!["istio-system/istio_converted_static_strict".into()],
            ..Default::default()
        })),
    }
}

fn strict_policy() -> xsec::Authorization {
    xsec::Authorization {
        name: "istio_converted_static_strict".into(),
        namespace: "istio-system".into(),
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
    }
}

fn config(dir: &std::path::Path, server: &XdsServer) -> Result<Config> {
    let ca = CertificateAuthority::generate("ztunnel xds test")?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root.key"), ca.key_pem())?;
    std::fs::write(dir.join("xds-root.pem"), server.root_pem())?;
    let text = format!(
        "
proxy:
  workload: default/server
  certificates:
    ca: {{cert: root.pem, key: root.key}}
  packetMark: null
  drainDeadline: 1s
  listeners:
    outbound: 127.0.0.1:0
    inbound: 127.0.0.1:0
    inboundPlaintext: 127.0.0.1:0
    admin: 127.0.0.1:0
    metrics: 127.0.0.1:0
    readiness: 127.0.0.1:0
  xds:
    address: {}
    rootCert: xds-root.pem
    token: t0ken
    nodeName: node-a
    podName: ztunnel-abc
    instanceIp: 10.1.0.2
",
        server.address()
    );
    let path = dir.join("ztunnel.yaml");
    std::fs::write(&path, text)?;
    Ok(Config::load(&path)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_comes_from_xds_readiness_follows_sync_and_survives_the_control_plane() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = XdsServer::start().await?;
    let app = App::build(config(dir.path(), &server)?, LogControl::detached()).await?;
    let a = app.addresses;

    // Subscribed in order, with our node.
    let subs = eventually("two subscriptions", PATIENCE, || async {
        let r = server.requests();
        ensure!(r.len() >= 2, "{r:?}");
        Ok(r)
    })
    .await?;
    assert_eq!(subs[0].request.type_url, ADDRESS_TYPE_URL);
    assert_eq!(subs[1].request.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(
        subs[0].request.node.as_ref().unwrap().id,
        "ztunnel~10.1.0.2~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    );
    assert_eq!(
        server.stream_metadata()[0].get("authorization").unwrap(),
        "Bearer t0ken"
    );
    let (status, body) = http_get(a.readiness, "/healthz/ready").await?;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("xDS sync"), "{body}");

    // Addresses with one bad workload: NACKed by name, the rest applied.
    let nonce = server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                resource(
                    "Kubernetes//Pod/default/server",
                    "1",
                    ADDRESS_TYPE_URL,
                    &local_workload("Kubernetes//Pod/default/server", "server", &[127, 0, 0, 1]),
                ),
                resource(
                    "Kubernetes//Pod/default/broken",
                    "1",
                    ADDRESS_TYPE_URL,
                    &local_workload("Kubernetes//Pod/default/broken", "broken", &[1, 2, 3]),
                ),
            ],
            vec![],
        )
        .await?;
    let nack = eventually("the NACK", PATIENCE, || async {
        server
            .requests()
            .into_iter()
            .find(|r| r.request.response_nonce == nonce)
            .ok_or_else(|| anyhow!("no reply yet"))
    })
    .await?;
    let text = nack.nack().unwrap_or_default().to_string();
    assert!(
        text.starts_with("Kubernetes//Pod/default/broken: addresses[0]: 3 bytes"),
        "{text}"
    );
    // Only Address applied so far: still not ready.
    let (status, _) = http_get(a.readiness, "/healthz/ready").await?;
    assert_eq!(status, 500);

    let nonce = server
        .push(
            AUTHORIZATION_TYPE_URL,
            vec![resource(
                "istio-system/istio_converted_static_strict",
                "1",
                AUTHORIZATION_TYPE_URL,
                &strict_policy(),
            )],
            vec![],
        )
        .await?;
    eventually("ready after both types", PATIENCE, || async {
        let (status, body) = http_get(a.readiness, "/healthz/ready").await?;
        ensure!(status == 200, "{status} {body}");
        Ok(())
    })
    .await?;
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.request.response_nonce == nonce && r.nack().is_none())
    );
    let (_, dump) = http_get(a.admin, "/config_dump").await?;
    let dump: serde_json::Value = serde_json::from_str(&dump)?;
    assert_eq!(dump["source"], "xds");
    assert_eq!(dump["xds"]["synced"], true);
    assert_eq!(dump["xds"]["connected"], true);
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 1);
    assert_eq!(
        dump["workloads"][0]["identity"],
        "spiffe://cluster.local/ns/default/sa/server"
    );
    assert_eq!(dump["policies"][0]["name"], "istio_converted_static_strict");
    assert_eq!(dump["config"]["xds"]["token"], "<redacted>");
    let (_, metrics) = http_get(a.metrics, "/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ambit_xds_rejected_resources_total{")
                && l.contains("istio.workload.Address")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(metrics.contains("istio_xds_message_total{"), "{metrics}");

    // The policy from the control plane is enforced on the data path.
    plaintext_refused(a.inbound_plaintext).await?;
    eventually("the denial is counted", PATIENCE, || async {
        let (_, m) = http_get(a.metrics, "/metrics").await?;
        ensure!(denied_count(&m) == 1, "{m}");
        Ok(())
    })
    .await?;

    // The control plane goes away: the state and readiness stay, the status says so.
    server.stop().await;
    eventually("disconnected", PATIENCE, || async {
        let (_, dump) = http_get(a.admin, "/config_dump").await?;
        let dump: serde_json::Value = serde_json::from_str(&dump)?;
        ensure!(dump["xds"]["connected"] == false, "{}", dump["xds"]);
        ensure!(dump["workloads"].as_array().map(Vec::len) == Some(1));
        Ok(())
    })
    .await?;
    let (status, _) = http_get(a.readiness, "/healthz/ready").await?;
    assert_eq!(status, 200);
    plaintext_refused(a.inbound_plaintext).await?;
    eventually("the second denial is counted", PATIENCE, || async {
        let (_, m) = http_get(a.metrics, "/metrics").await?;
        ensure!(denied_count(&m) == 2, "{m}");
        Ok(())
    })
    .await?;

    // It comes back: the client reconnects and says what it has.
    let before = server.streams_opened();
    server.resume().await?;
    let again = eventually("resubscribed", PATIENCE, || async {
        let r: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.stream > before && !r.is_reply())
            .collect();
        ensure!(r.len() >= 2, "{r:?}");
        Ok(r)
    })
    .await?;
    assert_eq!(
        again[0]
            .request
            .initial_resource_versions
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["Kubernetes//Pod/default/server".to_string()],
        "the rejected workload is not claimed"
    );

    // Shutdown stops the xDS client with everything else, within the deadline.
    app.shutdown().trigger();
    let outcome = tokio::time::timeout(Duration::from_secs(5), app.run())
        .await
        .map_err(|_| anyhow!("the app did not stop"))?;
    assert_eq!(outcome, mesh_core::drain::DrainOutcome::Complete);
    Ok(())
}
