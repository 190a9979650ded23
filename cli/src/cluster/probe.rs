//! Plain HTTP/1.1 GETs to admin endpoints inside a cluster namespace (the
//! node agent's and ztunnel's admin ports listen on the node's loopback):
//! the socket is created in the namespace, the request made from here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mesh_core::netns::Netns;

use super::network::netns_path;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path} in {netns}: {source}")]
    Io {
        netns: String,
        addr: SocketAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path} in {netns}: not an HTTP response")]
    BadResponse {
        netns: String,
        addr: SocketAddr,
        path: String,
    },
}

/// The status code and body of `GET path` on `addr` inside `netns`.
pub fn get(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ProbeError> {
    let enter = |source| ProbeError::Netns {
        netns: netns.into(),
        source,
    };
    let io = |source| ProbeError::Io {
        netns: netns.into(),
        addr,
        path: path.into(),
        source,
    };
    let home = Netns::current().map_err(enter)?;
    let target = Netns::open(&netns_path(netns)).map_err(enter)?;
    let mut stream = target
        .run(&home, || TcpStream::connect_timeout(&addr, timeout))
        .map_err(enter)?
        .map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    parse_response(&response).ok_or_else(|| ProbeError::BadResponse {
        netns: netns.into(),
        addr,
        path: path.into(),
    })
}

/// Status code and body; a chunked body is decoded.
fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Some((200, "ok".into()))
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n"
            ),
            Some((503, "not ready".into()))
        );
        assert_eq!(parse_response(b"garbage"), None);
    }
}
