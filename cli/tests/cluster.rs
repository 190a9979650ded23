//! `ambit up` / `ambit down` with real namespaces and the real CNI plugins
//! (root): pods on two nodes reach each other by pod IP and by ClusterIP,
//! status reaches the registry, and `down` leaves nothing, also after the
//! pod runner was killed.

use std::process::Command;
use std::time::Duration;

use ambit::cluster::journal::Role;
use ambit::cluster::progress::Progress;
use ambit::cluster::{Cluster, UpError, process};
use anyhow::{Context, Result, bail};
use common::{assert_nothing_left, exec_in, recorded_processes, setup};
use mesh_testkit::eventually;

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_two_nodes_talk_by_pod_ip_and_cluster_ip_and_down_leaves_nothing() -> Result<()> {
    let setup = setup()?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let plan = cluster.plan().clone();
    assert_eq!(plan.nodes.len(), 2);
    // Everything lives in the cluster's namespaces: the host gains no link.
    assert!(common::host_links_like_ours()?.is_empty());
    let node_links = exec_in(&plan.nodes[0].netns, &["ip", "-o", "link", "show"])?;
    assert!(
        node_links.contains(": cni0:") && node_links.contains(": eth0@"),
        "{node_links}"
    );

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

#[test]
fn a_failed_up_removes_what_it_made_and_nothing_it_did_not() -> Result<()> {
    let setup = setup()?;
    // Someone else's namespace where node-2 would go: the fabric and node-1
    // are made first, then `up` fails.
    let foreign = format!("ambit-{}-node-node-2", setup.options.name);
    Command::new("ip")
        .args(["netns", "add", &foreign])
        .status()?;
    let outcome = Cluster::up(&setup.dir, &setup.options);
    let list = common::netns_list()?;
    Command::new("ip")
        .args(["netns", "del", &foreign])
        .status()?;
    let error = outcome.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("network namespace {foreign} already exists")),
        "{error}"
    );
    assert!(list.lines().any(|l| l.starts_with(&foreign)), "{list}");
    assert!(
        !list.contains(&format!("ambit-{}-fabric", setup.options.name)),
        "{list}"
    );
    assert_nothing_left(&setup, &[])
}
