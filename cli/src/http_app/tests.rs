//! The HTTP apps against each other, in process, over real sockets.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;

use super::client::{self, ClientConfig, parse_header, parse_url};
use super::faults::Faults;
use super::server::{self, Echo, ServerConfig};
use super::tally::{Outcome, Summary};

async fn start(name: &str, h2c_only: bool, faults: Faults, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        name: name.into(),
        h2c_only,
        faults,
        delay,
    };
    tokio::spawn(server::serve(listener, config));
    format!("http://{addr}")
}

fn config(url: &str, count: u64, h2c: bool) -> ClientConfig {
    ClientConfig {
        url: parse_url(url).unwrap(),
        method: Method::GET,
        count,
        every: Duration::ZERO,
        h2c,
        headers: vec![],
        timeout: Duration::from_secs(5),
    }
}

async fn outcomes(config: &ClientConfig) -> (Vec<Outcome>, Summary) {
    let mut seen = Vec::new();
    let summary = client::run(config, |o| seen.push(o.clone())).await;
    (seen, summary)
}

fn echo(outcome: &Outcome) -> Echo {
    match outcome {
        Outcome::Response { body, .. } => serde_json::from_str(body).unwrap(),
        Outcome::Failed { why, .. } => panic!("request failed: {why}"),
    }
}

#[tokio::test]
async fn http1_responses_name_the_app_and_echo_the_request() {
    let base = start("v1", false, Faults::NONE, Duration::ZERO).await;
    let mut config = config(&format!("{base}/hello?x=1"), 3, false);
    config.headers = vec![
        parse_header("x-forwarded-client-cert: By=a;URI=spiffe://x").unwrap(),
        parse_header("x-test:42").unwrap(),
    ];
    let (seen, summary) = outcomes(&config).await;
    assert_eq!(summary.status("200"), 3, "{summary:?}");
    assert_eq!(summary.backend("v1"), 3);
    let first = echo(&seen[0]);
    assert_eq!(first.name, "v1");
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/hello?x=1");
    assert_eq!(first.version, "HTTP/1.1");
    assert_eq!(first.xfcc.as_deref(), Some("By=a;URI=spiffe://x"));
    assert_eq!(first.headers.get("x-test").map(String::as_str), Some("42"));
    assert_eq!(echo(&seen[2]).request, 3);
}

#[tokio::test]
async fn h2c_reaches_an_h2c_only_server_and_http1_does_not() {
    let base = start("h2", true, Faults::NONE, Duration::ZERO).await;
    let (seen, summary) = outcomes(&config(&format!("{base}/"), 2, true)).await;
    assert_eq!(summary.status("200"), 2, "{summary:?}");
    assert_eq!(echo(&seen[0]).version, "HTTP/2.0");

    let (_, summary) = outcomes(&config(&format!("{base}/"), 1, false)).await;
    assert_eq!(summary.errors, 1, "{summary:?}");
}

#[tokio::test]
async fn the_default_server_speaks_both_protocols() {
    let base = start("both", false, Faults::NONE, Duration::ZERO).await;
    let (seen, _) = outcomes(&config(&base, 1, true)).await;
    assert_eq!(echo(&seen[0]).version, "HTTP/2.0");
    let (seen, _) = outcomes(&config(&base, 1, false)).await;
    assert_eq!(echo(&seen[0]).version, "HTTP/1.1");
}

#[tokio::test]
async fn every_nth_request_gets_the_injected_status() {
    let faults = Faults::from_flags(Some(2), None, None, 503).unwrap();
    let base = start("flaky", false, faults, Duration::ZERO).await;
    let (seen, summary) = outcomes(&config(&base, 6, false)).await;
    assert_eq!(summary.status("200"), 3, "{summary:?}");
    assert_eq!(summary.status("503"), 3);
    let statuses: Vec<u16> = seen
        .iter()
        .map(|o| match o {
            Outcome::Response { status, .. } => *status,
            Outcome::Failed { .. } => 0,
        })
        .collect();
    assert_eq!(statuses, [200, 503, 200, 503, 200, 503]);
    assert!(echo(&seen[1]).injected_failure);
}

#[tokio::test]
async fn a_delay_past_the_client_timeout_is_a_timed_out_request() {
    let base = start("slow", false, Faults::NONE, Duration::from_millis(500)).await;
    let mut config = config(&base, 1, false);
    config.timeout = Duration::from_millis(100);
    let (seen, summary) = outcomes(&config).await;
    assert_eq!(summary.errors, 1);
    assert!(
        matches!(&seen[0], Outcome::Failed { why, .. } if why.contains("timed out")),
        "{seen:?}"
    );
    config.timeout = Duration::from_secs(5);
    let (seen, _) = outcomes(&config).await;
    match &seen[0] {
        Outcome::Response {
            status, latency, ..
        } => {
            assert_eq!(*status, 200);
            assert!(*latency >= Duration::from_millis(500), "{latency:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_is_an_error_line_and_the_client_goes_on() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (seen, summary) = outcomes(&config(&format!("http://{addr}/"), 2, false)).await;
    assert_eq!(summary.errors, 2);
    assert!(seen[0].line(false).starts_with("error connecting to"));
}

#[test]
fn bad_urls_and_headers_are_named() {
    assert!(parse_url("https://a/").is_err());
    assert!(parse_url("/path").is_err());
    assert!(parse_url("http://web.server:80/x").is_ok());
    assert!(parse_header("no-colon").is_err());
    assert!(parse_header("bad name:1").is_err());
    assert_eq!(
        parse_header("x-a: b").unwrap(),
        (
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("b")
        )
    );
}
