//! A TCP echo server and a round-trip check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long [`echo_roundtrip`] may take.
const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP echo server on the current tokio runtime: each connection gets back what it
/// sends until it half-closes; the server then half-closes too (shutdown write) and
/// closes. Stops (its connections too) when dropped.
#[derive(Debug)]
pub struct EchoServer {
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts serving `listener`. Must be called within a tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if the listener has no local address.
    pub fn start(listener: TcpListener) -> EchoServer {
        let addr = listener
            .local_addr()
            .expect("the echo server's listener has a local address");
        let accepted = Arc::new(AtomicU64::new(0));
        let echoed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, accepted.clone(), echoed.clone()));
        EchoServer {
            addr,
            accepted,
            echoed,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Bytes echoed so far, over all connections.
    pub fn bytes_echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts the connections.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, accepted: Arc<AtomicU64>, echoed: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            result = listener.accept() => match result {
                Ok((stream, _peer)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(echo(stream, echoed.clone()));
                }
                Err(e) => {
                    eprintln!("mesh-testkit echo server on {:?}: accept: {e}", listener.local_addr());
                    tokio::task::yield_now().await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn echo(mut stream: TcpStream, echoed: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
        echoed.fetch_add(n as u64, Ordering::Relaxed);
    }
    // The peer half-closed: everything has been echoed, so half-close in turn.
    let _ = stream.shutdown().await;
}

/// Writes `payload` to `stream` and reads back exactly as many bytes, which must be the
/// same; at most 5 s. Writes and reads concurrently, so payloads larger than the socket
/// buffers do not deadlock. Leaves the stream open.
pub async fn echo_roundtrip<S>(stream: &mut S, payload: &[u8]) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async {
        wr.write_all(payload).await.context("writing the payload")?;
        wr.flush().await.context("flushing the payload")
    };
    let read = async {
        let mut back = vec![0u8; payload.len()];
        rd.read_exact(&mut back)
            .await
            .with_context(|| format!("reading back {} bytes", payload.len()))?;
        Ok::<_, anyhow::Error>(back)
    };
    let back = match tokio::time::timeout(ROUNDTRIP_TIMEOUT, async {
        tokio::try_join!(write, read)
    })
    .await
    {
        Ok(result) => result?.1,
        Err(_) => bail!(
            "echo round trip of {} bytes: not done after {ROUNDTRIP_TIMEOUT:?}",
            payload.len()
        ),
    };
    if let Some(i) = payload.iter().zip(&back).position(|(a, b)| a != b) {
        bail!(
            "echo round trip of {} bytes: byte {i} differs (sent {:#04x}, got {:#04x})",
            payload.len(),
            payload[i],
            back[i]
        );
    }
    Ok(())
}
