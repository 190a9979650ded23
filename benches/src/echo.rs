//! The echo server and the two latency clients that `ambit-echo` runs.
//!
//! - Server: a single-threaded tokio runtime (the process is pinned to one CPU anyway);
//!   every accepted connection gets `TCP_NODELAY` and a task that reads into a 64 KiB
//!   buffer and writes back what it read (`read`/`write` syscalls, epoll between
//!   them), until EOF.
//! - Request/response client: blocking std sockets, one connection, `TCP_NODELAY`;
//!   each round trip is one 1 KiB `write` and `read`s until 1 KiB came back (usually
//!   one). The echo is checked byte for byte.
//! - Connection-rate client: blocking, one connection at a time: `connect`, `write` 1
//!   byte, `read` 1 byte, `close` (the client closes first, so the client side holds
//!   TIME_WAIT; `tcp_tw_reuse=1` lets ports be reused).
//!
//! Latencies are measured with the monotonic clock around each round trip (request
//! /response) or around connect-to-echo (connection rate), in nanoseconds.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::{ns_to_us, percentile};

/// Socket timeouts of the clients: a stalled path fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's per-connection buffer.
const SERVER_BUF: usize = 64 * 1024;
/// The connection-rate client gives up after this many failed connections in a row.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;

/// Serves echo on `listener` until the process is killed.
pub async fn serve(listener: tokio::net::TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("ambit-echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = echo(stream).await
                && e.kind() != io::ErrorKind::ConnectionReset
            {
                eprintln!("ambit-echo: connection: {e}");
            }
        });
    }
}

async fn echo(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; SERVER_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Result of the request/response test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrResult {
    pub size: usize,
    pub warmup: u32,
    pub iterations: u32,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// One warm connection: `warmup` untimed then `iterations` timed round trips of `size`
/// bytes.
pub fn request_response(
    addr: SocketAddr,
    size: usize,
    warmup: u32,
    iterations: u32,
) -> io::Result<RrResult> {
    let mut stream = connect(addr)?;
    let mut payload = vec![0u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(iterations as usize);
    for i in 0..warmup + iterations {
        // A different byte each round, so a stale echo cannot pass the check.
        payload.fill(i as u8);
        let start = Instant::now();
        stream.write_all(&payload)?;
        stream.read_exact(&mut back)?;
        let elapsed = start.elapsed();
        if back != payload {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("round trip {i}: the echo differs from what was sent"),
            ));
        }
        if i >= warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let total: u64 = samples.iter().sum();
    Ok(RrResult {
        size,
        warmup,
        iterations,
        p50_us: ns_to_us(percentile(&samples, 50).unwrap_or(0)),
        p99_us: ns_to_us(percentile(&samples, 99).unwrap_or(0)),
        mean_us: ns_to_us(total / samples.len().max(1) as u64),
        max_us: ns_to_us(samples.last().copied().unwrap_or(0)),
    })
}

/// Result of the connection-rate test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnResult {
    /// Connections that completed the 1-byte echo.
    pub connections: u64,
    /// Connections that failed (refused, reset, timed out, wrong echo).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Seconds the test ran.
    pub seconds: f64,
    /// Completed connections per second.
    pub rate_per_s: f64,
    /// Latency from the start of `connect` to the echoed byte.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Opens, uses and closes connections one after another for `duration`.
pub fn connection_rate(addr: SocketAddr, duration: Duration) -> ConnResult {
    let mut samples = Vec::new();
    let mut errors = 0u64;
    let mut consecutive = 0u32;
    let mut first_error = None;
    let start = Instant::now();
    while start.elapsed() < duration && consecutive < MAX_CONSECUTIVE_ERRORS {
        let t = Instant::now();
        match one_connection(addr) {
            Ok(()) => {
                samples.push(t.elapsed().as_nanos() as u64);
                consecutive = 0;
            }
            Err(e) => {
                errors += 1;
                consecutive += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    samples.sort_unstable();
    ConnResult {
        connections: samples.len() as u64,
        errors,
        first_error,
        seconds,
        rate_per_s: samples.len() as f64 / seconds,
        p50_us: ns_to_us(percentile(&samples, 50).unwrap_or(0)),
        p99_us: ns_to_us(percentile(&samples, 99).unwrap_or(0)),
    }
}

fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(&[0xa5])?;
    let mut back = [0u8; 1];
    stream.read_exact(&mut back)?;
    if back[0] != 0xa5 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echoed byte differs",
        ));
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts the echo server on 127.0.0.1 on a thread of its own.
    fn start_server() -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let _ = serve(listener).await;
            });
        });
        addr
    }

    #[test]
    fn clients_against_the_server() {
        let addr = start_server();
        let rr = request_response(addr, 1024, 10, 200).unwrap();
        assert_eq!((rr.size, rr.iterations), (1024, 200));
        assert!(rr.p50_us > 0.0 && rr.p50_us <= rr.p99_us && rr.p99_us <= rr.max_us);

        let conn = connection_rate(addr, Duration::from_millis(200));
        assert_eq!(conn.errors, 0, "{:?}", conn.first_error);
        assert!(conn.connections > 0);
        assert!(conn.p50_us > 0.0 && conn.p50_us <= conn.p99_us);
    }

    #[test]
    fn large_payloads_round_trip() {
        let addr = start_server();
        // Several segments, so the echo may come back in pieces; well within the socket
        // buffers (the client writes everything before it reads).
        let rr = request_response(addr, 16 * 1024, 1, 3).unwrap();
        assert_eq!(rr.iterations, 3);
    }

    #[test]
    fn refused_connections_are_counted_not_fatal() {
        // A port nobody listens on: bind, note the port, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let conn = connection_rate(addr, Duration::from_secs(5));
        assert_eq!(conn.connections, 0);
        assert_eq!(conn.errors, u64::from(MAX_CONSECUTIVE_ERRORS));
        assert!(conn.first_error.is_some());
    }
}
