//! The benchmark topology: a client and a server namespace joined by one veth (MTU
//! 1500), fresh for every scenario, and pinned processes inside them.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_testkit::{ChildGuard, Netns, TwoHosts, eventually};

use crate::ztunnel::config::PACKET_MARK;

/// The CPU everything in the client namespace runs on.
pub const CLIENT_CPU: u32 = 0;
/// The CPU everything in the server namespace runs on.
pub const SERVER_CPU: u32 = 1;
/// ztunnel's outbound capture port, the redirect target.
pub const OUTBOUND_PORT: u16 = 15001;

/// Per-namespace sysctls, so the connection-rate test does not run out of ports.
const SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/ip_local_port_range", "20000 65000"),
    ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
];

/// The two namespaces of one scenario; removed (with everything running in them) on
/// drop.
#[derive(Debug)]
pub struct Topology {
    hosts: TwoHosts,
}

impl Topology {
    /// Creates both namespaces (names end in `<tag>-c` / `<tag>-s`), the veth between
    /// them (10.1.1.1 and 10.1.1.2), and sets the sysctls in both.
    pub fn new(tag: &str) -> Result<Topology> {
        let hosts = TwoHosts::new(tag).context("creating the client and server namespaces")?;
        for ns in [&hosts.client, &hosts.server] {
            for (path, value) in SYSCTLS {
                ns.try_run(|| std::fs::write(path, value))?
                    .with_context(|| format!("writing {value:?} to {path} in {}", ns.name()))?;
            }
        }
        Ok(Topology { hosts })
    }

    pub fn client(&self) -> &Netns {
        &self.hosts.client
    }

    pub fn server(&self) -> &Netns {
        &self.hosts.server
    }

    pub fn client_ip(&self) -> IpAddr {
        self.hosts.client_v4
    }

    pub fn server_ip(&self) -> IpAddr {
        self.hosts.server_v4
    }

    /// The veth end in the server namespace.
    pub fn server_if(&self) -> &str {
        &self.hosts.server_if
    }

    /// In the client namespace, redirects TCP to `dest` that does not carry ztunnel's
    /// mark to ztunnel's outbound port:
    /// `iptables -t nat -A OUTPUT -p tcp -d DEST -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001`.
    pub fn redirect_outbound(&self, dest: IpAddr) -> Result<()> {
        let dest = dest.to_string();
        let mark = format!("{PACKET_MARK:#x}/0xfff");
        let port = OUTBOUND_PORT.to_string();
        self.client()
            .exec(
                "iptables",
                &[
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-d",
                    &dest,
                    "-m",
                    "mark",
                    "!",
                    "--mark",
                    &mark,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ],
            )
            .context("adding the outbound redirect rule (apt-get install -y iptables)")?;
        Ok(())
    }
}

/// Starts `taskset -c CPU program args...` in `ns`, stdout and stderr appended to `log`;
/// killed when the guard drops.
pub fn spawn_pinned(
    ns: &Netns,
    cpu: u32,
    program: &Path,
    args: &[&str],
    log: &Path,
) -> Result<ChildGuard> {
    let taskset_args = taskset_args(cpu, program, args)?;
    let argv: Vec<&str> = taskset_args.iter().map(String::as_str).collect();
    ns.spawn_with("taskset", &argv, &[], Some(log))
}

/// Runs `taskset -c CPU program args...` in `ns` to completion, at most `timeout`;
/// returns its stdout. Stdout and stderr go to `out` and `out.err` (kept for
/// inspection); a non-zero exit or a timeout is an error quoting both.
pub fn run_pinned(
    ns: &Netns,
    cpu: u32,
    program: &Path,
    args: &[&str],
    timeout: Duration,
    out: &Path,
) -> Result<String> {
    let taskset_args = taskset_args(cpu, program, args)?;
    let argv: Vec<&str> = taskset_args.iter().map(String::as_str).collect();
    let err_path = out.with_extension("err");
    let stdout = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let stderr =
        File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    let child = ns.spawn_configured("taskset", &argv, |cmd| {
        cmd.stdout(stdout).stderr(stderr);
    })?;
    let status = child.wait_timeout(timeout)?;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(read(out)),
        Some(status) => bail!(
            "`{}` in {} failed ({status}):\nstderr: {}\nstdout: {}",
            child.cmdline(),
            ns.name(),
            tail(&read(&err_path), 2000),
            tail(&read(out), 2000)
        ),
        None => {
            let _ = child.kill();
            bail!(
                "`{}` in {} did not finish within {timeout:?}:\nstderr: {}",
                child.cmdline(),
                ns.name(),
                tail(&read(&err_path), 2000)
            )
        }
    }
}

/// `-c CPU program args...`, the arguments of `taskset`.
fn taskset_args(cpu: u32, program: &Path, args: &[&str]) -> Result<Vec<String>> {
    let program = program
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", program.display()))?;
    let mut v = vec!["-c".to_string(), cpu.to_string(), program.to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    Ok(v)
}

/// Waits (at most `patience`) until something in `ns` listens on TCP `port`
/// (`ss -Hltn`), failing at once if `child` exits. Probing with `ss` instead of a
/// connection keeps servers such as iperf3 from seeing a stray client.
pub async fn wait_listening(
    ns: &Netns,
    port: u16,
    child: &ChildGuard,
    patience: Duration,
) -> Result<()> {
    let filter = format!("sport = :{port}");
    let what = format!("`{}` listening on port {port}", child.cmdline());
    let exited = eventually(&what, patience, || async {
        if let Some(status) = child.wait_timeout(Duration::ZERO)? {
            return Ok(Some(status));
        }
        let listening = ns.exec("ss", &["-Hltn", &filter])?;
        if listening.trim().is_empty() {
            bail!("nothing listens yet");
        }
        Ok(None)
    })
    .await?;
    if let Some(status) = exited {
        bail!("`{}` exited ({status}) before listening", child.cmdline());
    }
    Ok(())
}

/// The last `max` bytes of `text` (on a character boundary), for error messages.
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim()
}
