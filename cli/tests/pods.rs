//! The pod runner: a failing CNI ADD retried and reported, SIGTERM, pods
//! added to and deleted from the directory while the cluster runs (root).

use std::process::Command;
use std::time::Duration;

use ambit::cluster::journal::Role;
use ambit::cluster::pod_status::STATUS_FILE;
use ambit::cluster::progress::Progress;
use ambit::cluster::{Cluster, UpError, process};
use anyhow::{Context, Result, bail};
use common::{assert_nothing_left, exec_in, recorded_processes, setup};
use mesh_testkit::eventually;

mod common;

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
