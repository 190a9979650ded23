//! Routes and policies applied by the waypoint, end to end over real mTLS:
//! a path-based DENY, a weighted split, retries within a budget, timeouts.

mod common;

use std::sync::atomic::Ordering;

use anyhow::Result;
use common::*;
use http::StatusCode;
use mesh_api::ambit::waypoint::v1 as wp;

fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn svc_config(mesh: &Mesh, name: &str, vip_host: u8, port: u32) -> wp::Service {
    wp::Service {
        namespace: NS.into(),
        name: name.into(),
        hostname: format!("{name}.{NS}.svc.cluster.local"),
        addresses: vec![mesh.ip(vip_host).to_string()],
        ports: vec![wp::Port {
            port,
            target_port: 0,
            protocol: wp::Protocol::Http1 as i32,
            name: "http".into(),
        }],
        ..Default::default()
    }
}

fn backend(name: &str, port: u32, weight: u32) -> wp::Backend {
    wp::Backend {
        hostname: format!("{name}.{NS}.svc.cluster.local"),
        namespace: NS.into(),
        name: name.into(),
        port,
        weight,
        filters: vec![],
    }
}

fn route(rules: Vec<wp::Rule>) -> wp::Route {
    wp::Route {
        kind: wp::route::Kind::Http as i32,
        namespace: NS.into(),
        name: "echo-route".into(),
        created: 1,
        rules,
        ..Default::default()
    }
}

fn waypoint(services: Vec<wp::Service>) -> wp::Waypoint {
    wp::Waypoint {
        namespace: NS.into(),
        name: GATEWAY.into(),
        services,
        ..Default::default()
    }
}

/// Sends `path` on a fresh HTTP/1.1 connection through the waypoint.
async fn status_of(
    mesh: &Mesh,
    vip: std::net::SocketAddr,
    path: &str,
) -> Result<(StatusCode, String, http::HeaderMap)> {
    let mut send = mesh.h1(vip).await?;
    let resp = send.send_request(get(path)).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    Ok((status, body_text(resp).await?, headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_deny_gives_403_while_other_paths_pass() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    svc.policies.push(wp::Policy {
        namespace: NS.into(),
        name: "deny-admin".into(),
        action: wp::policy::Action::Deny as i32,
        rules: vec![wp::PolicyRule {
            to: vec![wp::Operation {
                paths: vec!["/admin/*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dry_run: false,
    });
    mesh.push_waypoint(waypoint(vec![svc])).await?;

    let (status, body, _) = status_of(&mesh, vip, "/admin/users").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    // A path that normalizes into the denied prefix is denied too.
    let (status, _, _) = status_of(&mesh, vip, "/public/../admin/x").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body, _) = status_of(&mesh, vip, "/public/index").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An unnormalizable path is refused before routing and policy.
    let (status, _, _) = status_of(&mesh, vip, "/a%2fb").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);

    let metrics = mesh.metrics().await?;
    assert!(
        metrics.contains("waypoint_authz_denied_total{policy=\"default/deny-admin\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"403\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/client\"")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_over_1000_requests() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "v1").await?;
    mesh.destination(2, "v2").await?;
    let b1 = Backend::start("v1", false).await?;
    let b2 = Backend::start("v2", false).await?;
    let vip = mesh.service("echo", 100, 80, &[]).await?;
    mesh.service("echo-v1", 101, 80, &[("v1", 1, b1.port)])
        .await?;
    mesh.service("echo-v2", 102, 80, &[("v2", 2, b2.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    svc.routes.push(route(vec![wp::Rule {
        name: "split".into(),
        backends: vec![backend("echo-v1", 80, 90), backend("echo-v2", 80, 10)],
        ..Default::default()
    }]));
    mesh.push_waypoint(waypoint(vec![svc])).await?;

    let mut send = mesh.h1(vip).await?;
    let (mut v1, mut v2) = (0u32, 0u32);
    for _ in 0..1000 {
        send.ready().await?;
        let resp = send.send_request(get("/split")).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        match resp.headers()["x-backend"].to_str()? {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected backend {other}"),
        }
        body_text(resp).await?;
    }
    // Binomial(1000, 0.1): sd ~9.5; +-5 sd is 53..147.
    assert!((53..=147).contains(&v2), "v1={v1} v2={v2}");
    assert_eq!(v1 + v2, 1000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_503s_into_success_and_the_budget_limits_them() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    svc.routes.push(route(vec![wp::Rule {
        name: "retrying".into(),
        backends: vec![backend("echo", 80, 1)],
        retry: Some(wp::Retry {
            attempts: 3,
            codes: vec![503],
            backoff: Some(duration_ms(1)),
        }),
        ..Default::default()
    }]));
    mesh.push_waypoint(waypoint(vec![svc])).await?;

    // The backend fails its first two requests: two retries make it a 200.
    let (status, body, headers) = status_of(&mesh, vip, "/flaky/2").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-backend"], "echo");
    assert_eq!(b.requests.load(Ordering::SeqCst), 3);

    // Attempts are bounded: always 503, 1 try + 3 retries.
    let before = b.requests.load(Ordering::SeqCst);
    let (status, _, _) = status_of(&mesh, vip, "/status/503").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.requests.load(Ordering::SeqCst) - before, 4);

    // The budget: 40 slow failing requests at once may retry at most 20%
    // of the active requests (at least 3) at a time; without a budget each
    // would retry 3 times (120 retries).
    let mesh = std::sync::Arc::new(mesh);
    let before = b.requests.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mesh = mesh.clone();
        tasks.push(tokio::spawn(async move {
            status_of(&mesh, vip, "/slow503/300").await.map(|r| r.0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, StatusCode::SERVICE_UNAVAILABLE);
    }
    let retries = b.requests.load(Ordering::SeqCst) - before - 40;
    assert!(
        (1..=40).contains(&retries),
        "retries should be limited by the budget, not 0 or 120: {retries}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_fires_with_504() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    svc.routes.push(route(vec![wp::Rule {
        name: "quick".into(),
        backends: vec![backend("echo", 80, 1)],
        timeouts: Some(wp::Timeouts {
            request: Some(duration_ms(200)),
            backend_request: None,
        }),
        ..Default::default()
    }]));
    mesh.push_waypoint(waypoint(vec![svc])).await?;
    let started = std::time::Instant::now();
    let (status, body, _) = status_of(&mesh, vip, "/delay/3000").await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body, "upstream request timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let (status, _, _) = status_of(&mesh, vip, "/delay/10").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_is_nacked_with_its_reason_while_the_rest_applies() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    svc.routes.push(route(vec![
        wp::Rule {
            name: "broken".into(),
            matches: vec![wp::Match {
                path: Some(wp::PathMatch {
                    r#type: wp::path_match::Type::Regex as i32,
                    value: "(".into(),
                }),
                ..Default::default()
            }],
            backends: vec![backend("echo", 80, 1)],
            ..Default::default()
        },
        wp::Rule {
            name: "good".into(),
            matches: vec![wp::Match {
                path: Some(wp::PathMatch {
                    r#type: wp::path_match::Type::Prefix as i32,
                    value: "/good".into(),
                }),
                ..Default::default()
            }],
            backends: vec![backend("echo", 80, 1)],
            ..Default::default()
        },
    ]));
    let nack = mesh
        .push_waypoint_raw(waypoint(vec![svc]))
        .await?
        .expect("a NACK");
    assert!(nack.contains("broken"), "{nack}");
    assert!(nack.contains("regular expression"), "{nack}");
    // The valid rule applies: /good is served, anything else has no route.
    let (status, _, _) = status_of(&mesh, vip, "/good/x").await?;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = status_of(&mesh, vip, "/other").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let metrics = mesh.metrics().await?;
    assert!(
        metrics.contains("waypoint_config_errors_total{kind=\"waypoint_config\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_traffic_goes_to_that_pod_under_the_gateways_policies() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "echo-a").await?;
    let b = Backend::start("echo", false).await?;
    mesh.service("echo", 100, 80, &[("echo-a", 1, b.port)])
        .await?;
    let mut w = waypoint(vec![]);
    w.policies.push(wp::Policy {
        namespace: NS.into(),
        name: "gateway-deny-secret".into(),
        action: wp::policy::Action::Deny as i32,
        rules: vec![wp::PolicyRule {
            to: vec![wp::Operation {
                paths: vec!["/secret".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dry_run: false,
    });
    mesh.push_waypoint(w).await?;
    // The pod's own address, as a client ztunnel sends workload traffic.
    let pod = std::net::SocketAddr::new(mesh.ip(1), b.port);
    let (status, body, headers) = status_of(&mesh, pod, "/hello").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.contains_key("echo-x-forwarded-client-cert"));
    let (status, body, _) = status_of(&mesh, pod, "/secret").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_mirrors_get_a_copy() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "v1").await?;
    mesh.destination(2, "shadow").await?;
    let main = Backend::start("v1", false).await?;
    let shadow = Backend::start("shadow", false).await?;
    let vip = mesh
        .service("echo", 100, 80, &[("v1", 1, main.port)])
        .await?;
    mesh.service("shadow", 101, 80, &[("shadow", 2, shadow.port)])
        .await?;
    let mut svc = svc_config(&mesh, "echo", 100, 80);
    let prefix = |v: &str| wp::Match {
        path: Some(wp::PathMatch {
            r#type: wp::path_match::Type::Prefix as i32,
            value: v.into(),
        }),
        ..Default::default()
    };
    svc.routes.push(route(vec![
        wp::Rule {
            name: "teapot".into(),
            matches: vec![prefix("/fault")],
            backends: vec![backend("echo", 80, 1)],
            fault: Some(wp::Fault {
                abort_status: 418,
                abort_percent: 100.0,
                ..Default::default()
            }),
            ..Default::default()
        },
        wp::Rule {
            name: "mirrored".into(),
            matches: vec![prefix("/")],
            backends: vec![backend("echo", 80, 1)],
            filters: vec![wp::Filter {
                kind: Some(wp::filter::Kind::RequestMirror(wp::Mirror {
                    backend: Some(backend("shadow", 80, 1)),
                    percent: 100.0,
                })),
            }],
            ..Default::default()
        },
    ]));
    mesh.push_waypoint(waypoint(vec![svc])).await?;

    let (status, body, _) = status_of(&mesh, vip, "/fault/x").await?;
    assert_eq!(status.as_u16(), 418, "{body}");
    assert_eq!(main.requests.load(Ordering::SeqCst), 0);

    let (status, _, headers) = status_of(&mesh, vip, "/copied").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "v1");
    mesh_testkit::eventually("the mirror got a copy", PATIENCE, || async {
        anyhow::ensure!(shadow.requests.load(Ordering::SeqCst) == 1);
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_authorized_at_l4() -> Result<()> {
    let mut mesh = Mesh::start(|_| {}).await?;
    mesh.destination(1, "db-0").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo = mesh_testkit::EchoServer::start(listener);
    let vip = mesh
        .service("db", 100, 5432, &[("db-0", 1, echo.addr.port())])
        .await?;
    let mut svc = svc_config(&mesh, "db", 100, 5432);
    svc.ports[0].protocol = wp::Protocol::Tcp as i32;
    svc.policies.push(wp::Policy {
        namespace: NS.into(),
        name: "only-admin".into(),
        action: wp::policy::Action::Allow as i32,
        rules: vec![wp::PolicyRule {
            from: vec![wp::Source {
                principals: vec!["cluster.local/ns/default/sa/admin".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dry_run: false,
    });
    mesh.push_waypoint(waypoint(vec![svc])).await?;
    // A declared TCP port: the tunnel itself is refused.
    match mesh.connect(vip).await {
        Err(mesh_core::hbone::HboneError::Refused { status, .. }) => assert_eq!(status, 403),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert_eq!(echo.accepted(), 0);
    let metrics = mesh.metrics().await?;
    assert!(
        metrics.contains("waypoint_authz_denied_total{policy=\"default/only-admin\"} 1"),
        "{metrics}"
    );
    Ok(())
}
