//! Fuzzes the HBONE server's HTTP/2 CONNECT handling (`mesh_core::hbone::serve_h2`).
//!
//! The input is a raw sequence of HTTP/2 frames sent after the client preface
//! over an in-memory duplex stream. The handler refuses CONNECTs to odd ports
//! with 401 and accepts the others, echoing back a bounded number of bytes.
//! After the input is written the connection is left to settle, then drained
//! (GOAWAY), then closed by the client. Time is paused: each wait ends as soon
//! as every task is blocked, so nothing sleeps for real and nothing can hang.
//!
//! Invariants: no panic (in any task: libfuzzer-sys aborts on panic), no hang
//! (libFuzzer's -timeout), bounded memory (-rss_limit_mb).
#![no_main]

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use mesh_core::Identity;
use mesh_core::drain;
use mesh_core::hbone::{self, Handler, InboundRequest, Peer, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes each accepted tunnel echoes back at most.
const ECHO_LIMIT: usize = 16 << 10;
/// Server output read at most (then the reader stops and the server blocks).
const OUTPUT_LIMIT: usize = 8 << 20;
/// How long (paused time) each phase may last; reached only once all tasks block.
const SETTLE: Duration = Duration::from_secs(5);

/// `HBONE_FUZZ_DEBUG=1` prints what happens to each input (for replaying one).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("HBONE_FUZZ_DEBUG").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if debug() {
            eprintln!($($arg)*);
        }
    };
}

struct Echo;

impl Handler for Echo {
    async fn handle(&self, request: InboundRequest) {
        // The authority was already checked: an ip:port with a non-zero port.
        assert_ne!(request.authority.port(), 0);
        assert!(!request.authority.ip().is_unspecified());
        trace!("handler: CONNECT {}", request.authority);
        if request.authority.port() % 2 == 1 {
            request.refuse(StatusCode::UNAUTHORIZED);
            return;
        }
        let drop_at_once = request.authority.port() % 4 == 2;
        let Ok(tunnel) = request.accept(HeaderMap::new()) else {
            return;
        };
        if drop_at_once {
            return;
        }
        let mut send = tunnel.send;
        let mut recv = tunnel.recv;
        let mut budget = ECHO_LIMIT;
        while let Some(chunk) = recv.data().await {
            let Ok(mut chunk) = chunk else {
                return;
            };
            let _ = recv.flow_control().release_capacity(chunk.len());
            chunk.truncate(budget);
            budget -= chunk.len();
            while !chunk.is_empty() {
                send.reserve_capacity(chunk.len());
                let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    _ => return,
                };
                if granted == 0 {
                    continue;
                }
                let part = chunk.split_to(granted.min(chunk.len()));
                trace!("handler: echo {} bytes", part.len());
                if send.send_data(part, false).is_err() {
                    return;
                }
            }
        }
        trace!("handler: END_STREAM");
        let _ = send.send_data(Bytes::new(), true);
    }

    fn malformed(&self, _peer: &Peer, error: &hbone::HboneError) {
        trace!("malformed: {error}");
        assert!(!error.to_string().is_empty());
    }
}

async fn run(input: &[u8]) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let (trigger, watcher) = drain::channel();
    let peer = Peer {
        addr: SocketAddr::from(([10, 0, 0, 9], 43210)),
        local: SocketAddr::from(([10, 0, 0, 1], hbone::PORT)),
        identity: Some(Identity::new("cluster.local", "default", "client").unwrap()),
    };
    let serve = tokio::spawn(async move {
        let settings = ServerSettings::default();
        hbone::serve_h2(server, peer, &settings, Arc::new(Echo), watcher).await
    });

    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0usize;
        while total < OUTPUT_LIMIT {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });

    // 1. The preface and the frames; then let the server work through them.
    let mut bytes = Vec::with_capacity(PREFACE.len() + input.len());
    bytes.extend_from_slice(PREFACE);
    bytes.extend_from_slice(input);
    let _ = tokio::time::timeout(SETTLE, wr.write_all(&bytes)).await;
    tokio::time::sleep(SETTLE).await;

    // 2. Graceful shutdown: GOAWAY, then forced after the deadline.
    let drain = tokio::spawn(trigger.drain(Duration::from_secs(1)));
    tokio::time::sleep(SETTLE).await;

    // 3. The client closes its side; the server must end.
    let _ = tokio::time::timeout(SETTLE, wr.shutdown()).await;
    if let Ok(joined) = tokio::time::timeout(SETTLE, serve).await {
        let result = joined.expect("serve_h2 task");
        trace!("serve_h2: {result:?}");
    } else {
        trace!("serve_h2: still running");
    }
    let _ = tokio::time::timeout(SETTLE, drain).await;
    drop(wr);
    let read = tokio::time::timeout(SETTLE, reader).await;
    trace!("server output: {read:?} bytes");
}

fuzz_target!(|input: &[u8]| {
    // A fresh runtime per input: dropping it cancels every task left behind,
    // so nothing leaks from one input to the next.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run(input));
});
