//! ZDS transport: the node agent <-> ztunnel socket. A unix `SOCK_SEQPACKET`
//! socket carrying one protobuf message per datagram, at most
//! [`MAX_MESSAGE`] bytes, with a pod's network namespace passed beside an
//! `AddWorkload` as one `SCM_RIGHTS` descriptor. The messages themselves are
//! `mesh_api::istio::workload::zds`; what they mean is each side's business.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Receivers read into a buffer this size; a longer datagram is an error.
pub const MAX_MESSAGE: usize = 1024;

/// Default socket path (`INPOD_UDS`).
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ZDS socket: {0}")]
    Io(#[from] io::Error),
    #[error("ZDS peer closed the connection")]
    Closed,
    #[error("ZDS message longer than {MAX_MESSAGE} bytes")]
    Truncated,
    #[error("ZDS message carried more than one descriptor")]
    TooManyFds,
    #[error("ZDS message is not a valid {kind}: {source}")]
    Decode {
        kind: &'static str,
        source: prost::DecodeError,
    },
    #[error("ZDS message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLong { len: usize },
}

/// One datagram as received: its bytes and the descriptor sent with it.
#[derive(Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

impl Datagram {
    pub fn decode<M: Message + Default>(&self, kind: &'static str) -> Result<M, ZdsError> {
        M::decode(self.bytes.as_slice()).map_err(|source| ZdsError::Decode { kind, source })
    }
}

/// A connected ZDS socket (either end).
#[derive(Debug)]
pub struct ZdsSocket {
    inner: AsyncFd<Socket>,
}

impl ZdsSocket {
    /// ztunnel's side: connects to the node agent's socket.
    pub async fn connect(path: &Path) -> Result<ZdsSocket, ZdsError> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        let addr = SockAddr::unix(path)?;
        // Connecting a local seqpacket socket either succeeds or fails at once.
        socket.connect(&addr).map_err(|e| {
            io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display()))
        })?;
        ZdsSocket::from_socket(socket)
    }

    fn from_socket(socket: Socket) -> Result<ZdsSocket, ZdsError> {
        socket.set_nonblocking(true)?;
        Ok(ZdsSocket {
            inner: register(socket)?,
        })
    }

    /// Sends one message, with `fd` attached when given.
    pub async fn send<M: Message>(&self, msg: &M, fd: Option<RawFd>) -> Result<(), ZdsError> {
        let bytes = msg.encode_to_vec();
        if bytes.len() > MAX_MESSAGE {
            return Err(ZdsError::TooLong { len: bytes.len() });
        }
        loop {
            let mut guard = self.inner.writable().await?;
            match guard.try_io(|s| send_with_fd(s.get_ref().as_raw_fd(), &bytes, fd)) {
                Ok(result) => return result.map_err(ZdsError::from),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram. A datagram that did not fit, or that carried
    /// more than one descriptor, is an error (its descriptors are closed).
    pub async fn recv(&self) -> Result<Datagram, ZdsError> {
        loop {
            let mut guard = self.inner.ready(Interest::READABLE).await?;
            match guard.try_io(|s| recv_with_fd(s.get_ref().as_raw_fd())) {
                Ok(result) => return result?,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the socket is readable or closed without consuming anything:
    /// the node agent's liveness check of a connected ztunnel.
    pub async fn readable(&self) -> Result<(), ZdsError> {
        let mut guard = self.inner.ready(Interest::READABLE).await?;
        guard.retain_ready();
        Ok(())
    }
}

/// The node agent's side: listens for ztunnels.
#[derive(Debug)]
pub struct ZdsListener {
    inner: AsyncFd<Socket>,
}

impl ZdsListener {
    /// Binds `path`, removing a stale socket file first (a previous node agent's).
    pub fn bind(path: &Path) -> Result<ZdsListener, ZdsError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        socket
            .bind(&SockAddr::unix(path)?)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
        socket.listen(16)?;
        socket.set_nonblocking(true)?;
        Ok(ZdsListener {
            inner: register(socket)?,
        })
    }

    pub async fn accept(&self) -> Result<ZdsSocket, ZdsError> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|s| s.get_ref().accept()) {
                Ok(Ok((socket, _))) => return ZdsSocket::from_socket(socket),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor and never changes it, and the
    // `AsyncFd` owns the `Socket` until both are dropped.
    Ok(unsafe { AsyncFd::register(socket) }?)
}

/// Room for one `SCM_RIGHTS` header carrying up to four descriptors, so a
/// peer that sends too many is detected rather than silently truncated.
const CONTROL_LEN: usize = 64;

fn send_with_fd(socket: RawFd, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives sendmsg.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as usize;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer is aligned (u64) and at least `space` bytes,
        // so CMSG_FIRSTHDR is non-null and the header and one fd fit in it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `hdr` points at live buffers; MSG_NOSIGNAL turns a closed peer into EPIPE.
    let n = unsafe { libc::sendmsg(socket, &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write on a seqpacket socket",
        ));
    }
    Ok(())
}

fn recv_with_fd(socket: RawFd) -> io::Result<Result<Datagram, ZdsError>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives recvmsg.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = CONTROL_LEN as _;
    // SAFETY: `hdr` points at live, writable buffers of the sizes it states;
    // MSG_CMSG_CLOEXEC keeps received descriptors out of spawned children.
    let n = unsafe { libc::recvmsg(socket, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Take ownership of every received descriptor first, so that each is
    // closed on every error path below.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` and set msg_controllen; the CMSG
    // macros walk only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    if hdr.msg_flags & libc::MSG_TRUNC != 0 {
        return Ok(Err(ZdsError::Truncated));
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
        return Ok(Err(ZdsError::TooManyFds));
    }
    if n == 0 && fds.is_empty() {
        return Ok(Err(ZdsError::Closed));
    }
    buf.truncate(n as usize);
    Ok(Ok(Datagram {
        bytes: buf,
        fd: fds.pop(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::istio::workload::zds::{
        Ack, AddWorkload, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
        workload_request, workload_response,
    };
    use std::os::fd::AsFd;

    async fn pair() -> (tempfile::TempDir, ZdsListener, ZdsSocket, ZdsSocket) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let listener = ZdsListener::bind(&path).unwrap();
        let client = ZdsSocket::connect(&path).await.unwrap();
        let server = listener.accept().await.unwrap();
        (dir, listener, client, server)
    }

    #[tokio::test]
    async fn a_message_and_its_descriptor_arrive_together() {
        let (_dir, _l, ztunnel, agent) = pair().await;
        ztunnel.send(&ZdsHello { version: 1 }, None).await.unwrap();
        let hello: ZdsHello = agent.recv().await.unwrap().decode("ZdsHello").unwrap();
        assert_eq!(hello.version, 1);

        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let add = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "uid-1".into(),
                workload_info: Some(WorkloadInfo {
                    name: "p".into(),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }),
            })),
        };
        agent
            .send(&add, Some(netns.as_fd().as_raw_fd()))
            .await
            .unwrap();
        let got = ztunnel.recv().await.unwrap();
        let req: WorkloadRequest = got.decode("WorkloadRequest").unwrap();
        assert_eq!(req, add);
        let fd = got.fd.expect("descriptor");
        let received = crate::netns::Netns::from_fd(fd).unwrap();
        assert_eq!(received.id(), crate::netns::Netns::current().unwrap().id());

        let ack = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack::default())),
        };
        ztunnel.send(&ack, None).await.unwrap();
        let got = agent.recv().await.unwrap();
        assert!(got.fd.is_none());
        assert_eq!(
            got.decode::<WorkloadResponse>("WorkloadResponse").unwrap(),
            ack
        );
    }

    #[tokio::test]
    async fn an_oversized_datagram_is_refused_not_cut() {
        let (_dir, _l, ztunnel, agent) = pair().await;
        let big = vec![7u8; MAX_MESSAGE + 1];
        // Bypass `send`'s own limit to act as a misbehaving peer.
        send_with_fd(agent.inner.get_ref().as_raw_fd(), &big, None).unwrap();
        assert!(matches!(ztunnel.recv().await, Err(ZdsError::Truncated)));

        let msg = mesh_api::istio::workload::zds::Ack {
            error: "x".repeat(MAX_MESSAGE),
        };
        assert!(matches!(
            agent.send(&msg, None).await,
            Err(ZdsError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn a_closed_peer_reads_as_closed() {
        let (_dir, _l, ztunnel, agent) = pair().await;
        drop(agent);
        assert!(matches!(ztunnel.recv().await, Err(ZdsError::Closed)));
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error_naming_the_message() {
        let (_dir, _l, ztunnel, agent) = pair().await;
        send_with_fd(agent.inner.get_ref().as_raw_fd(), &[0xff, 0xff, 0xff], None).unwrap();
        let err = ztunnel
            .recv()
            .await
            .unwrap()
            .decode::<WorkloadRequest>("WorkloadRequest")
            .unwrap_err();
        assert!(err.to_string().contains("WorkloadRequest"), "{err}");
    }
}
