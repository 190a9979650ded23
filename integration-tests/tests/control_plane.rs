//! ztunnels configured by istiod-lite: two network namespaces, a ztunnel in
//! each taking its workloads and policies over delta xDS and its certificate
//! from istiod-lite's CA, and istiod-lite on a directory of YAML. Changes to
//! the directory reach the data path within a second; with istiod-lite gone
//! the mesh keeps working; restarted, it re-syncs; and its CA refuses an
//! identity that has no pod on the caller's node.
//!
//! The namespace is STRICT (a PeerAuthentication), so the server app is
//! reachable only over HBONE, never by plaintext passthrough.
//!
//! istiod-lite runs in the server namespace (the test's "control-plane
//! host"), so the server's inbound capture leaves its port alone; the client
//! ztunnel reaches it with its own socket mark, like its other traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::{ECHO_PORT, expect_refused, http_get, metric, start_ztunnel};
use mesh_core::Identity;
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::tls::{CertificateSource, IstioCaClient};
use mesh_testkit::{ChildGuard, EchoServer, Netns, TwoHosts, echo_roundtrip, eventually};

const GRPC_PORT: u16 = 15012;
const ADMIN_PORT: u16 = 15014;
/// The bound for a change on disk to reach the data path.
const PROPAGATION: Duration = Duration::from_secs(1);

struct ControlMesh {
    hosts: TwoHosts,
    dir: tempfile::TempDir,
    istiod: Option<ChildGuard>,
    client_ztunnel: ChildGuard,
    server_ztunnel: ChildGuard,
    _echo: EchoServer,
}

impl ControlMesh {
    fn resources(&self) -> PathBuf {
        self.dir.path().join("resources")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn write(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.resources().join(file))?;
        Ok(())
    }

    fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.resources().join(file))?;
        Ok(())
    }

    async fn start() -> Result<ControlMesh> {
        mesh_testkit::require_root();
        let hosts = TwoHosts::new("ctrlplane")?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("resources"))?;
        std::fs::write(
            dir.path().join("resources/base.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {{istio.io/dataplane-mode: ambient}}\n\
                 ---\napiVersion: v1\nkind: Node\nmetadata: {{name: client-node}}\n\
                 ---\napiVersion: v1\nkind: Node\nmetadata: {{name: server-node}}\n\
                 ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: default}}\nspec: {{mtls: {{mode: STRICT}}}}\n\
                 ---\n{}",
                pod_yaml("client", "client-node", &hosts.client_v4.to_string())
            ),
        )?;

        // Capture: the client's outbound TCP to 15001 (ztunnel's own sockets
        // carry its mark), the server's inbound to 15006 except HBONE and the
        // control plane's port.
        hosts.client.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "!",
                "-d",
                "127.0.0.1/32",
                "-m",
                "mark",
                "!",
                "--mark",
                "0x539/0xfff",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
        )?;
        for port in ["15008", "15012"] {
            hosts.server.exec(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "--dport",
                    port,
                    "-j",
                    "RETURN",
                ],
            )?;
        }
        hosts.server.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ],
        )?;
        let echo = EchoServer::start(
            hosts
                .server
                .tcp_listener(SocketAddr::new([0, 0, 0, 0].into(), ECHO_PORT))?,
        );

        let istiod = start_istiod(&hosts.server, dir.path())?;
        wait_istiod_ready(&hosts.server, &istiod, dir.path()).await?;

        let tokens: BTreeMap<String, String> =
            serde_yaml_tokens(&dir.path().join("state/node-tokens.yaml"))?;
        for node in ["client-node", "server-node"] {
            let token = tokens
                .get(node)
                .with_context(|| format!("no token for {node}"))?;
            std::fs::write(dir.path().join(format!("{node}.token")), token)?;
        }
        let config = |workload: &str, node: &str, address: &str| {
            format!(
                "proxy:\n  workload: default/{workload}\n  workerThreads: 1\n  drainDeadline: 2s\n\
                 \x20 certificates:\n    controlPlane:\n      address: {address}\n      serverName: istiod.istio-system.svc\n\
                 \x20     rootCert: state/root-cert.pem\n      tokenFile: {node}.token\n      impersonate: true\n      ttl: 1h\n\
                 \x20 xds:\n    address: {address}\n    serverName: istiod.istio-system.svc\n    rootCert: state/root-cert.pem\n\
                 \x20   tokenFile: {node}.token\n    nodeName: {node}\n"
            )
        };
        std::fs::write(
            dir.path().join("client.yaml"),
            config(
                "client",
                "client-node",
                &format!("https://{}:{GRPC_PORT}", hosts.server_v4),
            ),
        )?;
        std::fs::write(
            dir.path().join("server.yaml"),
            config(
                "server",
                "server-node",
                &format!("https://127.0.0.1:{GRPC_PORT}"),
            ),
        )?;
        let bin = integration_tests::ztunnel_binary();
        let bin = bin.to_str().context("path")?;
        let server_ztunnel = start_ztunnel(&hosts.server, bin, dir.path(), "server")?;
        let client_ztunnel = start_ztunnel(&hosts.client, bin, dir.path(), "client")?;
        let mesh = ControlMesh {
            hosts,
            dir,
            istiod: Some(istiod),
            client_ztunnel,
            server_ztunnel,
            _echo: echo,
        };
        mesh.wait_synced(&mesh.hosts.client, "client").await?;
        mesh.wait_synced(&mesh.hosts.server, "server").await?;
        Ok(mesh)
    }

    fn log(&self, side: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{side}.log"))).unwrap_or_default()
    }

    /// Synced means the ztunnel's xDS client has applied both types once:
    /// it is ready, or waits only for its own workload to appear.
    async fn wait_synced(&self, ns: &Netns, side: &str) -> Result<()> {
        let guard = if side == "server" {
            &self.server_ztunnel
        } else {
            &self.client_ztunnel
        };
        eventually(
            &format!("{side} ztunnel synced with istiod-lite"),
            Duration::from_secs(20),
            || async {
                if !guard.is_running() {
                    bail!("{side} ztunnel exited: {}", self.log(side));
                }
                let (status, body) =
                    http_get(ns, "127.0.0.1:15021".parse()?, "/healthz/ready").await?;
                let waits_for_workload =
                    body.contains("workload certificate") && !body.contains("xDS sync");
                anyhow::ensure!(
                    status == 200 || waits_for_workload,
                    "status {status}: {body}"
                );
                Ok(())
            },
        )
        .await
    }

    /// A client app connection to the server app, echoed once.
    async fn echo_once(&self) -> Result<()> {
        let mut s = self
            .hosts
            .client
            .tcp_connect(SocketAddr::new(self.hosts.server_v4, ECHO_PORT))
            .await?;
        tokio::time::timeout(
            Duration::from_secs(1),
            echo_roundtrip(&mut s, b"hello through the mesh"),
        )
        .await
        .context("no echo within 1 s")??;
        Ok(())
    }

    /// The server app cannot be reached: the connection is refused, or
    /// nothing comes back.
    async fn unreachable(&self) -> Result<()> {
        match self.echo_once().await {
            Ok(()) => bail!("the server app answered"),
            Err(_) => Ok(()),
        }
    }

    async fn refused(&self) -> Result<()> {
        expect_refused(
            self.hosts
                .client
                .tcp_connect(SocketAddr::new(self.hosts.server_v4, ECHO_PORT)),
        )
        .await
    }

    async fn istiod_metrics(&self) -> Result<String> {
        let (status, body) = http_get(
            &self.hosts.server,
            SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
            "/metrics",
        )
        .await?;
        anyhow::ensure!(status == 200, "istiod-lite metrics status {status}");
        Ok(body)
    }

    async fn ztunnel_metrics(&self, ns: &Netns) -> Result<String> {
        let (_, body) = http_get(ns, "127.0.0.1:15020".parse()?, "/metrics").await?;
        Ok(body)
    }
}

fn pod_yaml(name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: {name}}}\n\
         spec:\n  nodeName: {node}\n  serviceAccountName: {name}\n  containers: [{{name: app, image: app}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

fn serde_yaml_tokens(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut tokens = BTreeMap::new();
    for line in text.lines() {
        if let Some((node, token)) = line.split_once(':') {
            let token = token.trim().trim_matches(['\'', '"']);
            if !node.starts_with('#') && !token.is_empty() {
                tokens.insert(node.trim().to_string(), token.to_string());
            }
        }
    }
    Ok(tokens)
}

fn start_istiod(ns: &Netns, dir: &Path) -> Result<ChildGuard> {
    let bin = integration_tests::workspace_binary("istiod-lite");
    let resources = dir.join("resources");
    let state = dir.join("state");
    ns.spawn_with(
        bin.to_str().context("path")?,
        &[
            "--dir",
            resources.to_str().context("path")?,
            "--state-dir",
            state.to_str().context("path")?,
            "--grpc-listen",
            &format!("0.0.0.0:{GRPC_PORT}"),
            "--admin-listen",
            &format!("127.0.0.1:{ADMIN_PORT}"),
            "--cert-ttl",
            "1h",
        ],
        &[],
        Some(&dir.join("istiod.log")),
    )
}

async fn wait_istiod_ready(ns: &Netns, istiod: &ChildGuard, dir: &Path) -> Result<()> {
    eventually("istiod-lite ready", Duration::from_secs(20), || async {
        if !istiod.is_running() {
            bail!(
                "istiod-lite exited: {}",
                std::fs::read_to_string(dir.join("istiod.log")).unwrap_or_default()
            );
        }
        let (status, body) =
            http_get(ns, SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), "/ready").await?;
        anyhow::ensure!(status == 200, "status {status}: {body}");
        Ok(())
    })
    .await
}

/// Waits for `check` and returns how long it took; fails past `PROPAGATION`
/// (plus a margin for the probe itself).
async fn within_propagation<F, Fut>(what: &str, check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    eventually(what, PROPAGATION + Duration::from_secs(2), check).await?;
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    anyhow::ensure!(
        took <= PROPAGATION + Duration::from_millis(500),
        "{what} took {took:?}"
    );
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_lite_configures_two_ztunnels_and_survives_its_own_restart() -> Result<()> {
    let mesh = ControlMesh::start().await?;

    // The server pod is not in the registry yet: nothing reaches it.
    mesh.unreachable().await?;

    // Adding its YAML makes it reachable over HBONE.
    mesh.write(
        "server.yaml",
        &pod_yaml("server", "server-node", &mesh.hosts.server_v4.to_string()),
    )?;
    within_propagation("server pod reachable after its YAML is added", || {
        mesh.echo_once()
    })
    .await?;
    let server_metrics = mesh.ztunnel_metrics(&mesh.hosts.server).await?;
    assert!(
        metric(
            &server_metrics,
            "istio_tcp_connections_opened_total",
            &[
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/client"
                ),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0,
        "server metrics: {server_metrics}"
    );

    // A DENY policy blocks it.
    mesh.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/client]}\n",
    )?;
    within_propagation("DENY policy enforced", || mesh.refused()).await?;
    mesh.remove("deny.yaml")?;
    within_propagation("DENY policy removed", || mesh.echo_once()).await?;

    // Deleting the pod's file removes it.
    mesh.remove("server.yaml")?;
    within_propagation("server pod gone after its file is deleted", || {
        mesh.refused()
    })
    .await?;
    mesh.write(
        "server.yaml",
        &pod_yaml("server", "server-node", &mesh.hosts.server_v4.to_string()),
    )?;
    within_propagation("server pod back", || mesh.echo_once()).await?;

    // The CA refuses an identity with no pod on the caller's node, and counts it.
    let refused_before = metric(
        &mesh.istiod_metrics().await?,
        "istiod_ca_certificates_refused_total",
        &[("reason", "not_on_node")],
    );
    let root = std::fs::read(mesh.state().join("root-cert.pem"))?;
    let token = std::fs::read_to_string(mesh.dir.path().join("client-node.token"))?;
    let server_ip = mesh.hosts.server_v4;
    let outcome = mesh.hosts.client.try_run(move || -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let control = ControlPlane {
                address: format!("https://{server_ip}:{GRPC_PORT}"),
                server_name: Some("istiod.istio-system.svc".into()),
                roots: mesh_core::tls::parse_certs(&root, "root")?,
                token: Some(TokenSource::Literal(token)),
                cluster_id: "Kubernetes".into(),
                headers: vec![],
                mark: Some(integration_tests::MARK),
            };
            let client = IstioCaClient::new(control, true, Duration::from_secs(3600));
            let server = Identity::new("cluster.local", "default", "server")?;
            match client.fetch(&server).await {
                Ok(_) => bail!("the CA issued a certificate for a pod on another node"),
                Err(e) => Ok(e.to_string()),
            }
        })
    })??;
    assert!(
        outcome.contains("node"),
        "refusal names the node: {outcome}"
    );
    let refused_after = metric(
        &mesh.istiod_metrics().await?,
        "istiod_ca_certificates_refused_total",
        &[("reason", "not_on_node")],
    );
    assert_eq!(refused_after, refused_before + 1.0);

    // istiod-lite killed: an open connection and new connections keep working.
    let mut open = mesh
        .hosts
        .client
        .tcp_connect(SocketAddr::new(mesh.hosts.server_v4, ECHO_PORT))
        .await?;
    echo_roundtrip(&mut open, b"before the control plane goes").await?;
    let mut mesh = mesh;
    let istiod = mesh.istiod.take().context("istiod running")?;
    istiod.kill()?;
    drop(istiod);
    echo_roundtrip(&mut open, b"while the control plane is gone").await?;
    mesh.echo_once().await?;
    mesh.echo_once().await?;

    // Restarted on the same state directory, it re-syncs both ztunnels: a
    // change made after the restart reaches the data path.
    let istiod = start_istiod(&mesh.hosts.server, mesh.dir.path())?;
    wait_istiod_ready(&mesh.hosts.server, &istiod, mesh.dir.path()).await?;
    mesh.istiod = Some(istiod);
    eventually(
        "both ztunnels reconnected to the restarted istiod-lite",
        Duration::from_secs(30),
        || async {
            let m = mesh.istiod_metrics().await?;
            let clients = metric_plain(&m, "istiod_xds_clients");
            anyhow::ensure!(clients >= 2.0, "{clients} xDS clients");
            Ok(())
        },
    )
    .await?;
    mesh.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - {}\n",
    )?;
    within_propagation("a policy added after the restart is enforced", || {
        mesh.refused()
    })
    .await?;
    Ok(())
}

/// A metric without labels.
fn metric_plain(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
