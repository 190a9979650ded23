//! Waypoints on the data path, with real mTLS: a client's ztunnel sends
//! service and pod-IP traffic of waypoint-bound destinations to a stand-in
//! waypoint (an HBONE server holding the waypoint's certificate), and a
//! destination's ztunnel admits a waypoint-bound pod's traffic only from the
//! waypoint, until the binding is removed.
//!
//! Every test has its own loopback addresses (127.<pid>.<n>.x), so the
//! listeners ztunnel binds on "pod" and "VIP" addresses do not collide.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use http::{HeaderMap, StatusCode};
use mesh_api::ADDRESS_TYPE_URL;
use mesh_api::istio::workload as xw;
use mesh_core::Identity;
use mesh_core::hbone::{self, ConnectRequest, HboneError, PlainDialer, Pool, PoolKey};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::CertificateAuthority;
use mesh_testkit::xds_server::{XdsServer, resource};
use mesh_testkit::{EchoServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use ztunnel::{App, Config};

const PATIENCE: Duration = Duration::from_secs(10);

/// Loopback addresses of one test: `127.<pid>.<test>.<last>`.
fn ip(test: u8, last: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, (pid % 200 + 20) as u8, test, last))
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

fn write_ca(dir: &Path) -> Result<CertificateAuthority> {
    let ca = CertificateAuthority::generate("waypoint test")?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root.key"), ca.key_pem())?;
    Ok(ca)
}

#[path = "waypoint/standin.rs"]
mod standin;
use standin::{HboneServer, cert_store};

async fn roundtrip(s: &mut TcpStream, payload: &[u8]) -> Result<()> {
    s.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .context("no echo in time")??;
    ensure!(back == payload, "echo differs");
    Ok(())
}

/// A connection ztunnel closed without serving it.
async fn closed(s: &mut TcpStream) -> Result<()> {
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => bail!("{n} bytes came back on a connection that should be refused"),
        Err(_) => bail!("the connection is neither served nor closed"),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

async fn config_dump(admin: SocketAddr) -> Result<serde_json::Value> {
    let response = http_get(admin, "/config_dump").await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    Ok(serde_json::from_str(body)?)
}

/// The value of the first metric line starting with `prefix` and containing every part.
fn metric(metrics: &str, prefix: &str, parts: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_metric(
    app_metrics: SocketAddr,
    prefix: &str,
    parts: &[&str],
    want: f64,
) -> Result<()> {
    eventually(
        &format!("{prefix} {parts:?} = {want}"),
        PATIENCE,
        || async {
            let m = http_get(app_metrics, "/metrics").await?;
            let got = metric(&m, prefix, parts);
            ensure!(got == Some(want), "{got:?} in\n{m}");
            Ok(())
        },
    )
    .await
}

/// A dedicated ztunnel for `default/client` whose outbound listener is bound
/// on `outbound`, so connecting to that address is what capturing a
/// connection to it would be (the original destination is the listener's own
/// address when nothing redirected it).
async fn client_ztunnel(dir: &Path, outbound: SocketAddr, model: &str) -> Result<App> {
    let text = format!(
        "
proxy:
  workload: default/client
  certificates: {{ca: {{cert: {dir}/root.pem, key: {dir}/root.key}}}}
  packetMark: null
  drainDeadline: 1s
  connectTimeout: 3s
  listeners:
    outbound: {outbound}
    inbound: 127.0.0.1:0
    inboundPlaintext: 127.0.0.1:0
    admin: 127.0.0.1:0
    metrics: 127.0.0.1:0
    readiness: 127.0.0.1:0
{model}",
        dir = dir.display()
    );
    Ok(App::build(Config::parse(&text)?, LogControl::detached()).await?)
}

fn is_reset(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Connects to `to` from `from` (the client pod's address).
async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    Ok(s.connect(to).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_pod_ip_traffic_of_bound_destinations_goes_to_the_waypoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = write_ca(dir.path())?;
    let (client_ip, wp_ip, reviews_ip, ratings_ip, details_ip) =
        (ip(1, 1), ip(1, 10), ip(1, 2), ip(1, 3), ip(1, 4));
    let (reviews_vip, details_vip, broken_vip) = (ip(1, 102), ip(1, 104), ip(1, 105));
    let mut waypoint =
        HboneServer::serve(&ca, &id("waypoint"), TcpListener::bind((wp_ip, 0)).await?).await?;
    let wp_port = waypoint.addr.port();
    // `details` has no waypoint: its pod's HBONE port is reached directly.
    let mut details = HboneServer::serve(
        &ca,
        &id("details"),
        TcpListener::bind((details_ip, 15008)).await?,
    )
    .await?;
    let model = format!(
        "
workloads:
- {{name: client, namespace: default, serviceAccount: client, addresses: [{client_ip}]}}
- name: waypoint-0
  namespace: default
  serviceAccount: waypoint
  addresses: [{wp_ip}]
  services: {{default/waypoint.default.svc.cluster.local: [{{servicePort: {wp_port}, targetPort: {wp_port}}}]}}
- name: reviews-0
  namespace: default
  serviceAccount: reviews
  addresses: [{reviews_ip}]
  services: {{default/reviews.default.svc.cluster.local: [{{servicePort: 9080, targetPort: 9080}}]}}
- name: ratings-0
  namespace: default
  serviceAccount: ratings
  addresses: [{ratings_ip}]
  waypoint: {{hostname: {{namespace: default, hostname: waypoint.default.svc.cluster.local}}, hboneMtlsPort: {wp_port}}}
- name: details-0
  namespace: default
  serviceAccount: details
  addresses: [{details_ip}]
  services: {{default/details.default.svc.cluster.local: [{{servicePort: 9080, targetPort: 9081}}]}}
services:
- {{name: waypoint, namespace: default, addresses: [{wp_vip}], ports: [{{servicePort: {wp_port}, targetPort: {wp_port}}}]}}
- name: reviews
  namespace: default
  addresses: [{reviews_vip}]
  ports: [{{servicePort: 9080, targetPort: 9080}}]
  waypoint: {{hostname: {{namespace: default, hostname: waypoint.default.svc.cluster.local}}, hboneMtlsPort: {wp_port}}}
- {{name: details, namespace: default, addresses: [{details_vip}], ports: [{{servicePort: 9080, targetPort: 9081}}]}}
- name: broken
  namespace: default
  addresses: [{broken_vip}]
  ports: [{{servicePort: 9080, targetPort: 9080}}]
  waypoint: {{hostname: {{namespace: default, hostname: gone.default.svc.cluster.local}}}}
",
        wp_vip = ip(1, 110),
    );

    // (a) Service traffic: to a waypoint pod, authority = VIP:port, with the
    // client's address and the service's name in `forwarded`, and the
    // client's own identity on the TLS hop.
    let vip = SocketAddr::new(reviews_vip, 9080);
    let app = client_ztunnel(dir.path(), vip, &model).await?;
    let metrics = app.addresses.metrics;
    let (stop, running) = (app.shutdown(), tokio::spawn(app.run()));
    let mut s = connect_from(client_ip, vip).await?;
    roundtrip(&mut s, b"to reviews via the waypoint").await?;
    let seen = waypoint.next().await?;
    assert_eq!(seen.authority, vip);
    assert_eq!(
        seen.forwarded.as_deref(),
        Some(
            format!(
                "for=\"{}\";host=reviews.default.svc.cluster.local",
                s.local_addr()?
            )
            .as_str()
        )
    );
    assert_eq!(seen.peer_identity, Some(id("client")));
    drop(s);
    wait_metric(
        metrics,
        "ambit_waypoint_connections_total{",
        &["waypoint=\"default/waypoint\"", "reason=\"outbound\""],
        1.0,
    )
    .await?;
    wait_metric(
        metrics,
        "istio_tcp_connections_closed_total{",
        &[
            "destination_service=\"reviews.default.svc.cluster.local\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        ],
        1.0,
    )
    .await?;
    stop.trigger();
    tokio::time::timeout(PATIENCE, running).await??;

    // (b) A pod whose workload is bound, addressed by its IP: to the
    // waypoint, authority = podIP:port, no service in `forwarded`.
    let pod = SocketAddr::new(ratings_ip, 8080);
    let app = client_ztunnel(dir.path(), pod, &model).await?;
    let (stop, running) = (app.shutdown(), tokio::spawn(app.run()));
    let mut s = connect_from(client_ip, pod).await?;
    roundtrip(&mut s, b"to ratings-0 via the waypoint").await?;
    let seen = waypoint.next().await?;
    assert_eq!(seen.authority, pod);
    assert_eq!(
        seen.forwarded.as_deref(),
        Some(format!("for=\"{}\"", s.local_addr()?).as_str())
    );
    assert_eq!(seen.peer_identity, Some(id("client")));
    drop(s);
    stop.trigger();
    tokio::time::timeout(PATIENCE, running).await??;

    // (d) Without waypoint fields nothing changes: the endpoint's own HBONE
    // port, authority = endpoint IP:target port.
    let vip = SocketAddr::new(details_vip, 9080);
    let app = client_ztunnel(dir.path(), vip, &model).await?;
    let metrics = app.addresses.metrics;
    let (stop, running) = (app.shutdown(), tokio::spawn(app.run()));
    let mut s = connect_from(client_ip, vip).await?;
    roundtrip(&mut s, b"to details directly").await?;
    let seen = details.next().await?;
    assert_eq!(seen.authority, SocketAddr::new(details_ip, 9081));
    assert_eq!(seen.peer_identity, Some(id("client")));
    drop(s);
    wait_metric(metrics, "istio_tcp_connections_closed_total{", &[], 1.0).await?;
    let m = http_get(metrics, "/metrics").await?;
    assert_eq!(
        metric(&m, "ambit_waypoint_connections_total{", &[]),
        None,
        "{m}"
    );
    stop.trigger();
    tokio::time::timeout(PATIENCE, running).await??;

    // A waypoint that resolves to nothing fails the connection, counted;
    // the traffic is never sent around it.
    let vip = SocketAddr::new(broken_vip, 9080);
    let app = client_ztunnel(dir.path(), vip, &model).await?;
    let metrics = app.addresses.metrics;
    let (stop, running) = (app.shutdown(), tokio::spawn(app.run()));
    // On loopback the reset can arrive before the connect completes.
    match connect_from(client_ip, vip).await {
        Ok(mut s) => closed(&mut s).await?,
        Err(e) if is_reset(&e) => {}
        Err(e) => return Err(e),
    }
    wait_metric(
        metrics,
        "ambit_waypoint_unreachable_total{",
        &[
            "waypoint=\"default/gone\"",
            "reason=\"no_waypoint_service\"",
        ],
        1.0,
    )
    .await?;
    stop.trigger();
    tokio::time::timeout(PATIENCE, running).await??;
    assert!(
        waypoint.seen.try_recv().is_err(),
        "nothing else reached the waypoint"
    );
    Ok(())
}

fn workload(name: &str, sa: &str, ip: IpAddr, services: &[(&str, u32)]) -> xw::Workload {
    let IpAddr::V4(v4) = ip else { unreachable!() };
    xw::Workload {
        uid: format!("Kubernetes//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: sa.into(),
        addresses: vec![v4.octets().to_vec()],
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        services: services
            .iter()
            .map(|(host, port)| {
                (
                    format!("default/{host}"),
                    xw::PortList {
                        ports: vec![xw::Port {
                            service_port: *port,
                            target_port: *port,
                            app_protocol: 0,
                        }],
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn service(name: &str, vip: IpAddr, port: u32, waypoint: bool) -> xw::Service {
    let IpAddr::V4(v4) = vip else { unreachable!() };
    xw::Service {
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.svc.cluster.local"),
        addresses: vec![xw::NetworkAddress {
            network: String::new(),
            address: v4.octets().to_vec(),
            length: None,
        }],
        ports: vec![xw::Port {
            service_port: port,
            target_port: port,
            app_protocol: 0,
        }],
        waypoint: waypoint.then(|| xw::GatewayAddress {
            destination: Some(xw::gateway_address::Destination::Hostname(
                xw::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    }
}

fn address(name: &str, a: xw::address::Type) -> mesh_api::envoy::service::discovery::v3::Resource {
    resource(
        name,
        "1",
        ADDRESS_TYPE_URL,
        &xw::Address { r#type: Some(a) },
    )
}

/// Opens a tunnel through ztunnel's inbound listener as `who`.
async fn hbone_as(
    pool: &Pool,
    who: &Identity,
    inbound: SocketAddr,
    target: SocketAddr,
) -> Result<hbone::Tunnel, HboneError> {
    let key = PoolKey::new(who.clone(), vec![id("reviews")], inbound, None);
    pool.connect(
        &key,
        ConnectRequest {
            authority: target,
            headers: HeaderMap::new(),
        },
    )
    .await
    .map(|(t, _)| t)
}

/// Carries bytes over a tunnel from a local socket pair and checks the echo.
async fn tunnel_roundtrip(tunnel: hbone::Tunnel) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let mut near = TcpStream::connect(l.local_addr()?).await?;
    let (mut far, _) = l.accept().await?;
    let carry = tokio::spawn(async move { hbone::splice(&mut far, tunnel, None).await });
    roundtrip(&mut near, b"through the pod's ztunnel").await?;
    drop(near);
    let _ = tokio::time::timeout(PATIENCE, carry).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_admits_only_its_waypoint_until_the_binding_is_removed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = write_ca(dir.path())?;
    let (reviews_ip, wp_ip) = (ip(2, 2), ip(2, 10));
    let server = XdsServer::start().await?;
    std::fs::write(dir.path().join("xds-root.pem"), server.root_pem())?;
    let app_listener = TcpListener::bind(SocketAddr::new(reviews_ip, 0)).await?;
    let app_port = app_listener.local_addr()?.port();
    let _app = EchoServer::start(app_listener);
    let text = format!(
        "
proxy:
  workload: default/reviews-0
  certificates: {{ca: {{cert: root.pem, key: root.key}}}}
  packetMark: null
  drainDeadline: 1s
  connectTimeout: 3s
  listeners:
    outbound: 127.0.0.1:0
    inbound: {reviews_ip}:0
    inboundPlaintext: {reviews_ip}:0
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
    let path = dir.path().join("ztunnel.yaml");
    std::fs::write(&path, text)?;
    let app = App::build(Config::load(&path)?, LogControl::detached()).await?;
    let a = app.addresses;
    let (stop, running) = (app.shutdown(), tokio::spawn(app.run()));
    eventually("subscribed", PATIENCE, || async {
        ensure!(!server.requests().is_empty());
        Ok(())
    })
    .await?;
    let mesh = |bound: bool| {
        vec![
            address(
                "Kubernetes//Pod/default/reviews-0",
                xw::address::Type::Workload(workload(
                    "reviews-0",
                    "reviews",
                    reviews_ip,
                    &[("reviews.default.svc.cluster.local", 9080)],
                )),
            ),
            address(
                "Kubernetes//Pod/default/waypoint-0",
                xw::address::Type::Workload(workload(
                    "waypoint-0",
                    "waypoint",
                    wp_ip,
                    &[("waypoint.default.svc.cluster.local", 15008)],
                )),
            ),
            address(
                "default/reviews.default.svc.cluster.local",
                xw::address::Type::Service(service("reviews", ip(2, 102), 9080, bound)),
            ),
            address(
                "default/waypoint.default.svc.cluster.local",
                xw::address::Type::Service(service("waypoint", ip(2, 110), 15008, false)),
            ),
        ]
    };
    server.push(ADDRESS_TYPE_URL, mesh(true), vec![]).await?;
    eventually("the binding is known", PATIENCE, || async {
        let dump = config_dump(a.admin).await?;
        let services = dump["services"].as_array().cloned().unwrap_or_default();
        ensure!(
            services.iter().any(|s| s["name"] == "reviews"
                && s["waypoint"]["hostname"]["hostname"] == "waypoint.default.svc.cluster.local"),
            "{dump}"
        );
        Ok(())
    })
    .await?;

    let store = cert_store(&ca);
    store.prefetch(&id("client")).await?;
    store.prefetch(&id("waypoint")).await?;
    let pool = Pool::new(store, Arc::new(PlainDialer), Default::default());
    let target = SocketAddr::new(reviews_ip, app_port);

    // (c) A direct connection from another workload is refused before
    // authorization, and counted.
    match hbone_as(&pool, &id("client"), a.inbound, target).await {
        Err(HboneError::Refused { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        Err(e) => bail!("refused for the wrong reason: {e}"),
        Ok(_) => bail!("a direct connection to a waypoint-bound pod was admitted"),
    }
    wait_metric(
        a.metrics,
        "ambit_waypoint_bypass_refused_total{",
        &[
            "waypoint=\"default/waypoint\"",
            "reason=\"not_waypoint_identity\"",
        ],
        1.0,
    )
    .await?;
    // Plaintext to the pod is refused the same way.
    // On loopback the reset can arrive before the connect completes.
    match TcpStream::connect(a.inbound_plaintext).await {
        Ok(mut s) => closed(&mut s).await?,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e.into()),
    }
    wait_metric(
        a.metrics,
        "ambit_waypoint_bypass_refused_total{",
        &["reason=\"plaintext\""],
        1.0,
    )
    .await?;
    // The waypoint's own identity is admitted and reaches the app.
    let tunnel = hbone_as(&pool, &id("waypoint"), a.inbound, target).await?;
    tunnel_roundtrip(tunnel).await?;
    wait_metric(
        a.metrics,
        "istio_tcp_connections_opened_total{",
        &["source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\""],
        1.0,
    )
    .await?;

    // (d) The binding is removed: the same client goes straight to the pod again.
    server.push(ADDRESS_TYPE_URL, mesh(false), vec![]).await?;
    eventually("the binding is gone", PATIENCE, || async {
        let dump = config_dump(a.admin).await?;
        let services = dump["services"].as_array().cloned().unwrap_or_default();
        ensure!(
            services
                .iter()
                .any(|s| s["name"] == "reviews" && s.get("waypoint").is_none()),
            "{dump}"
        );
        Ok(())
    })
    .await?;
    let tunnel = hbone_as(&pool, &id("client"), a.inbound, target).await?;
    tunnel_roundtrip(tunnel).await?;
    let m = http_get(a.metrics, "/metrics").await?;
    assert_eq!(
        metric(
            &m,
            "ambit_waypoint_bypass_refused_total{",
            &["reason=\"not_waypoint_identity\""]
        ),
        Some(1.0),
        "{m}"
    );

    stop.trigger();
    tokio::time::timeout(PATIENCE, running).await??;
    Ok(())
}
