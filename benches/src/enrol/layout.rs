//! The cluster directory the enrolment benchmark runs: two nodes, a server
//! pod in an ambient namespace on node-2 behind a Service, and N client pods
//! in a namespace not yet in the mesh on node-1, each calling the Service at a
//! fixed interval with `ambit app client`.

use std::path::Path;
use std::time::Duration;

/// The namespace whose label the benchmark flips.
pub const CLIENT_NAMESPACE: &str = "enrol";
/// The node the clients run on (its ztunnel is the one whose RSS is read).
pub const CLIENT_NODE: &str = "node-1";
/// The node the server runs on (its ztunnel counts the mTLS connections).
pub const SERVER_NODE: &str = "node-2";
/// The label `ambit label` sets and the node agent and istiod-lite act on.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

const SERVICE_IP: &str = "10.96.0.10";

/// The name of client pod `i`: its `source_workload` in ztunnel's metrics
/// (a pod without an owner is its own workload).
pub fn client_pod(i: usize) -> String {
    format!("client-{i}")
}

/// How often each of `pods` clients connects: `every`, stretched so that all
/// of them together open at most `max_rate` connections per second (more
/// would load the 2-core machine being measured until it measures itself).
pub fn client_interval(every: Duration, pods: usize, max_rate: u32) -> Duration {
    let floor = Duration::from_secs(1).mul_f64(pods as f64 / f64::from(max_rate.max(1)));
    every.max(floor)
}

/// The directory's files, as (file name, YAML text).
pub fn files(clients: usize, every: Duration) -> Vec<(&'static str, String)> {
    let nodes = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n"
        .to_string();
    let namespaces = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CLIENT_NAMESPACE}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: server\n  labels:\n    {DATAPLANE_MODE}: ambient\n"
    );
    let server = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: server\n  namespace: server\n  labels: {{app: server}}\n\
         spec:\n  nodeName: {SERVER_NODE}\n  containers:\n  - name: server\n    \
         command: [ambit, app, server, --port, \"8080\"]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: server\n  namespace: server\n\
         spec:\n  clusterIP: {SERVICE_IP}\n  selector: {{app: server}}\n  ports:\n  - name: tcp\n    port: 80\n    targetPort: 8080\n"
    );
    let every = format!("{}ms", every.as_millis().max(1));
    let clients = (0..clients)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {CLIENT_NAMESPACE}\n  labels: {{app: client}}\n\
                 spec:\n  nodeName: {CLIENT_NODE}\n  containers:\n  - name: client\n    \
                 command: [ambit, app, client, --target, \"{SERVICE_IP}:80\", --every, \"{every}\"]\n",
                client_pod(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    vec![
        ("nodes.yaml", nodes),
        ("namespaces.yaml", namespaces),
        ("server.yaml", server),
        ("clients.yaml", clients),
    ]
}

/// Writes `files(clients, every)` into `dir`.
pub fn write(dir: &Path, clients: usize, every: Duration) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files(clients, every) {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_clients_call_less_often() {
        let every = Duration::from_millis(20);
        assert_eq!(client_interval(every, 1, 1000), every);
        assert_eq!(client_interval(every, 10, 1000), every);
        assert_eq!(client_interval(every, 50, 1000), Duration::from_millis(50));
        assert_eq!(client_interval(every, 50, 5000), every);
    }

    #[test]
    fn the_directory_parses_as_the_cluster_reads_it() {
        let temp = tempfile::tempdir().unwrap();
        write(temp.path(), 3, Duration::from_millis(20)).unwrap();
        let spec = ambit::cluster::ClusterSpec::read(temp.path()).unwrap();
        let plan = ambit::cluster::plan::plan(
            &spec,
            &ambit::cluster::PlanOptions {
                cluster: "t".into(),
                state_dir: temp.path().join("state"),
                mesh: true,
            },
        )
        .unwrap();
        let mut pods: Vec<String> = plan.pods.iter().map(|p| p.key()).collect();
        pods.sort();
        assert_eq!(
            pods,
            [
                "enrol/client-0",
                "enrol/client-1",
                "enrol/client-2",
                "server/server"
            ]
        );
        let client = plan.pods.iter().find(|p| p.name == "client-1").unwrap();
        assert_eq!(client.node, CLIENT_NODE);
        assert_eq!(
            client.command,
            [
                "ambit",
                "app",
                "client",
                "--target",
                "10.96.0.10:80",
                "--every",
                "20ms"
            ]
        );
        assert_eq!(plan.services.len(), 1);
    }
}
