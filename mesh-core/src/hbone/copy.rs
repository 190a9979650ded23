//! Moves bytes between a TCP connection and an HBONE stream. Half-close is
//! END_STREAM in both directions; a TCP reset becomes a stream reset and a
//! stream reset becomes a TCP reset (SO_LINGER 0), so neither side mistakes an
//! abort for a clean end.

use std::future::poll_fn;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::drain::DrainWatcher;

/// Large reads mean few wake-ups and large HTTP/2 frames per byte moved.
const READ_CHUNK: usize = 256 * 1024;

/// One HTTP/2 CONNECT stream: the tunnel of one proxied TCP connection.
#[derive(Debug)]
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    /// Released when the tunnel is dropped: frees the stream's slot in the pool.
    pub(crate) _slot: Option<super::client::StreamSlot>,
}

/// How a spliced connection ended, with the bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes read from the TCP side and sent into the tunnel.
    pub tcp_to_tunnel: u64,
    /// Bytes received from the tunnel and written to the TCP side.
    pub tunnel_to_tcp: u64,
    pub end: End,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with a half-close.
    #[default]
    Clean,
    /// The TCP side reset; the stream was reset too.
    TcpReset,
    /// The tunnel was reset; the TCP side was reset too.
    TunnelReset,
    /// Shutdown's deadline passed while the connection was still open.
    Forced,
    /// Another I/O error; the stream was reset.
    Error,
}

/// Copies until both directions are done (or one side aborts). Never panics;
/// errors become resets on the other side.
pub async fn splice(tcp: &mut TcpStream, tunnel: Tunnel, drain: Option<&DrainWatcher>) -> Transfer {
    let Tunnel {
        mut send,
        mut recv,
        _slot,
    } = tunnel;
    let mut t = Transfer::default();
    let end = {
        let (mut rd, mut wr) = tcp.split();
        let up = tcp_to_tunnel(&mut rd, &mut send, &mut t.tcp_to_tunnel);
        let down = tunnel_to_tcp(&mut recv, &mut wr, &mut t.tunnel_to_tcp);
        let forced = async {
            match drain {
                Some(d) => d.forced().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(up, down, forced);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    match r {
                        Ok(()) => {}
                        Err(e) if is_reset(&e) => break End::TcpReset,
                        Err(_) => break End::Error,
                    }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    match r {
                        Ok(()) => {}
                        Err(DownError::Tunnel(error)) => {
                            tracing::debug!(%error, "tunnel ended abruptly");
                            break End::TunnelReset;
                        }
                        Err(DownError::Tcp(e)) => break if is_reset(&e) { End::TcpReset } else { End::Error },
                    }
                }
                _ = &mut forced => break End::Forced,
            }
            if up_done && down_done {
                break End::Clean;
            }
        }
    };
    match end {
        End::Clean => {}
        End::TcpReset | End::Error => send.send_reset(Reason::CONNECT_ERROR),
        End::TunnelReset => reset_tcp(tcp),
        End::Forced => {
            send.send_reset(Reason::CANCEL);
            reset_tcp(tcp);
        }
    }
    t.end = end;
    t
}

/// Makes the next close of `tcp` send a RST instead of a FIN.
pub fn reset_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

async fn tcp_to_tunnel(
    rd: &mut ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    count: &mut u64,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Reuses the allocation once the previous chunk has been written out.
        buf.reserve(READ_CHUNK);
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(());
        }
        *count += n as u64;
        send_within_window(send, buf.split().freeze(), false).await?;
    }
}

/// Sends `data` on `send` as the peer's flow-control window allows: waits
/// for capacity and sends what is granted until all of it went out, so a
/// slow peer bounds what is buffered. `end_of_stream` goes with the last part
/// (alone, when `data` is empty).
pub async fn send_within_window(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end_of_stream: bool,
) -> io::Result<()> {
    if data.is_empty() {
        if end_of_stream {
            send.send_data(data, true).map_err(h2_io)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(h2_io(e)),
            None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed")),
        };
        if granted == 0 {
            continue;
        }
        let part = data.split_to(granted.min(data.len()));
        send.send_data(part, end_of_stream && data.is_empty())
            .map_err(h2_io)?;
    }
    Ok(())
}

enum DownError {
    Tunnel(h2::Error),
    Tcp(io::Error),
}

async fn tunnel_to_tcp(
    recv: &mut RecvStream,
    wr: &mut WriteHalf<'_>,
    count: &mut u64,
) -> Result<(), DownError> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(DownError::Tunnel)?;
        let n = chunk.len();
        wr.write_all(&chunk).await.map_err(DownError::Tcp)?;
        *count += n as u64;
        let _ = recv.flow_control().release_capacity(n);
    }
    // END_STREAM: half-close the TCP side.
    wr.shutdown().await.map_err(DownError::Tcp)
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 i/o"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}
