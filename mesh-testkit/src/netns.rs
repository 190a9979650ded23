//! [`Netns`]: a uniquely named network namespace, removed on drop.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::process::{self, ChildGuard, ChildState};
use crate::{names, sys};

/// Where `ip netns` keeps its namespace handles.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// How long [`Netns::tcp_connect`] waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace created with `ip netns add` under a name unique to this process
/// and call (`amb-<pid>-<n>-<tag>`), with `lo` up.
///
/// On drop, the children it spawned that are still running are killed and reaped, then
/// the namespace is deleted (`ip netns del`); errors there are printed, not raised. The
/// kernel frees the namespace, and the veth ends inside it, once the last socket or
/// process in it is gone as well.
pub struct Netns {
    name: String,
    children: Mutex<Vec<Weak<Mutex<ChildState>>>>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns").field("name", &self.name).finish()
    }
}

impl Netns {
    /// Creates a namespace whose name ends in (a sanitized, shortened) `tag`, and brings
    /// its loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        if sys::euid() != 0 {
            bail!(
                "creating a network namespace needs root (effective uid is {}); \
                 run the namespace tests as root",
                sys::euid()
            );
        }
        // The name is unique in this process; a leftover from an earlier process with
        // the same pid (killed before it could clean up) makes `add` fail, and so does
        // a rare race in `ip` mounting its run directory: try a few names.
        let mut last_err = None;
        for _ in 0..5 {
            let name = names::netns_name(tag);
            match run_cmd(Command::new("ip").args(["netns", "add", &name])) {
                Ok(_) => {
                    let ns = Netns {
                        name,
                        children: Mutex::new(Vec::new()),
                    };
                    // On error, dropping `ns` deletes the namespace again.
                    ns.ip(&["link", "set", "dev", "lo", "up"])?;
                    return Ok(ns);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("ip netns add failed")))
            .context("creating a network namespace")
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle, `/var/run/netns/<name>` (for `setns`, `nsenter --net=`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_cmd(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `program args...` in the namespace (`ip netns exec`), waits for it and
    /// returns its stdout. A non-zero exit is an error naming the command line, exit
    /// status and stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run_cmd(&mut self.command(program, args))
    }

    /// Starts `program args...` in the namespace as a child process that is killed when
    /// the returned guard (or this namespace) is dropped. Stdin is null; stdout and
    /// stderr are inherited.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        self.spawn_configured(program, args, |_| {})
    }

    /// [`spawn`](Self::spawn) with extra environment variables, and stdout and stderr
    /// both appended to the file `stdout_stderr_to` (created if missing) if given.
    pub fn spawn_with(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        stdout_stderr_to: Option<&Path>,
    ) -> Result<ChildGuard> {
        let output = match stdout_stderr_to {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {} for output", path.display()))?;
                let err = file.try_clone().context("duplicating output file")?;
                Some((file, err))
            }
            None => None,
        };
        self.spawn_configured(program, args, move |cmd| {
            cmd.envs(envs.iter().copied());
            if let Some((out, err)) = output {
                cmd.stdout(out).stderr(err);
            }
        })
    }

    /// [`spawn`](Self::spawn) with a closure that may adjust the [`Command`]
    /// (`ip netns exec <name> program args...`) before it is started: environment,
    /// working directory, stdio.
    pub fn spawn_configured(
        &self,
        program: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<ChildGuard> {
        let mut cmd = self.command(program, args);
        // Its own process group, so that killing the group also kills grandchildren.
        cmd.stdin(Stdio::null()).process_group(0);
        configure(&mut cmd);
        let cmdline = display_cmd(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{cmdline}`"))?;
        let state = Arc::new(Mutex::new(ChildState::new(child)));
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&state));
        Ok(ChildGuard::new(state, cmdline))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result
    /// (a panic in `f` is resumed here).
    ///
    /// Sockets keep the namespace they were created in, so a socket created in `f` can
    /// then be used from anywhere, e.g. registered with a tokio runtime. Threads `f`
    /// starts are in the namespace too.
    ///
    /// # Panics
    ///
    /// If the thread cannot enter the namespace; see [`try_run`](Self::try_run).
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match self.try_run(f) {
            Ok(value) => value,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// [`run`](Self::run), with an error instead of a panic if the namespace cannot be
    /// entered (`f` is then not called).
    pub fn try_run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        let handle = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let outcome = std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, move || {
                    sys::setns_net(handle.as_fd())?;
                    drop(handle);
                    Ok::<T, std::io::Error>(f())
                })
                .context("starting a thread")?;
            match thread.join() {
                Ok(outcome) => Ok::<_, anyhow::Error>(outcome),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        outcome.with_context(|| format!("entering network namespace {}", self.name))
    }

    /// Binds a TCP listener to `addr` inside the namespace and registers it with the
    /// current tokio runtime (an error outside a runtime).
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        tokio::runtime::Handle::try_current()
            .context("Netns::tcp_listener must be called within a tokio runtime")?;
        let listener = self
            .try_run(move || std::net::TcpListener::bind(addr))?
            .with_context(|| format!("binding a TCP listener to {addr} in {}", self.name))?;
        listener.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// Connects to `addr` from a socket created inside the namespace, waiting at most
    /// 5 s; the error names the address.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let socket = self
            .try_run(move || {
                if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
            })?
            .with_context(|| format!("creating a TCP socket in {}", self.name))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                Err(e).with_context(|| format!("connecting to {addr} from {}", self.name))
            }
            Err(_) => bail!(
                "connecting to {addr} from {}: no connection after {CONNECT_TIMEOUT:?}",
                self.name
            ),
        }
    }

    /// `ip netns exec <name> program args...`
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            let _ = process::lock(&child).kill_and_reap();
        }
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "mesh-testkit: removing network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Runs `cmd` to completion; its stdout, or an error with command line, status and
/// stderr.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<String> {
    let cmdline = display_cmd(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{cmdline}`"))?;
    if !output.status.success() {
        bail!(
            "`{cmdline}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("output of `{cmdline}`"))
}

/// The command line, arguments quoted where a shell would need it.
fn display_cmd(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
