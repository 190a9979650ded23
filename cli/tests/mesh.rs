//! The local cluster with the whole mesh (root; needs the node agent and the
//! in-pod ztunnel binaries).

use std::time::Duration;

use ambit::cluster::journal::{Journal, Record};
use ambit::cluster::progress::Progress;
use ambit::cluster::{Binaries, Cluster, process};
use anyhow::{Context, Result, bail};
use common::{assert_nothing_left, recorded_processes, setup};
use mesh_testkit::eventually;

mod common;

/// The whole mesh: istiod-lite, a node agent and an in-pod ztunnel per node.
/// Labelling the namespaces enrols the running pods, and the client's calls
/// then cross the nodes over mTLS HBONE; a pod added while its node agent is
/// down stays pending until the agent is back, then runs enrolled; deleting
/// it releases it from the agent. Needs the `node-agent`, `ambit-cni`
/// and in-pod `ztunnel` binaries beside `ambit` (or in AMBIT_BIN_DIR).
#[tokio::test(flavor = "multi_thread")]
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
            if report
                .pods
                .iter()
                .all(|p| p.enrolled == Some(true) && p.in_ztunnel.as_deref() == Some("Up"))
            {
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
