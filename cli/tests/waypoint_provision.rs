//! Waypoint provisioning on the local cluster with the whole mesh (root):
//! `ambit waypoint apply -n server --enroll-namespace` makes istiod-lite
//! write the waypoint's Pod, Service and ServiceAccount, the pod runner
//! schedules the pod on a node, `ambit waypoint list` and `ambit status`
//! show the waypoint and its binding, `ambit waypoint delete` removes it
//! all, and `ambit down` leaves nothing.
//!
//! With the `waypoint` binary beside the others the waypoint runs and the
//! Gateway becomes `Programmed`; without it, this checks everything up to
//! the pod being scheduled and the runner's report of the missing binary.

use std::time::Duration;

use ambit::cluster::Cluster;
use ambit::{status, waypoint};
use anyhow::{Context, Result, bail};
use common::{down_and_check, mesh_setup};
use mesh_testkit::eventually;

mod common;

const PATIENCE: Duration = Duration::from_secs(30);
const GENERATED: &str = "ambit-waypoints.generated.yaml";

fn files() -> Vec<(&'static str, String)> {
    vec![
        (
            "cluster.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: server, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: server, labels: {app: server}}\n\
             spec: {nodeName: node-1, containers: [{name: c, command: [ambit, app, server, --port, '8080']}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: server}\n\
             spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n"
                .to_string(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn waypoint_apply_schedules_a_waypoint_pod_and_delete_removes_it() -> Result<()> {
    let setup = mesh_setup(&files())?;
    let cluster = Cluster::up(&setup.dir, &setup.options).context("ambit up")?;
    let state = cluster.plan().state_dir.clone();

    let applied = waypoint::apply(&setup.dir, "server", "waypoint", "service", true)?;
    assert!(applied.labelled.is_some());

    // istiod-lite writes the waypoint; the runner schedules its pod on the
    // emptier node (node-2) and gives it an address.
    let generated = setup.dir.join(GENERATED);
    eventually("the waypoint pod scheduled", PATIENCE, || {
        let state = state.clone();
        async move {
            let cluster = Cluster::open(&state)?;
            let pod = cluster
                .pod_states()
                .into_iter()
                .find(|p| p.pod == "server/waypoint")
                .context("no waypoint pod in the runner's view yet")?;
            if pod.node != "node-2" {
                bail!("scheduled on {}", pod.node);
            }
            if pod.attempts == 0 && pod.pid.is_none() {
                bail!("not attempted yet: {pod:?}");
            }
            // Without the binary the runner says which is missing.
            if !common::bin_dir().join("waypoint").is_file() {
                let error = pod.last_error.unwrap_or_default();
                if !error.contains("waypoint binary") {
                    bail!("unexpected error: {error}");
                }
            }
            Ok(())
        }
    })
    .await?;
    let text = std::fs::read_to_string(&generated)?;
    for kind in ["kind: Pod", "kind: Service", "kind: ServiceAccount"] {
        assert!(text.contains(kind), "{kind} missing:\n{text}");
    }
    let plan = Cluster::open(&state)?.plan().clone();
    let planned = plan
        .pods
        .iter()
        .find(|p| p.key() == "server/waypoint")
        .context("waypoint pod planned")?;
    assert_eq!(planned.command, ["waypoint"]);
    let env: Vec<&str> = planned.env.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "GATEWAY_NAME",
        "POD_NAME",
        "POD_NAMESPACE",
        "NODE_NAME",
        "SERVICE_ACCOUNT",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }

    // Every pod's process gets the downward-API-like env and its own IP.
    let server = Cluster::open(&state)?
        .pod_states()
        .into_iter()
        .find(|p| p.pod == "server/server")
        .context("server pod")?;
    let environ = std::fs::read(format!(
        "/proc/{}/environ",
        server.pid.context("server pid")?
    ))?;
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let ip = server.ip.context("server IP")?;
    for expected in [
        "POD_NAME=server".to_string(),
        "POD_NAMESPACE=server".into(),
        "NODE_NAME=node-1".into(),
        "SERVICE_ACCOUNT=default".into(),
        format!("INSTANCE_IP={ip}"),
    ] {
        assert!(environ.contains(&expected), "{expected} not in {environ:?}");
    }

    let view = waypoint::read_dir(&setup.dir)?;
    let rows = waypoint::list(&view, Some("server"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].services, ["server/server"]);
    let report = status::render(&status::collect(&Cluster::open(&state)?));
    assert!(report.contains("server/waypoint"), "{report}");
    // With the binary, the waypoint runs and the Gateway is programmed;
    // without it, it is addressed but pending.
    let runnable = common::bin_dir().join("waypoint").is_file();
    eventually("the Gateway's status written", PATIENCE, || {
        let dir = setup.dir.clone();
        async move {
            let view = waypoint::read_dir(&dir)?;
            let row = waypoint::list(&view, Some("server"))
                .pop()
                .context("no row")?;
            if !row.address.starts_with("10.96.255.") {
                bail!("address {}", row.address);
            }
            match (runnable, row.is_programmed()) {
                (true, true) => Ok(()),
                (false, false) if row.programmed.contains("Pending") => Ok(()),
                _ => bail!("programmed: {}", row.programmed),
            }
        }
    })
    .await?;
    if runnable {
        let pod = Cluster::open(&state)?
            .pod_states()
            .into_iter()
            .find(|p| p.pod == "server/waypoint")
            .context("waypoint pod")?;
        let environ = std::fs::read(format!("/proc/{}/environ", pod.pid.context("pid")?))?;
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        for name in [
            "GATEWAY_NAME=waypoint",
            "SERVICE_ACCOUNT=waypoint",
            "ISTIOD_ADDRESS=https://10.255.0.1:15012",
            "ISTIOD_SERVER_NAME=",
            "ISTIOD_ROOT_CERT=",
            "ISTIOD_TOKEN_FILE=",
            "TRUST_DOMAIN=cluster.local",
        ] {
            assert!(
                environ.contains(name),
                "{name} not in the waypoint's env:\n{environ}"
            );
        }
    }

    let view = waypoint::read_dir(&setup.dir)?;
    waypoint::delete(&setup.dir, &view, "server", &["waypoint".into()], false)?;
    eventually("the waypoint pod removed", PATIENCE, || {
        let state = state.clone();
        let generated = generated.clone();
        async move {
            if generated.exists() {
                bail!("{} still there", generated.display());
            }
            let cluster = Cluster::open(&state)?;
            if cluster
                .pod_states()
                .iter()
                .any(|p| p.pod == "server/waypoint")
            {
                bail!("pod still in the runner's view");
            }
            Ok(())
        }
    })
    .await?;
    down_and_check(&setup)
}
