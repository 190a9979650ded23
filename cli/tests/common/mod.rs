//! Shared by the cluster tests: a private copy of the example directory, a
//! cluster name unique per test, and the checks that nothing is left.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ambit::cluster::journal::{Journal, Record, Role};
use ambit::cluster::pod_status::STATUS_FILE;
use ambit::cluster::progress::Progress;
use ambit::cluster::{Binaries, Cluster, ClusterOptions, process};
use anyhow::{Result, bail};
use mesh_testkit::require_root;

pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/two-nodes");

pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ambit"))
        .parent()
        .expect("a directory")
        .to_path_buf()
}

/// A copy of the example directory, and options for a cluster without the
/// mesh in a private state dir.
pub struct Setup {
    _temp: tempfile::TempDir,
    pub dir: PathBuf,
    pub options: ClusterOptions,
}

/// Takes the cluster down if a test failed before it did.
impl Drop for Setup {
    fn drop(&mut self) {
        let state = self.options.state_dir();
        if state.exists() {
            let _ = Cluster::down(&state, &Progress::quiet());
        }
    }
}

pub fn setup() -> Result<Setup> {
    require_root();
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("cluster");
    std::fs::create_dir(&dir)?;
    for entry in std::fs::read_dir(EXAMPLE)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let mut options = ClusterOptions::new(&unique_name());
    options.state_dir = Some(temp.path().join("state"));
    options.mesh = false;
    options.binaries = Binaries { dir: bin_dir() };
    options.wait = Duration::from_secs(60);
    Ok(Setup {
        _temp: temp,
        dir,
        options,
    })
}

/// Host interfaces with the names the cluster uses inside its namespaces
/// (fabric bridge and ports, node bridge, the bridge plugin's `veth` +
/// 8 hex digits): none may ever appear in the host's own namespace.
pub fn host_links_like_ours() -> Result<Vec<String>> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| {
            let veth = name
                .strip_prefix("veth")
                .is_some_and(|rest| rest.len() == 8 && rest.chars().all(|c| c.is_ascii_hexdigit()));
            let port = name
                .strip_prefix("port")
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()));
            veth || port || name == "fabric0" || name == "cni0"
        })
        .collect())
}

pub fn netns_list() -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn exec_in(netns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that nothing of the cluster is left: namespaces, interfaces,
/// iptables rules, state, status file, processes.
pub fn assert_nothing_left(setup: &Setup, processes: &[(u32, u64)]) -> Result<()> {
    let prefix = format!("ambit-{}-", setup.options.name);
    let list = netns_list()?;
    if list.lines().any(|l| l.starts_with(&prefix)) {
        bail!("namespaces left behind:\n{list}");
    }
    let links = host_links_like_ours()?;
    if !links.is_empty() {
        bail!("interfaces in the host namespace: {links:?}");
    }
    let rules = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()?;
    let rules = String::from_utf8_lossy(&rules.stdout);
    if rules.contains(ambit::cluster::services::CHAIN) {
        bail!("service rules in the host namespace:\n{rules}");
    }
    if setup.options.state_dir().exists() {
        bail!("state dir left behind");
    }
    if setup.dir.join(STATUS_FILE).exists() {
        bail!("status file left behind");
    }
    for (pid, start) in processes {
        if process::is_running(*pid, *start) {
            bail!("process {pid} still runs");
        }
    }
    Ok(())
}

pub fn recorded_processes(state: &Path) -> Result<Vec<(Role, u32, u64)>> {
    Ok(Journal::new(state)
        .read()?
        .into_iter()
        .filter_map(|r| match r {
            Record::Process {
                role,
                pid,
                start_time,
                ..
            } => Some((role, pid, start_time)),
            _ => None,
        })
        .collect())
}

/// A cluster directory of the given files (name, YAML), with the mesh, in a
/// private state dir; the binaries from AMBIT_BIN_DIR when set.
pub fn mesh_setup(files: &[(&str, String)]) -> Result<Setup> {
    let mut setup = setup()?;
    for entry in std::fs::read_dir(&setup.dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    for (name, text) in files {
        std::fs::write(setup.dir.join(name), text)?;
    }
    setup.options.mesh = true;
    if let Some(dir) = std::env::var_os("AMBIT_BIN_DIR") {
        setup.options.binaries = Binaries { dir: dir.into() };
    }
    Ok(setup)
}

/// `ambit down`, with no warnings, and nothing of the cluster left after.
pub fn down_and_check(setup: &Setup) -> Result<()> {
    let state = setup.options.state_dir();
    let processes: Vec<(u32, u64)> = recorded_processes(&state)?
        .into_iter()
        .map(|(_, pid, start)| (pid, start))
        .collect();
    let warnings = Cluster::down(&state, &Progress::quiet())?;
    if !warnings.is_empty() {
        bail!("ambit down warned: {warnings:?}");
    }
    assert_nothing_left(setup, &processes)
}

/// The pid and start time of the last process the journal records under
/// `name` (e.g. `node-agent node-1`).
pub fn recorded_process(state: &Path, name: &str) -> Result<(u32, u64)> {
    Journal::new(state)
        .read()?
        .into_iter()
        .rev()
        .find_map(|r| match r {
            Record::Process {
                name: n,
                pid,
                start_time,
                ..
            } if n == name => Some((pid, start_time)),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no process {name} in the journal"))
}
