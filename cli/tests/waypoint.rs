//! The waypoint on the local cluster with the whole mesh (root; needs the
//! ztunnel, istiod-lite, node agent and waypoint binaries): namespace
//! `server` is bound to the waypoint `waypoint` and a client pod in
//! namespace `client` calls its services. One cluster serves every case, in
//! order (the case that removes the binding last); each case's result is
//! reported, the test fails if any failed, and it ends with `ambit down` and
//! the check that nothing is left.
//!
//! The cluster (`tests/fixtures/waypoint/`, plus the Gateway `waypoint` in
//! `server` and the namespace's `istio.io/use-waypoint` from `ambit waypoint
//! apply -n server --enroll-namespace`):
//! - `web` (10.96.1.10:80) selects both `v1` and `v2`; its HTTPRoute sends
//!   90% to `web-v1`, 10% to `web-v2`. Without the waypoint, L4 balancing
//!   over both pods would give about half each.
//! - a DENY AuthorizationPolicy on `web` for `/admin` and `/admin/*`;
//! - `flaky` fails every second request with 503; its route retries 503;
//! - `slow` answers after 3 s; its route has a 500 ms request timeout;
//! - `h2` serves HTTP/2 with prior knowledge only (an HTTP/1.1 hop fails);
//! - `grpc` serves `ambit.testapp.v1.Echo` (port name `grpc`);
//! - `secure` (10.96.1.17) selects the web pods behind a RequestAuthentication
//!   (an inline key set) and an ALLOW policy on its request principal: the
//!   example's `examples/waypoint/jwt.yaml`; the tokens, signed with that
//!   set's key or another, are in `examples/waypoint/jwt-tokens.txt`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit::cluster::{Cluster, probe};
use ambit::grpc_app::client::GrpcSummary;
use ambit::http_app::server::Echo;
use ambit::http_app::tally::Summary;
use ambit::label::{self, LabelChange, Target};
use anyhow::{Context, Result, bail, ensure};
use common::{Setup, bin_dir, down_and_check, mesh_setup};
use mesh_testkit::eventually;

mod common;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waypoint");
const CLIENT_POD: &str = "client/client";
const WAYPOINT_POD: &str = "server/waypoint";
const CLIENT_PRINCIPAL: &str = "spiffe://cluster.local/ns/client/sa/default";
const WEB: &str = "http://10.96.1.10";
const FLAKY: &str = "http://10.96.1.13";
const SLOW: &str = "http://10.96.1.14";
const H2: &str = "http://10.96.1.15";
const GRPC: &str = "10.96.1.16:9090";
const SECURE: &str = "http://10.96.1.17";
const JWT_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/waypoint/jwt.yaml");
const TOKENS: &str = include_str!("../../examples/waypoint/jwt-tokens.txt");
const WAYPOINT_ADMIN: &str = "127.0.0.1:15021";
const ZTUNNEL_METRICS: &str = "127.0.0.1:15020";
const SERVER_NODE: &str = "node-2";
const PATIENCE: Duration = Duration::from_secs(60);

/// Requests for the weighted split, and the accepted range of `v2` answers:
/// for Binomial(1000, 0.1) the chance of falling outside 52..=148 is
/// 7.3e-7, so a failure means the weights are wrong, not bad luck.
const SPLIT_REQUESTS: u64 = 1000;
const V2_BOUNDS: std::ops::RangeInclusive<u64> = 52..=148;

fn fixture_files() -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(FIXTURE)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push((name, std::fs::read_to_string(entry.path())?));
    }
    files.push(("jwt.yaml".into(), std::fs::read_to_string(JWT_EXAMPLE)?));
    Ok(files)
}

/// The pod's network namespace, from the runner's current plan (the
/// waypoint pod is added after `up`).
fn pod_netns(state_dir: &Path, pod: &str) -> Result<String> {
    let cluster = Cluster::open(state_dir)?;
    Ok(cluster
        .plan()
        .pods
        .iter()
        .find(|p| p.key() == pod)
        .with_context(|| format!("no pod {pod} in the plan"))?
        .netns
        .clone())
}

fn node_netns(cluster: &Cluster, node: &str) -> Result<String> {
    Ok(cluster
        .plan()
        .node(node)
        .context("no such node")?
        .netns
        .clone())
}

fn pod_ip(cluster: &Cluster, pod: &str) -> Result<String> {
    cluster
        .pod_states()
        .into_iter()
        .find(|s| s.pod == pod)
        .and_then(|s| s.ip)
        .map(|ip| ip.to_string())
        .with_context(|| format!("{pod} has no IP"))
}

/// Runs `ambit app ARGS` inside the client pod's network namespace, as the
/// pod's own app would (its traffic is captured by its ztunnel).
fn app_in_client(state_dir: &Path, args: &[&str]) -> Result<String> {
    let netns = pod_netns(state_dir, CLIENT_POD)?;
    let out = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(bin_dir().join("ambit"))
        .arg("app")
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "ambit app {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn http(state_dir: &Path, url: &str, count: u64, extra: &[&str]) -> Result<Summary> {
    let count = count.to_string();
    let mut args = vec!["http-client", "--url", url, "--count", &count, "--summary"];
    args.extend_from_slice(extra);
    let out = app_in_client(state_dir, &args)?;
    Summary::from_output(&out).with_context(|| format!("no summary in:\n{out}"))
}

/// One request; its status and (for the app's own answers) the echo.
fn http_once(state_dir: &Path, url: &str, extra: &[&str]) -> Result<(u16, Option<Echo>)> {
    let mut args = vec!["http-client", "--url", url, "--body"];
    args.extend_from_slice(extra);
    let out = app_in_client(state_dir, &args)?;
    let line = out.lines().next().context("no output")?;
    let mut fields = line.splitn(4, ' ');
    let status: u16 = fields
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {line:?}"))?;
    let echo = fields
        .nth(2)
        .and_then(|body| serde_json::from_str(body).ok());
    Ok((status, echo))
}

fn grpc(state_dir: &Path, count: u64, stream: Option<u32>) -> Result<(GrpcSummary, String)> {
    let count = count.to_string();
    let stream = stream.map(|s| s.to_string());
    let mut args = vec!["grpc-client", "--target", GRPC, "--count", &count];
    if let Some(stream) = &stream {
        args.extend(["--stream", stream]);
    }
    let out = app_in_client(state_dir, &args)?;
    let summary =
        GrpcSummary::from_output(&out).with_context(|| format!("no summary in:\n{out}"))?;
    Ok((summary, out))
}

fn get(netns: &str, addr: &str, path: &str) -> Result<String> {
    let (code, body) = probe::get(netns, addr.parse()?, path, Duration::from_secs(2))?;
    ensure!(code == 200, "GET {addr}{path}: {code} {body}");
    Ok(body)
}

fn waypoint_metrics(state_dir: &Path) -> Result<String> {
    get(
        &pod_netns(state_dir, WAYPOINT_POD)?,
        WAYPOINT_ADMIN,
        "/metrics",
    )
}

fn sum_of(metrics: &str, name: &str, filters: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Requests the waypoint has counted (`istio_requests_total`).
fn waypoint_requests(state_dir: &Path) -> Result<u64> {
    Ok(sum_of(
        &waypoint_metrics(state_dir)?,
        "istio_requests_total{",
        &[],
    ))
}

fn has_client_principal(echo: &Echo) -> bool {
    echo.xfcc
        .as_deref()
        .is_some_and(|x| x.contains(&format!("URI={CLIENT_PRINCIPAL}")))
}

/// The last lines of the waypoint's and istiod-lite's logs, for a failure.
fn log_tails(state_dir: &Path) -> String {
    let mut text = String::new();
    for file in ["pods/server.waypoint.log", "istiod-lite.log"] {
        let log = std::fs::read_to_string(state_dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        text.push_str(&format!("--- {file} (last 40 lines)\n"));
        for line in &lines[lines.len().saturating_sub(40)..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Waits until the waypoint is ready and serves `web` with the caller's
/// identity in `x-forwarded-client-cert`.
async fn wait_for_waypoint(state_dir: &Path) -> Result<()> {
    eventually("the waypoint is ready", PATIENCE, || async move {
        get(
            &pod_netns(state_dir, WAYPOINT_POD)?,
            WAYPOINT_ADMIN,
            "/ready",
        )
        .map(|_| ())
    })
    .await?;
    eventually(
        "web is served through the waypoint",
        PATIENCE,
        || async move {
            match http_once(state_dir, &format!("{WEB}/"), &["--timeout", "3s"])? {
                (200, Some(echo)) if has_client_principal(&echo) => Ok(()),
                other => bail!("{other:?}"),
            }
        },
    )
    .await
}

fn weighted_split(state_dir: &Path) -> Result<()> {
    let summary = http(
        state_dir,
        &format!("{WEB}/"),
        SPLIT_REQUESTS,
        &["--quiet", "--timeout", "5s"],
    )?;
    ensure!(
        summary.status("200") == SPLIT_REQUESTS,
        "not all 200: {summary:?}"
    );
    let (v1, v2) = (summary.backend("v1"), summary.backend("v2"));
    ensure!(v1 + v2 == SPLIT_REQUESTS, "other backends: {summary:?}");
    ensure!(
        V2_BOUNDS.contains(&v2),
        "v2 answered {v2} of {SPLIT_REQUESTS}, outside {V2_BOUNDS:?} for a 10% weight ({summary:?})"
    );
    eprintln!(
        "split: v1 {v1}, v2 {v2}; p50 {} ms, p99 {} ms",
        summary.p50_ms, summary.p99_ms
    );
    Ok(())
}

fn path_deny(state_dir: &Path) -> Result<()> {
    for path in ["/admin", "/admin/users"] {
        let summary = http(state_dir, &format!("{WEB}{path}"), 5, &[])?;
        ensure!(
            summary.status("403") == 5 && summary.backend("-") == 5,
            "{path}: {summary:?}"
        );
    }
    for path in ["/", "/administrator", "/public/admin"] {
        let summary = http(state_dir, &format!("{WEB}{path}"), 5, &[])?;
        ensure!(summary.status("200") == 5, "{path}: {summary:?}");
    }
    let denied = sum_of(
        &waypoint_metrics(state_dir)?,
        "istio_requests_total{",
        &["response_code=\"403\""],
    );
    ensure!(denied >= 10, "the waypoint counted {denied} 403s");
    Ok(())
}

fn http2(state_dir: &Path) -> Result<()> {
    let summary = http(state_dir, &format!("{H2}/"), 20, &["--h2c"])?;
    ensure!(summary.status("200") == 20, "{summary:?}");
    match http_once(state_dir, &format!("{H2}/x"), &["--h2c"])? {
        (200, Some(echo)) => {
            ensure!(echo.version == "HTTP/2.0", "{echo:?}");
            ensure!(has_client_principal(&echo), "no client xfcc: {echo:?}");
        }
        other => bail!("{other:?}"),
    }
    Ok(())
}

fn grpc_unary_and_streaming(state_dir: &Path) -> Result<()> {
    let (unary, out) = grpc(state_dir, 20, None)?;
    ensure!(unary.code("OK") == 20, "{unary:?}\n{out}");
    ensure!(
        out.contains(&format!("URI={CLIENT_PRINCIPAL}")),
        "no client xfcc at the server:\n{out}"
    );
    let (streams, out) = grpc(state_dir, 5, Some(200))?;
    ensure!(streams.code("OK") == 5, "{streams:?}\n{out}");
    ensure!(streams.replies == 1000, "{streams:?}");
    let metrics = waypoint_metrics(state_dir)?;
    let ok = sum_of(
        &metrics,
        "istio_requests_total{",
        &["grpc_response_status=\"0\""],
    );
    ensure!(ok >= 25, "the waypoint counted {ok} gRPC OKs");
    Ok(())
}

/// `flaky` fails requests 2, 4, 6, ... at the app; one retry on 503 turns
/// every failure into a success.
fn retries(state_dir: &Path) -> Result<()> {
    let summary = http(state_dir, &format!("{FLAKY}/"), 20, &[])?;
    ensure!(summary.status("200") == 20, "{summary:?}");
    // The app failed every second request it saw, so it saw about twice as
    // many as the client sent: the waypoint retried them.
    match http_once(state_dir, &format!("{FLAKY}/"), &[])? {
        (200, Some(echo)) => ensure!(
            echo.request > 40,
            "the app saw only {} requests for 21 calls",
            echo.request
        ),
        other => bail!("{other:?}"),
    }
    Ok(())
}

fn timeout(state_dir: &Path) -> Result<()> {
    let start = Instant::now();
    let summary = http(state_dir, &format!("{SLOW}/"), 1, &["--timeout", "10s"])?;
    let took = start.elapsed();
    ensure!(summary.status("504") == 1, "{summary:?}");
    ensure!(
        summary.max_ms < 2000.0,
        "the 500 ms timeout took {} ms",
        summary.max_ms
    );
    eprintln!(
        "timeout: 504 after {} ms ({took:?} with the client's start)",
        summary.max_ms
    );
    Ok(())
}

fn direct_to_pod_refused(cluster: &Cluster, state_dir: &Path) -> Result<()> {
    let node = node_netns(cluster, SERVER_NODE)?;
    let refused = |metrics: &str| {
        sum_of(
            metrics,
            "ambit_waypoint_bypass_refused_total{",
            &["reason=\"not_waypoint_identity\""],
        )
    };
    let before = refused(&get(&node, ZTUNNEL_METRICS, "/metrics")?);
    let ip = pod_ip(cluster, "server/v1")?;
    let summary = http(
        state_dir,
        &format!("http://{ip}:8080/"),
        3,
        &["--timeout", "5s"],
    )?;
    ensure!(
        summary.status("200") == 0 && summary.errors == 3,
        "a direct call reached the pod: {summary:?}"
    );
    let after = refused(&get(&node, ZTUNNEL_METRICS, "/metrics")?);
    ensure!(
        after >= before + 3,
        "node-2's ztunnel counted {} refusals, expected 3",
        after - before
    );
    // The same pod through its service, so through the waypoint, answers.
    let summary = http(state_dir, &format!("{WEB}/"), 5, &[])?;
    ensure!(summary.status("200") == 5, "{summary:?}");
    Ok(())
}

/// A token from `examples/waypoint/jwt-tokens.txt`: `good` (valid until 2100),
/// `expired`, or `forged` (signed with a key the set does not hold).
fn token(name: &str) -> Result<String> {
    TOKENS
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::to_string)
        .with_context(|| format!("no token {name} in examples/waypoint/jwt-tokens.txt"))
}

/// `secure` admits only verified tokens: none is 403 (the ALLOW policy), a
/// bad one is 401 (RequestAuthentication), a good one reaches the app
/// without the token and with its subject in `x-jwt-sub`.
fn jwt_required(state_dir: &Path) -> Result<()> {
    let bearer =
        |name: &str| -> Result<String> { Ok(format!("authorization: Bearer {}", token(name)?)) };
    let (status, _) = http_once(state_dir, &format!("{SECURE}/"), &[])?;
    ensure!(status == 403, "no token: {status}");
    for bad in ["expired", "forged"] {
        let (status, echo) = http_once(
            state_dir,
            &format!("{SECURE}/"),
            &["--header", &bearer(bad)?],
        )?;
        ensure!(
            status == 401 && echo.is_none(),
            "{bad} token: {status} {echo:?}"
        );
    }
    let (status, echo) = http_once(
        state_dir,
        &format!("{SECURE}/"),
        &["--header", &bearer("good")?],
    )?;
    let echo = echo.with_context(|| format!("good token: {status}, no echo"))?;
    ensure!(status == 200, "good token: {status} {echo:?}");
    ensure!(
        echo.headers.get("x-jwt-sub").map(String::as_str) == Some("alice"),
        "the subject header: {:?}",
        echo.headers
    );
    ensure!(
        !echo.headers.contains_key("authorization"),
        "the token went upstream: {:?}",
        echo.headers
    );
    // A forged subject header is replaced, not passed on.
    let (status, echo) = http_once(
        state_dir,
        &format!("{SECURE}/"),
        &[
            "--header",
            &bearer("good")?,
            "--header",
            "x-jwt-sub: mallory",
        ],
    )?;
    let sub = echo
        .as_ref()
        .and_then(|e| e.headers.get("x-jwt-sub").cloned());
    ensure!(
        status == 200 && sub.as_deref() == Some("alice"),
        "forged x-jwt-sub: {status} {sub:?}"
    );
    let refused = sum_of(
        &waypoint_metrics(state_dir)?,
        "istio_requests_total{",
        &["response_code=\"401\""],
    );
    ensure!(refused >= 2, "the waypoint counted {refused} 401s");
    Ok(())
}

fn principal_in_metrics(state_dir: &Path) -> Result<()> {
    let metrics = waypoint_metrics(state_dir)?;
    let from_client = sum_of(
        &metrics,
        "istio_requests_total{",
        &[
            "reporter=\"waypoint\"",
            &format!("source_principal=\"{CLIENT_PRINCIPAL}\""),
        ],
    );
    ensure!(
        from_client >= SPLIT_REQUESTS,
        "istio_requests_total from {CLIENT_PRINCIPAL}: {from_client}\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// Removing the namespace's `istio.io/use-waypoint` sends traffic straight
/// to the pods again: it still succeeds, the waypoint stops counting, and the
/// server node's ztunnel sees the client's identity directly.
async fn unbinding_returns_to_l4(setup: &Setup, cluster: &Cluster) -> Result<()> {
    let state_dir = setup.options.state_dir();
    let state_dir = state_dir.as_path();
    label::label(
        &setup.dir,
        &Target::Namespace("server".into()),
        &[LabelChange::Remove {
            key: "istio.io/use-waypoint".into(),
        }],
    )?;
    let node = node_netns(cluster, SERVER_NODE)?;
    let direct = |metrics: &str| {
        sum_of(
            metrics,
            "istio_tcp_connections_opened_total{",
            &[
                "reporter=\"destination\"",
                &format!("source_principal=\"{CLIENT_PRINCIPAL}\""),
            ],
        )
    };
    eventually("traffic to web skips the waypoint", PATIENCE, || async {
        let waypoint_before = waypoint_requests(state_dir)?;
        let direct_before = direct(&get(&node, ZTUNNEL_METRICS, "/metrics")?);
        let (status, echo) = http_once(state_dir, &format!("{WEB}/"), &[])?;
        ensure!(status == 200, "status {status}");
        let echo = echo.context("no echo")?;
        ensure!(echo.xfcc.is_none(), "still an xfcc: {echo:?}");
        let summary = http(state_dir, &format!("{WEB}/"), 20, &[])?;
        ensure!(summary.status("200") == 20, "{summary:?}");
        let waypoint_after = waypoint_requests(state_dir)?;
        ensure!(
            waypoint_after == waypoint_before,
            "the waypoint counted {} more requests",
            waypoint_after - waypoint_before
        );
        let direct_after = direct(&get(&node, ZTUNNEL_METRICS, "/metrics")?);
        ensure!(
            direct_after > direct_before,
            "node-2's ztunnel saw no direct connection from the client"
        );
        Ok(())
    })
    .await?;
    // The policy on /admin was the waypoint's: at L4 it no longer applies.
    let summary = http(state_dir, &format!("{WEB}/admin"), 3, &[])?;
    ensure!(summary.status("200") == 3, "{summary:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_behind_a_waypoint_gets_l7_routing_policy_and_telemetry() -> Result<()> {
    let files = fixture_files()?;
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let setup = mesh_setup(&files)?;
    // The Gateway and the namespace's binding, as a user would make them.
    let apply = Command::new(bin_dir().join("ambit"))
        .args([
            "waypoint",
            "apply",
            "-n",
            "server",
            "--enroll-namespace",
            "--dir",
        ])
        .arg(&setup.dir)
        .output()?;
    ensure!(
        apply.status.success(),
        "ambit waypoint apply: {}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let state_dir = setup.options.state_dir();
    let state = state_dir.as_path();
    let start = Instant::now();
    if let Err(e) = wait_for_waypoint(state).await {
        eprintln!("{}", log_tails(state));
        down_and_check(&setup)?;
        return Err(e);
    }
    eprintln!("waypoint serving after {:?}", start.elapsed());

    type Case<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>);
    let cases: Vec<Case> = vec![
        (
            "90/10 weighted split over 1,000 requests",
            Box::new(|| weighted_split(state)),
        ),
        (
            "path DENY gives 403, other paths pass",
            Box::new(|| path_deny(state)),
        ),
        (
            "HTTP/2 (h2c) through the waypoint",
            Box::new(|| http2(state)),
        ),
        (
            "gRPC unary and server-streaming",
            Box::new(|| grpc_unary_and_streaming(state)),
        ),
        (
            "retries turn injected 503s into 200s",
            Box::new(|| retries(state)),
        ),
        ("a request timeout gives 504", Box::new(|| timeout(state))),
        (
            "a direct connection to a waypoint-bound pod is refused",
            Box::new(|| direct_to_pod_refused(&cluster, state)),
        ),
        (
            "a JWT is required, verified and passed on as a claim header",
            Box::new(|| jwt_required(state)),
        ),
        (
            "the waypoint's metrics carry the client principal",
            Box::new(|| principal_in_metrics(state)),
        ),
    ];
    let mut failed = Vec::new();
    for (name, case) in &cases {
        let started = Instant::now();
        let result = case();
        eprintln!(
            "{} {name} ({:?})",
            if result.is_ok() { "ok    " } else { "FAILED" },
            started.elapsed()
        );
        if let Err(e) = result {
            eprintln!("  {e:#}");
            failed.push(*name);
        }
    }
    let started = Instant::now();
    let result = unbinding_returns_to_l4(&setup, &cluster).await;
    let name = "removing use-waypoint returns traffic to L4";
    eprintln!(
        "{} {name} ({:?})",
        if result.is_ok() { "ok    " } else { "FAILED" },
        started.elapsed()
    );
    if let Err(e) = result {
        eprintln!("  {e:#}");
        failed.push(name);
    }

    if !failed.is_empty() {
        eprintln!("{}", log_tails(state));
    }
    down_and_check(&setup)?;
    ensure!(failed.is_empty(), "failed: {failed:#?}");
    Ok(())
}
