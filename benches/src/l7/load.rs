//! The L7 load client: HTTP/1.1 `GET`s or unary gRPC calls, either open loop at a fixed
//! rate or closed loop (saturation), with latency percentiles.
//!
//! **Fixed rate** (open loop, no coordinated omission): a pacer thread releases one
//! ticket per request on a fixed timeline (`start + i / rate`), sleeping with the
//! kernel's high-resolution timer, and stamps each ticket with the moment it released
//! it. Workers (one HTTP/1.1 connection each, or streams sharing one gRPC connection)
//! take tickets in order and measure from the stamp to the end of the response, so a
//! request that waited for a free worker because earlier ones were slow counts its wait.
//! The pacer never waits for responses. The stamp is the release time rather than the
//! ideal schedule point so the pacer's own wake-up slack (tens of microseconds) is not
//! counted as latency; how late the pacer ran is reported (`pacer_lag_p99_us`).
//!
//! **Saturation** (closed loop): N workers each send their next request as soon as the
//! previous answer arrived; latency is measured from sending.
//!
//! Warm-up requests (same mode) come first and are not recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use super::proto::EchoRequest;
use super::proto::echo_client::EchoClient;
use crate::stats;

/// The protocol the load client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 `GET /` with a `Host` header, one request at a time per connection.
    Http1,
    /// Unary gRPC `ambit.bench.v1.Echo/Unary` over one HTTP/2 connection.
    Grpc,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Grpc => "grpc",
        }
    }
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open loop at `rate` requests per second.
    Fixed { rate: u32 },
    /// Closed loop: every worker sends back to back.
    Saturate,
}

/// One load test.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub protocol: Protocol,
    pub mode: Mode,
    /// Where to connect.
    pub target: SocketAddr,
    /// `Host` (HTTP/1.1) or `:authority` (gRPC).
    pub authority: String,
    /// HTTP/1.1 connections, or concurrent gRPC streams on the one connection.
    pub workers: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// gRPC request payload size.
    pub payload: usize,
}

/// What one load test measured (printed as JSON by `ambit-l7-app load`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    pub protocol: Protocol,
    pub mode: Mode,
    pub workers: usize,
    /// Requests answered with success (HTTP 200, gRPC OK) in the timed part.
    pub requests: u64,
    /// Requests that failed in the timed part (any error or other status).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests the schedule asked for in the timed part (fixed rate only).
    pub scheduled: u64,
    pub elapsed_s: f64,
    /// Successful requests per second over the timed part.
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// p99 of how late the pacer released tickets (fixed rate only).
    pub pacer_lag_p99_us: Option<f64>,
}

/// Outcome of one request.
type Outcome = std::result::Result<(), String>;

/// Runs `spec` to completion.
pub async fn run(spec: &LoadSpec) -> Result<LoadResult> {
    if spec.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let clients = connect(spec).await?;
    if let Mode::Fixed { rate } = spec.mode {
        if rate == 0 {
            bail!("--rate must be at least 1");
        }
        // Warm-up at the same rate, then the timed part.
        let _ = fixed_rate(&clients, rate, spec.warmup).await;
        let timed = fixed_rate(&clients, rate, spec.duration).await;
        Ok(summarize(spec, timed))
    } else {
        let _ = saturate(&clients, spec.warmup).await;
        let timed = saturate(&clients, spec.duration).await;
        Ok(summarize(spec, timed))
    }
}

/// A request sender per worker.
enum Client {
    Http1 {
        sender: Mutex<SendRequest<Empty<Bytes>>>,
        authority: String,
    },
    Grpc {
        client: EchoClient<tonic::transport::Channel>,
        payload: Vec<u8>,
    },
}

async fn connect(spec: &LoadSpec) -> Result<Vec<Arc<Client>>> {
    let mut clients = Vec::with_capacity(spec.workers);
    match spec.protocol {
        Protocol::Http1 => {
            for _ in 0..spec.workers {
                let stream = tokio::net::TcpStream::connect(spec.target)
                    .await
                    .with_context(|| format!("connecting to {}", spec.target))?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP/1.1 handshake")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                clients.push(Arc::new(Client::Http1 {
                    sender: Mutex::new(sender),
                    authority: spec.authority.clone(),
                }));
            }
        }
        Protocol::Grpc => {
            let uri = format!("http://{}", spec.authority);
            let channel = tonic::transport::Endpoint::from_shared(uri.clone())
                .with_context(|| format!("{uri} as a gRPC endpoint"))?
                .tcp_nodelay(true)
                .connect_with_connector(FixedTarget(spec.target))
                .await
                .with_context(|| format!("connecting gRPC to {}", spec.target))?;
            let payload = vec![b'x'; spec.payload];
            for _ in 0..spec.workers {
                clients.push(Arc::new(Client::Grpc {
                    client: EchoClient::new(channel.clone()),
                    payload: payload.clone(),
                }));
            }
        }
    }
    Ok(clients)
}

/// Connects to one fixed address whatever the URI says, so `:authority` can name a
/// service while the socket goes to its address.
#[derive(Debug, Clone, Copy)]
struct FixedTarget(SocketAddr);

impl tower::Service<http::Uri> for FixedTarget {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

impl Client {
    async fn request(&self) -> Outcome {
        match self {
            Client::Http1 { sender, authority } => {
                let req = http::Request::get("/")
                    .header(http::header::HOST, authority.as_str())
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| format!("building the request: {e}"))?;
                let mut sender = sender.lock().await;
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection: {e}"))?;
                let response = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("response body: {e}"))?;
                if status != http::StatusCode::OK {
                    return Err(format!("HTTP status {status}"));
                }
                Ok(())
            }
            Client::Grpc { client, payload } => {
                let mut client = client.clone();
                let reply = client
                    .unary(EchoRequest {
                        payload: payload.clone(),
                    })
                    .await
                    .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message()))?;
                if reply.get_ref().payload != *payload {
                    return Err("gRPC reply payload differs from the request".into());
                }
                Ok(())
            }
        }
    }
}

/// Raw samples of one timed part.
#[derive(Debug, Default)]
struct Samples {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    scheduled: u64,
    pacer_lag_ns: Vec<u64>,
    elapsed: Duration,
}

impl Samples {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Ok(()) => self
                .latencies_ns
                .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX)),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Open loop for `duration`: see the module documentation.
async fn fixed_rate(clients: &[Arc<Client>], rate: u32, duration: Duration) -> Samples {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(5);
    // The pacer is a thread of its own: its timeline does not depend on the runtime
    // being free, and `thread::sleep` uses the high-resolution timer.
    let pacer = std::thread::spawn(move || {
        let mut lags = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let released = Instant::now();
            lags.push(
                u64::try_from(released.saturating_duration_since(due).as_nanos())
                    .unwrap_or(u64::MAX),
            );
            if tx.send(released).is_err() {
                break;
            }
        }
        lags
    });
    let mut tasks = Vec::new();
    for client in clients {
        let client = Arc::clone(client);
        let rx = Arc::clone(&rx);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let ticket = rx.lock().await.recv().await;
                let Some(released) = ticket else { break };
                let outcome = client.request().await;
                samples.record(outcome, released.elapsed());
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.merge(samples);
        }
    }
    all.elapsed = start.elapsed();
    all.scheduled = total;
    all.pacer_lag_ns = pacer.join().unwrap_or_default();
    all
}

/// Closed loop for `duration`.
async fn saturate(clients: &[Arc<Client>], duration: Duration) -> Samples {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let client = Arc::clone(client);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let outcome = client.request().await;
                samples.record(outcome, sent.elapsed());
            }
            samples
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Samples::default();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.merge(samples);
        }
    }
    all.elapsed = start.elapsed();
    all
}

fn summarize(spec: &LoadSpec, mut s: Samples) -> LoadResult {
    s.latencies_ns.sort_unstable();
    s.pacer_lag_ns.sort_unstable();
    let pct = |p| stats::percentile(&s.latencies_ns, p).map_or(f64::NAN, stats::ns_to_us);
    let requests = s.latencies_ns.len() as u64;
    let elapsed_s = s.elapsed.as_secs_f64();
    LoadResult {
        protocol: spec.protocol,
        mode: spec.mode,
        workers: spec.workers,
        requests,
        errors: s.errors,
        first_error: s.first_error,
        scheduled: s.scheduled,
        elapsed_s,
        achieved_rps: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        p50_us: pct(50),
        p90_us: pct(90),
        p99_us: pct(99),
        max_us: s
            .latencies_ns
            .last()
            .map_or(f64::NAN, |&n| stats::ns_to_us(n)),
        pacer_lag_p99_us: match spec.mode {
            Mode::Fixed { .. } => stats::percentile(&s.pacer_lag_ns, 99).map(stats::ns_to_us),
            Mode::Saturate => None,
        },
    }
}
