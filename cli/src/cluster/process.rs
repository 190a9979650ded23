//! Processes of the cluster: started inside a namespace (`ip netns exec`,
//! which also gives them the namespace's own /sys), detached in their own
//! process group with output to a log file; stopped by pid only when the
//! pid still names the process started (same start time), SIGTERM first and
//! SIGKILL after a deadline.
#![allow(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::journal::Role;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open the log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name} (pid {pid}) exited at once: {status}; see {}", log.display())]
    ExitedAtStart {
        name: String,
        pid: u32,
        status: String,
        log: PathBuf,
    },
}

/// What to start.
pub struct Launch<'a> {
    pub role: Role,
    pub name: String,
    /// `None`: the host's namespace.
    pub netns: Option<&'a str>,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A started process, as the journal records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    pub start_time: u64,
}

/// Starts `launch` and returns its pid and start time. The child is not
/// waited for here; `reap` collects it if this process is still its parent.
pub fn start(launch: &Launch<'_>) -> Result<Started, ProcessError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|source| ProcessError::Log {
            path: launch.log.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| ProcessError::Log {
        path: launch.log.clone(),
        source,
    })?;
    let mut command = match launch.netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(launch.program);
            command
        }
        None => Command::new(launch.program),
    };
    let child = command
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own group: signals to the terminal running `ambit up` do not
        // reach the cluster, and `down` signals the whole group.
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            name: launch.name.clone(),
            program: launch.program.display().to_string(),
            source,
        })?;
    let pid = child.id();
    // The std handle is dropped without waiting; `reap` or init collects it.
    drop(child);
    let start_time = start_time(pid).unwrap_or_default();
    Ok(Started { pid, start_time })
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`), if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume
    // after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is index 19.
    fields.get(19)?.parse().ok()
}

/// Whether the process started as (`pid`, `start`) is still alive (a
/// zombie is not).
pub fn is_running(pid: u32, start: u64) -> bool {
    is_alive(pid) && start_time(pid) == Some(start)
}

/// Whether `pid` names a live process (not a zombie); reaps it first if it
/// is our exited child.
pub fn is_alive(pid: u32) -> bool {
    reap(pid);
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z")
}

/// Collects `pid` if it is our exited child; harmless otherwise.
pub fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a single pid writes only `status`.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes plain integers; a negative pid names the group the
    // process leads (it was started with its own group).
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

/// Stops the process if it is still the one started: SIGTERM to its group,
/// then SIGKILL after `deadline`. Returns whether it had to be killed.
pub fn stop(pid: u32, start: u64, deadline: Duration) -> bool {
    if !is_running(pid, start) {
        return false;
    }
    signal_group(pid, libc::SIGTERM);
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if !is_running(pid, start) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(pid, libc::SIGKILL);
    let until = Instant::now() + Duration::from_secs(5);
    while is_running(pid, start) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// After `start`: fails if the process died within `grace` (a bad flag,
/// a missing binary), naming its log.
pub fn check_alive(
    name: &str,
    started: &Started,
    log: &Path,
    grace: Duration,
) -> Result<(), ProcessError> {
    let until = Instant::now() + grace;
    loop {
        if !is_running(started.pid, started.start_time) {
            return Err(ProcessError::ExitedAtStart {
                name: name.into(),
                pid: started.pid,
                status: "not running".into(),
                log: log.to_path_buf(),
            });
        }
        if Instant::now() >= until {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose network namespace is the one at `netns_path`
/// (compared by device and inode), for the sweep that finds what the journal
/// could not record (a crash between start and record, a pod's children).
pub fn pids_in_netns(netns_path: &Path) -> Vec<u32> {
    let Ok(target) = fs::metadata(netns_path) else {
        return Vec::new();
    };
    let id = (target.dev(), target.ino());
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
        })
        .collect()
}

/// SIGKILL to one process.
pub fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes plain integers.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_signal: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// A flag set by SIGTERM or SIGINT, for a synchronous loop to stop at.
pub fn termination_flag() -> &'static AtomicBool {
    let handler = on_terminate as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    &TERMINATE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_known_and_stable() {
        let me = std::process::id();
        let first = start_time(me).unwrap();
        assert!(first > 0);
        assert_eq!(start_time(me), Some(first));
        assert!(is_running(me, first));
        assert!(!is_running(me, first + 1));
    }
}
