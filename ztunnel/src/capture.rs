//! Socket-level capture support: the original destination of a redirected
//! connection, and marked sockets so ztunnel's own traffic is not redirected
//! again. The one module of ztunnel with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::TcpStream;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination a connection had before nat REDIRECT sent it to us; falls
/// back to the socket's local address (TPROXY, or no redirection at all).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = canonical(stream.local_addr()?);
    let fd = stream.as_raw_fd();
    let got = if local.is_ipv4() {
        original_v4(fd)
    } else {
        original_v6(fd)
    };
    Ok(got.map(canonical).unwrap_or(local))
}

fn original_v4(fd: libc::c_int) -> io::Result<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a properly sized, writable sockaddr_in and `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(addr.sin_port),
    )))
}

fn original_v6(fd: libc::c_int) -> io::Result<SocketAddr> {
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `addr` is a properly sized, writable sockaddr_in6 and `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            IP6T_SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
    Ok(SocketAddr::V6(SocketAddrV6::new(
        ip,
        u16::from_be(addr.sin6_port),
        0,
        0,
    )))
}

/// IPv4-mapped IPv6 addresses (from dual-stack listeners) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Keepalive as spec section 1: 180 s idle, 180 s interval, 9 probes.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(180))
        .with_interval(Duration::from_secs(180))
        .with_retries(9);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}
