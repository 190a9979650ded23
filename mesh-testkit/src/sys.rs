//! The crate's only `unsafe` code: three libc calls std does not wrap.
//!
//! `unsafe_code` is denied workspace-wide; it is allowed in this one module because
//! entering a network namespace (`setns`), sending a signal other than SIGKILL (`kill`)
//! and reading the effective uid (`geteuid`) have no safe std equivalent. Each wrapper
//! only passes integers (and a borrowed, open fd) to the kernel and touches none of our
//! memory.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Moves the calling thread into the network namespace `ns` refers to.
pub(crate) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `ns` is an open descriptor for the whole call (it is borrowed); setns reads
    // no memory of ours and only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `kill(2)`: a negative `pid` signals that process group.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}
