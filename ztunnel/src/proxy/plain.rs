//! Splicing two plain TCP connections, carrying half-close as FIN and a reset
//! on either side as a reset on the other.

use std::io;

use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::End;
use mesh_core::hbone::copy::reset_tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHUNK: usize = 256 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct PlainTransfer {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: End,
}

pub async fn splice(a: &mut TcpStream, b: &mut TcpStream, drain: &DrainWatcher) -> PlainTransfer {
    let mut t = PlainTransfer::default();
    let end = {
        let (mut ar, mut aw) = a.split();
        let (mut br, mut bw) = b.split();
        let up = copy(&mut ar, &mut bw, &mut t.a_to_b);
        let down = copy(&mut br, &mut aw, &mut t.b_to_a);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => { up_done = true; if let Err(e) = r { break e; } }
                r = &mut down, if !down_done => { down_done = true; if let Err(e) = r { break e; } }
                _ = drain.forced() => break End::Forced,
            }
            if up_done && down_done {
                break End::Clean;
            }
        }
    };
    if end != End::Clean {
        reset_tcp(a);
        reset_tcp(b);
    }
    t.end = end;
    t
}

async fn copy(
    r: &mut tokio::net::tcp::ReadHalf<'_>,
    w: &mut tokio::net::tcp::WriteHalf<'_>,
    count: &mut u64,
) -> Result<(), End> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await.map_err(classify)?;
        if n == 0 {
            return w.shutdown().await.map_err(classify);
        }
        w.write_all(&buf[..n]).await.map_err(classify)?;
        *count += n as u64;
    }
}

fn classify(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => End::TcpReset,
        _ => End::Error,
    }
}
