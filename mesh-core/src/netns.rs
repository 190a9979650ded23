//! Network namespace handles: a pod's netns as an open descriptor, compared by
//! the kernel's identity of the namespace (device and inode), and entered for
//! the short time it takes to create a socket there.
//!
//! A socket belongs to the namespace it was created in for the rest of its
//! life, whatever thread later uses it; so ztunnel creates its in-pod listeners
//! and upstream sockets inside the pod's netns and drives them from the normal
//! runtime afterwards.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The identity of a network namespace: two handles name the same namespace
/// exactly when these are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace.
pub struct Netns {
    fd: OwnedFd,
    id: NetnsId,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns").field("id", &self.id).finish()
    }
}

impl Netns {
    /// Opens a namespace by path: `/proc/<pid>/ns/net`, `/var/run/netns/<name>`.
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening network namespace {}: {e}", path.display()),
            )
        })?;
        Netns::from_fd(file.into())
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Takes a descriptor received from elsewhere (ZDS passes one per pod);
    /// refuses a descriptor that is not a network namespace.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Netns> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        let id = NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // The kernel answers NS_GET_NSTYPE only for namespace descriptors.
        // SAFETY: ioctl with NS_GET_NSTYPE takes no argument and reads no memory of ours.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        if kind < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "descriptor is not a namespace: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor is a namespace, but not a network namespace",
            ));
        }
        Ok(Netns { fd, id })
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    pub fn try_clone(&self) -> io::Result<Netns> {
        Ok(Netns {
            fd: self.fd.try_clone()?,
            id: self.id,
        })
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the
    /// thread back to `home`. Keep `f` short and non-blocking: it runs on the
    /// caller's thread (an async runtime's worker, typically), and only the
    /// sockets it creates are meant to stay in this namespace.
    pub fn run<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(self.fd.as_fd())?;
        let back = Restore { home };
        let out = f();
        drop(back);
        Ok(out)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Moves the thread home when dropped, so a panic inside `Netns::run` cannot
/// leave a runtime worker in a pod's namespace.
struct Restore<'a> {
    home: &'a Netns,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.fd.as_fd()) {
            // A worker stuck in a pod's namespace would create later sockets
            // there: far worse than stopping.
            eprintln!("fatal: cannot return to the home network namespace: {e}");
            std::process::abort();
        }
    }
}

// From linux/nsfs.h: _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is open for the whole call; setns reads no memory of ours and
    // changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_namespace_twice_has_one_identity() {
        let a = Netns::current().unwrap();
        let b = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.try_clone().unwrap().id(), a.id());
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let err = Netns::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = Netns::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[test]
    fn run_creates_sockets_in_the_namespace_and_comes_home() {
        let pod = mesh_testkit::Netns::new("run").unwrap();
        let target = Netns::open(&pod.path()).unwrap();
        let home = Netns::current().unwrap();
        assert_ne!(target.id(), home.id());
        let (inside, listener) = target
            .run(&home, || {
                let id = Netns::current().unwrap().id();
                (id, std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            })
            .unwrap();
        assert_eq!(inside, target.id());
        assert_eq!(Netns::current().unwrap().id(), home.id());
        // The listener stayed in the pod's namespace: home's loopback cannot reach it.
        let port = listener.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        let reached = target
            .run(&home, || std::net::TcpStream::connect(("127.0.0.1", port)))
            .unwrap();
        assert!(reached.is_ok());
    }

    #[test]
    fn a_missing_path_names_itself() {
        let err = Netns::open(Path::new("/nonexistent/ns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }
}
