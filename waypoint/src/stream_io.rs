//! An HBONE CONNECT stream as a byte stream, so that hyper can serve (or
//! speak) HTTP inside it. Reads release flow-control credit as the bytes are
//! consumed; writes wait for send capacity instead of queueing without bound.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use mesh_core::hbone::Tunnel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One CONNECT stream's two halves, readable and writable.
#[derive(Debug)]
pub struct StreamIo {
    /// Kept whole: on the client side it also holds the stream's pool slot.
    tunnel: Tunnel,
    /// Bytes received but not yet read (also: what protocol detection peeked).
    pending: Bytes,
    read_done: bool,
}

impl StreamIo {
    pub fn from_tunnel(tunnel: Tunnel) -> Self {
        StreamIo {
            tunnel,
            pending: Bytes::new(),
            read_done: false,
        }
    }

    /// Reads at least `want` bytes (or what arrives before the stream ends)
    /// into the buffer without consuming them: the start of the stream, for
    /// protocol detection. Returns what is buffered.
    pub async fn peek(&mut self, want: usize) -> io::Result<&[u8]> {
        while self.pending.len() < want && !self.read_done {
            match self.tunnel.recv.data().await {
                Some(Ok(chunk)) => {
                    let _ = self
                        .tunnel
                        .recv
                        .flow_control()
                        .release_capacity(chunk.len());
                    if self.pending.is_empty() {
                        self.pending = chunk;
                    } else {
                        let mut joined = Vec::with_capacity(self.pending.len() + chunk.len());
                        joined.extend_from_slice(&self.pending);
                        joined.extend_from_slice(&chunk);
                        self.pending = joined.into();
                    }
                }
                Some(Err(e)) => return Err(h2_to_io(e)),
                None => self.read_done = true,
            }
        }
        Ok(&self.pending)
    }

    /// Whether the peer has sent END_STREAM (and everything was read).
    pub fn is_read_closed(&self) -> bool {
        self.read_done && self.pending.is_empty()
    }

    /// Aborts the stream (RST_STREAM): the peer sees a reset, not a clean end.
    pub fn reset(&mut self, reason: h2::Reason) {
        self.tunnel.send.send_reset(reason);
    }
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 i/o"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.tunnel.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this
                        .tunnel
                        .recv
                        .flow_control()
                        .release_capacity(chunk.len());
                    this.pending = chunk;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.tunnel.send;
        send.reserve_capacity(buf.len());
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the HBONE stream is closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues frames on the connection; there is nothing to flush per stream.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM is the half-close; a second one is an error h2 reports
        // and we ignore, since the stream is already closed for sending.
        let _ = self.tunnel.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}
