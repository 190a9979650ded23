//! Where ztunnel creates the sockets of one served workload: in its own
//! network namespace (dedicated mode), or inside a pod's (in-pod mode), where
//! a socket must be created for it to carry the pod's address and to meet the
//! pod's redirection rules. Every socket gets the packet mark, so those rules
//! let ztunnel's own traffic through instead of capturing it again.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_core::netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog of in-pod listeners (spec 1).
const POD_BACKLOG: i32 = 128;

/// A pod's namespace and the way back to ztunnel's own.
#[derive(Debug)]
struct PodNetns {
    netns: Netns,
    home: Arc<Netns>,
}

#[derive(Debug, Clone)]
pub struct SocketFactory {
    pod: Option<Arc<PodNetns>>,
    mark: Option<u32>,
}

impl SocketFactory {
    /// Sockets in ztunnel's own namespace.
    pub fn here(mark: Option<u32>) -> Self {
        SocketFactory { pod: None, mark }
    }

    /// Sockets inside `netns`; `home` is ztunnel's own namespace, where the
    /// creating thread returns.
    pub fn in_pod(netns: Netns, home: Arc<Netns>, mark: u32) -> Self {
        SocketFactory {
            pod: Some(Arc::new(PodNetns { netns, home })),
            mark: Some(mark),
        }
    }

    /// Runs `f` where this factory's sockets live.
    fn inside<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match &self.pod {
            None => f(),
            Some(p) => p.netns.run(&p.home, f).and_then(|r| r),
        }
    }

    fn marked(&self, socket: &Socket) -> io::Result<()> {
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        Ok(())
    }

    /// Connects to `dst`, from `source` when given (the original client's
    /// address, which needs `IP_TRANSPARENT`). A source that cannot be bound
    /// falls back to the namespace's own address rather than failing the
    /// connection.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let source = source.filter(|s| s.is_ipv4() == dst.is_ipv4() && !s.is_unspecified());
        let socket = self.inside(|| {
            let domain = if dst.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
            self.marked(&s)?;
            if let Some(ip) = source
                && let Err(error) = bind_transparent(&s, ip)
            {
                tracing::debug!(%ip, %error, "cannot connect from the original source; using the pod's address");
                // A failed bind leaves the socket unbound; start over clean.
                let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
                self.marked(&s)?;
                return Ok(s);
            }
            Ok(s)
        })?;
        socket.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        let stream = tokio::time::timeout(timeout, socket.connect(dst))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {dst} timed out"),
                )
            })??;
        crate::capture::tune(&stream);
        Ok(stream)
    }

    /// An in-pod listener on `port`: the wildcard address (IPv6 dual-stack,
    /// or IPv4 where the pod has no IPv6), marked, `IP_TRANSPARENT` and
    /// `SO_REUSEPORT` so that a second ztunnel can bind the same port during an
    /// upgrade. Must be called within a tokio runtime.
    pub fn pod_listener(&self, port: u16) -> io::Result<TcpListener> {
        let std = self.inside(|| {
            match listener_socket(self, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
                Ok(s) => Ok(s),
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    listener_socket(self, SocketAddr::from(([0, 0, 0, 0], port)))
                }
                Err(e) => Err(e),
            }
        })?;
        TcpListener::from_std(std)
    }
}

impl SocketFactory {
    /// Lets the kernel hand connections queued on a closing listener to
    /// another listener of its `SO_REUSEPORT` group (`tcp_migrate_req`), so
    /// that when an old ztunnel closes its pod listeners during an upgrade,
    /// connections it had not accepted yet go to the new one instead of being
    /// reset. Per netns; only reuseport groups are affected.
    pub fn migrate_queued_connections(&self) -> io::Result<()> {
        // /proc/sys/net shows the netns of the thread that opens it.
        self.inside(|| std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1"))
    }
}

fn listener_socket(f: &SocketFactory, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
        s.set_ip_transparent_v6(true)?;
    }
    s.set_ip_transparent_v4(true).or_else(|e| {
        // An IPv6 socket may refuse the IPv4 option on older kernels; the
        // IPv6 one set above covers it.
        if addr.is_ipv6() { Ok(()) } else { Err(e) }
    })?;
    f.marked(&s)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(POD_BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn bind_transparent(s: &Socket, ip: IpAddr) -> io::Result<()> {
    if ip.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
        s.set_freebind_v4(true)?;
    } else {
        s.set_ip_transparent_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    s.bind(&SocketAddr::new(ip, 0).into())
}

/// Fails unless this process can enter a network namespace and mark sockets,
/// which in-pod mode needs for every pod (CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub fn check_inpod_capabilities(home: &Netns, mark: u32) -> io::Result<()> {
    let entered = home.run(home, || {
        let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        s.set_mark(mark)
    });
    match entered {
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot enter a network namespace (setns needs CAP_SYS_ADMIN): {e}"),
        )),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("cannot set SO_MARK {mark} on a socket (needs CAP_NET_ADMIN): {e}"),
        )),
        Ok(Ok(())) => Ok(()),
    }
}

/// The HBONE pool's dialer: sockets from the workload's factory, so that in
/// a pod the tunnel leaves with the pod's address.
#[derive(Debug, Clone)]
pub struct FactoryDialer {
    pub sockets: SocketFactory,
    pub timeout: Duration,
}

impl mesh_core::hbone::Dialer for FactoryDialer {
    fn dial(
        &self,
        destination: SocketAddr,
        _source_ip: Option<IpAddr>,
    ) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(self.sockets.connect(destination, None, self.timeout))
    }
}
