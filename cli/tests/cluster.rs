//! `ambit up` / `ambit down` with real namespaces and the real CNI plugins
//! (root): pods on two nodes reach each other by pod IP and by ClusterIP,
//! status reaches the registry, and `down` leaves nothing, also after the
//! pod runner was killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ambit::cluster::journal::{Journal, Record, Role};
use ambit::cluster::pod_status::STATUS_FILE;
use ambit::cluster::progress::Progress;
use ambit::cluster::{Binaries, Cluster, ClusterOptions, UpError, process};
use anyhow::{Context, Result, bail};
use mesh_testkit::{eventually, require_root};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/two-nodes");

fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ambit"))
        .parent()
        .expect("a directory")
        .to_path_buf()
}

/// A copy of the example directory, and options for a cluster without the
/// mesh in a private state dir.
struct Setup {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    options: ClusterOptions,
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

fn setup() -> Result<Setup> {
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

fn netns_list() -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exec_in(netns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that nothing of the cluster is left: namespaces, state, status
/// file, processes.
fn assert_nothing_left(setup: &Setup, processes: &[(u32, u64)]) -> Result<()> {
    let prefix = format!("ambit-{}-", setup.options.name);
    let list = netns_list()?;
    if list.lines().any(|l| l.starts_with(&prefix)) {
        bail!("namespaces left behind:\n{list}");
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

fn recorded_processes(state: &Path) -> Result<Vec<(Role, u32, u64)>> {
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

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_two_nodes_talk_by_pod_ip_and_cluster_ip_and_down_leaves_nothing() -> Result<()> {
    let setup = setup()?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let plan = cluster.plan().clone();
    assert_eq!(plan.nodes.len(), 2);

    let server_ip = cluster
        .pod_ip("server/server")
        .context("the server pod has an IP")?;
    let client_ip = cluster
        .pod_ip("client/client")
        .context("the client pod has an IP")?;
    assert!(plan.nodes[1].pod_cidr.contains(&server_ip), "{server_ip}");
    assert!(plan.nodes[0].pod_cidr.contains(&client_ip), "{client_ip}");

    // Pod A to pod B across the fabric, by pod IP; the server sees the
    // client's own address (no masquerading).
    let client_netns = &plan.pods.iter().find(|p| p.name == "client").unwrap().netns;
    let ambit = env!("CARGO_BIN_EXE_ambit");
    let target = format!("{server_ip}:8080");
    let out = exec_in(
        client_netns,
        &[
            ambit, "app", "client", "--target", &target, "--count", "1", "--name", "t",
        ],
    )?;
    assert!(
        out.starts_with(&format!(
            "ok {target} server got \"hello from t\" from {client_ip}:"
        )),
        "{out}"
    );

    // The client pod's own process calls the Service's ClusterIP.
    let log = plan.state_dir.join("pods/client.client.log");
    eventually(
        "the client pod reaches the service",
        Duration::from_secs(20),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log)?;
                if text
                    .lines()
                    .any(|l| l.starts_with("ok 10.96.0.10:80 server got"))
                {
                    Ok(())
                } else {
                    bail!("client log so far:\n{text}")
                }
            }
        },
    )
    .await?;

    // The registry sees pod status as a kubelet would have written it.
    let registry = mesh_registry::Registry::new();
    mesh_registry::dir::DirSource::new(&setup.dir, registry.clone())?.load();
    let store = registry.snapshot();
    let server = store
        .pods
        .get(&mesh_registry::model::NamespacedName::new(
            "server", "server",
        ))
        .context("server pod in the registry")?;
    let status = server.status.clone().context("server pod status")?;
    assert_eq!(status.pod_ip, Some(server_ip.to_string()));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        status.host_ip,
        Some(plan.nodes[1].address.addr().to_string())
    );
    assert_eq!(
        server.metadata.uid.as_deref(),
        Some(
            plan.pods
                .iter()
                .find(|p| p.name == "server")
                .unwrap()
                .uid
                .as_str()
        )
    );

    // A second `up` with the same state is refused.
    match Cluster::up(&setup.dir, &setup.options) {
        Err(UpError::AlreadyUp { .. }) => {}
        other => bail!("expected AlreadyUp, got {other:?}"),
    }

    let processes: Vec<(u32, u64)> = recorded_processes(&plan.state_dir)?
        .into_iter()
        .map(|(_, pid, start)| (pid, start))
        .collect();
    assert_eq!(processes.len(), 3, "pod runner and two pods");
    let warnings = Cluster::down(&plan.state_dir, &Progress::quiet())?;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_nothing_left(&setup, &processes)
}

#[tokio::test(flavor = "multi_thread")]
async fn down_cleans_up_after_the_pod_runner_was_killed() -> Result<()> {
    let setup = setup()?;
    // A pod whose child leaves its process group: only the sweep of the
    // pod's namespace finds it.
    std::fs::write(
        setup.dir.join("escaping.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: escaping, namespace: server}\nspec: {nodeName: node-2, containers: [{name: c, command: [sh, -c, 'setsid sleep 1000 & exec ambit app server --port 9001']}]}\n",
    )?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let escaping_netns = ambit::cluster::network::netns_path(
        &cluster
            .plan()
            .pods
            .iter()
            .find(|p| p.name == "escaping")
            .unwrap()
            .netns,
    );
    let in_pod = eventually("the pod's child runs", Duration::from_secs(5), || {
        let path = escaping_netns.clone();
        async move {
            let pids = process::pids_in_netns(&path);
            if pids.len() == 2 {
                Ok(pids)
            } else {
                bail!("pids in the pod: {pids:?}")
            }
        }
    })
    .await?;
    let state = cluster.plan().state_dir.clone();
    let processes = recorded_processes(&state)?;
    // The runner dies without any chance to clean up; its pods run on.
    for (role, pid, start) in &processes {
        if *role == Role::Kubelet {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            eventually(
                "the runner is gone",
                Duration::from_secs(5),
                || async move {
                    if process::is_running(*pid, *start) {
                        bail!("still running")
                    }
                    Ok(())
                },
            )
            .await?;
        }
    }
    assert!(
        processes
            .iter()
            .filter(|(role, _, _)| *role == Role::Pod)
            .all(|(_, pid, start)| process::is_running(*pid, *start))
    );
    drop(cluster);

    // `ambit down` as a user runs it, from the state alone.
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["down", "--name", &setup.options.name, "--state-dir"])
        .arg(&state)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was not recorded; killed"), "{stderr}");
    for pid in in_pod {
        assert!(!process::is_alive(pid), "{pid} survived");
    }
    let all: Vec<(u32, u64)> = processes.iter().map(|(_, p, s)| (*p, *s)).collect();
    assert_nothing_left(&setup, &all)
}

#[test]
fn a_pod_on_an_unknown_node_is_refused_before_anything_is_made() -> Result<()> {
    let setup = setup()?;
    std::fs::write(
        setup.dir.join("stray.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stray}\nspec: {nodeName: node-9, containers: [{name: c, command: [x]}]}\n",
    )?;
    let error = Cluster::up(&setup.dir, &setup.options).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("pod default/stray: spec.nodeName \"node-9\" is not a Node"),
        "{error}"
    );
    assert_nothing_left(&setup, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_cni_add_fails_stays_pending_retried_and_reported() -> Result<()> {
    let mut setup = setup()?;
    // node-1's /30 holds the gateway and one pod: a second pod there gets
    // no address from host-local, as a node whose pod CIDR is exhausted.
    std::fs::write(
        setup.dir.join("nodes.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.0.0/29}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n",
    )?;
    let mut pods = String::new();
    for i in 0..6 {
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: extra-{i}, namespace: client}}\nspec: {{nodeName: node-1, containers: [{{name: c, command: [ambit, app, server, --port, '9000']}}]}}\n"
        ));
    }
    std::fs::write(setup.dir.join("extra.yaml"), pods)?;
    setup.options.wait = Duration::from_secs(4);
    let error = match Cluster::up(&setup.dir, &setup.options) {
        Err(e @ UpError::PodsPending { .. }) => e,
        other => bail!("expected PodsPending, got {other:?}"),
    };
    let UpError::PodsPending { pending, .. } = &error else {
        unreachable!()
    };
    // Seven pods on a /29 (five usable addresses after the gateway): two
    // wait, each retried with the plugin's own words.
    assert_eq!(pending.len(), 2, "{error}");
    for line in pending {
        assert!(line.contains("on node-1: Pending after"), "{line}");
        assert!(line.contains("ADD bridge"), "{line}");
        let attempts: u32 = line
            .split(" after ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .context("attempt count")?;
        assert!(attempts >= 2, "{line}");
    }
    // The cluster stays up; its status file says why the pods wait.
    let status = std::fs::read_to_string(setup.dir.join(STATUS_FILE))?;
    assert!(status.contains("phase: Pending"), "{status}");
    let state = setup.options.state_dir();
    let processes: Vec<(u32, u64)> = recorded_processes(&state)?
        .into_iter()
        .map(|(_, pid, start)| (pid, start))
        .collect();
    Cluster::down(&state, &Progress::quiet())?;
    assert_nothing_left(&setup, &processes)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pod_runner_stops_at_sigterm_and_its_pods_run_on() -> Result<()> {
    let setup = setup()?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let processes = recorded_processes(&cluster.plan().state_dir)?;
    let (_, pid, start) = *processes
        .iter()
        .find(|(role, _, _)| *role == Role::Kubelet)
        .context("the runner is recorded")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    eventually("the runner exits", Duration::from_secs(3), || async move {
        if process::is_running(pid, start) {
            bail!("still running")
        }
        Ok(())
    })
    .await?;
    let log = std::fs::read_to_string(cluster.plan().state_dir.join("kubelet.log"))?;
    assert!(
        log.contains("pod runner stopping; pods keep running"),
        "{log}"
    );
    for (role, pid, start) in &processes {
        if *role == Role::Pod {
            assert!(process::is_running(*pid, *start), "pod {pid} stopped");
        }
    }
    let all: Vec<(u32, u64)> = processes.iter().map(|(_, p, s)| (*p, *s)).collect();
    Cluster::down(&cluster.plan().state_dir, &Progress::quiet())?;
    assert_nothing_left(&setup, &all)
}

/// The whole mesh: istiod-lite, a node agent and an in-pod ztunnel per node.
/// Labelling the namespaces enrols the running pods, and the client's calls
/// then cross the nodes over mTLS HBONE; a pod added while its node agent is
/// down stays pending until the agent is back, then runs enrolled; deleting
/// it releases it from the agent. Needs the `node-agent`, `ambit-cni`
/// and in-pod `ztunnel` binaries beside `ambit` (or in AMBIT_BIN_DIR).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the node-agent, ambit-cni and in-pod ztunnel binaries"]
async fn the_mesh_enrols_labelled_pods_and_new_pods_wait_for_their_node_agent() -> Result<()> {
    use ambit::cluster::probe;
    use ambit::label::{self, LabelChange, Target};

    let mut setup = setup()?;
    setup.options.mesh = true;
    if let Some(dir) = std::env::var_os("AMBIT_BIN_DIR") {
        setup.options.binaries = Binaries { dir: dir.into() };
    }
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let plan = cluster.plan().clone();
    let ambient = [LabelChange::Set {
        key: "istio.io/dataplane-mode".into(),
        value: "ambient".into(),
    }];
    for ns in ["server", "client"] {
        label::label(&setup.dir, &Target::Namespace(ns.into()), &ambient)?;
    }
    eventually("both pods enrolled", Duration::from_secs(30), || {
        let cluster = cluster.clone();
        async move {
            let report = ambit::status::collect(&cluster);
            let unhealthy: Vec<_> = report.health.iter().filter(|(_, r)| r.is_err()).collect();
            if !unhealthy.is_empty() {
                bail!("not ready: {unhealthy:?}");
            }
            if report.pods.iter().all(|p| p.enrolled == Some(true)) {
                Ok(())
            } else {
                bail!("{:?}", report.pods)
            }
        }
    })
    .await?;
    let server_node = &plan.nodes[1].netns;
    eventually(
        "mTLS connections from the client reach the server's ztunnel",
        Duration::from_secs(30),
        || {
            let netns = server_node.clone();
            async move {
                let (_, metrics) = probe::get(
                    &netns,
                    "127.0.0.1:15020".parse()?,
                    "/metrics",
                    Duration::from_secs(2),
                )?;
                let opened = metrics.lines().any(|l| {
                    l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                        && l.contains(
                            "source_principal=\"spiffe://cluster.local/ns/client/sa/default\"",
                        )
                        && l.contains("connection_security_policy=\"mutual_tls\"")
                });
                if opened {
                    Ok(())
                } else {
                    bail!("no mTLS connection from the client yet")
                }
            }
        },
    )
    .await?;

    // With node-1's agent down, a new pod there waits for its network...
    let journal = Journal::new(&plan.state_dir);
    let (agent_pid, agent_start) = journal
        .read()?
        .into_iter()
        .find_map(|r| match r {
            Record::Process {
                name,
                pid,
                start_time,
                ..
            } if name == "node-agent node-1" => Some((pid, start_time)),
            _ => None,
        })
        .context("node-1's agent is recorded")?;
    process::stop(agent_pid, agent_start, Duration::from_secs(5));
    let late = setup.dir.join("late.yaml");
    std::fs::write(
        &late,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: client}\nspec: {nodeName: node-1, containers: [{name: c, command: [ambit, app, server, --port, '9003']}]}\n",
    )?;
    eventually(
        "the new pod waits for the node agent",
        Duration::from_secs(15),
        || {
            let cluster = cluster.clone();
            async move {
                let states = cluster.pod_states();
                let late = states
                    .iter()
                    .find(|s| s.pod == "client/late")
                    .context("not planned yet")?;
                match &late.last_error {
                    Some(error) if late.ip.is_none() && error.contains("ambit-cni") => Ok(()),
                    other => bail!("{:?}: {other:?}", late.phase),
                }
            }
        },
    )
    .await?;
    // ...and runs, enrolled, once the agent is back.
    ambit::cluster::mesh::start_node_agent(
        &plan,
        &plan.nodes[0],
        &setup.options.binaries,
        &journal,
    )?;
    eventually("the new pod runs enrolled", Duration::from_secs(45), || {
        let cluster = Cluster::open(&plan.state_dir);
        async move {
            let report = ambit::status::collect(&cluster?);
            let late = report
                .pods
                .iter()
                .find(|p| p.pod == "client/late")
                .context("no row")?;
            if late.phase == "Running" && late.enrolled == Some(true) {
                Ok(())
            } else {
                bail!("{late:?}")
            }
        }
    })
    .await?;
    // Deleting it releases it from the agent (CNI DEL through ambit-cni).
    std::fs::remove_file(&late)?;
    let node_1 = plan.nodes[0].netns.clone();
    eventually(
        "the agent lets the deleted pod go",
        Duration::from_secs(15),
        || {
            let netns = node_1.clone();
            async move {
                let (_, pods) = probe::get(
                    &netns,
                    "127.0.0.1:15031".parse()?,
                    "/debug/pods",
                    Duration::from_secs(2),
                )?;
                if pods.contains("\"late\"") {
                    bail!("still known: {pods}")
                }
                Ok(())
            }
        },
    )
    .await?;

    let processes: Vec<(u32, u64)> = recorded_processes(&plan.state_dir)?
        .into_iter()
        .map(|(_, pid, start)| (pid, start))
        .collect();
    let warnings = Cluster::down(&plan.state_dir, &Progress::quiet())?;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_nothing_left(&setup, &processes)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_added_to_the_directory_start_and_deleted_ones_go() -> Result<()> {
    let setup = setup()?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let late = setup.dir.join("late.yaml");
    std::fs::write(
        &late,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: server}\nspec: {nodeName: node-1, containers: [{name: c, command: [ambit, app, server, --port, '9002']}]}\n",
    )?;
    let ip = eventually("the added pod runs", Duration::from_secs(15), || {
        let cluster = cluster.clone();
        async move { cluster.pod_ip("server/late").context("not running yet") }
    })
    .await?;
    let netns = format!("ambit-{}-pod-server.late", setup.options.name);
    let client_netns = format!("ambit-{}-pod-client.client", setup.options.name);
    let target = format!("{ip}:9002");
    let out = exec_in(
        &client_netns,
        &[
            env!("CARGO_BIN_EXE_ambit"),
            "app",
            "client",
            "--target",
            &target,
            "--count",
            "1",
        ],
    )?;
    assert!(out.starts_with(&format!("ok {target} late got")), "{out}");
    let opened = Cluster::open(&cluster.plan().state_dir)?;
    assert!(
        opened.plan().pods.iter().any(|p| p.name == "late"),
        "plan.json has the pod"
    );

    std::fs::remove_file(&late)?;
    eventually("the deleted pod is gone", Duration::from_secs(15), || {
        let (netns, cluster, dir) = (netns.clone(), cluster.clone(), setup.dir.clone());
        async move {
            if ambit::cluster::network::netns_exists(&netns) {
                bail!("namespace {netns} still there");
            }
            if cluster.pod_states().iter().any(|s| s.pod == "server/late") {
                bail!("still in pods.json");
            }
            let status = std::fs::read_to_string(dir.join(STATUS_FILE))?;
            if status.contains("name: late") {
                bail!("still in the status file");
            }
            Ok(())
        }
    })
    .await?;
    let processes: Vec<(u32, u64)> = recorded_processes(&cluster.plan().state_dir)?
        .into_iter()
        .map(|(_, pid, start)| (pid, start))
        .collect();
    let warnings = Cluster::down(&cluster.plan().state_dir, &Progress::quiet())?;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_nothing_left(&setup, &processes)
}
