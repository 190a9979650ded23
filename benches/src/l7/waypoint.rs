//! Ambit's waypoint in its slot: istiod-lite in directory mode (the benchmark's
//! cluster as Kubernetes YAML, signing with the benchmark's CA root) serves it its
//! config over xDS and its certificate; the waypoint runs in the server namespace on the
//! waypoint pod's address, pinned to the server CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_testkit::{ChildGuard, Netns, eventually};
use serde::Serialize;

use super::layout::{
    CLIENT, GRPC_PORT, GRPC_SERVICE_PORT, HBONE_PORT, HTTP_PORT, HTTP_SERVICE_PORT, ISTIOD_ADMIN,
    ISTIOD_GRPC, NAMESPACE, SERVER, SERVICE, SERVICE_VIP, TRUST_DOMAIN, WAYPOINT, WAYPOINT_ADMIN,
    WAYPOINT_IP, WAYPOINT_VIP, spiffe_id,
};
use super::scenario::Settings;
use crate::prom::{self, Sample};
use crate::topology::{self, SERVER_CPU, Topology};
use crate::ztunnel::config::CaFiles;
use crate::{http, ztunnel};

/// The nodes of the benchmark's cluster: one per namespace.
pub const CLIENT_NODE: &str = "client-node";
pub const SERVER_NODE: &str = "server-node";

/// The waypoint's request counter.
pub const REQUESTS: &str = "istio_requests_total";

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// istiod-lite and the waypoint, killed (waypoint first) when dropped.
#[derive(Debug)]
pub struct WaypointRun {
    waypoint: ChildGuard,
    _istiod: ChildGuard,
    waypoint_log: PathBuf,
    istiod_log: PathBuf,
}

impl WaypointRun {
    pub fn pid(&self) -> u32 {
        self.waypoint.pid()
    }

    /// The waypoint's `/metrics`, fetched from inside `ns`.
    pub fn metrics(&self, ns: &Netns) -> Result<Vec<Sample>> {
        let response = get(ns, WAYPOINT_ADMIN, "/metrics")?;
        if response.status != 200 {
            bail!("the waypoint's /metrics answered {}", response.status);
        }
        Ok(prom::parse(&response.body)?)
    }

    pub fn log_tails(&self) -> String {
        let tail = |p: &Path| {
            format!(
                "{} (full log: {})",
                topology::tail(&std::fs::read_to_string(p).unwrap_or_default(), 3000),
                p.display()
            )
        };
        format!(
            "{}\nistiod-lite: {}",
            tail(&self.waypoint_log),
            tail(&self.istiod_log)
        )
    }
}

fn get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<http::Response> {
    Ok(ns.try_run(|| http::get(addr, path, HTTP_TIMEOUT))??)
}

/// The benchmark's cluster as Kubernetes objects (one YAML stream): the two nodes, the
/// client, backend and waypoint pods (with status IPs), the backend Service bound to
/// the waypoint (`istio.io/use-waypoint`), the waypoint's Service and Gateway, and an
/// HTTPRoute and a GRPCRoute attached to the backend Service.
pub fn cluster_yaml(client_ip: std::net::IpAddr, server_ip: std::net::IpAddr) -> String {
    let pod = |name: &str, node: &str, ip: String, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  \
             labels: {{{labels}}}\nspec:\n  serviceAccountName: {name}\n  nodeName: {node}\n  \
             containers: [{{name: app, image: ambit}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n  \
             podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        )
    };
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    let docs = [
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels: \
             {{istio.io/dataplane-mode: ambient}}\n"
        ),
        node(CLIENT_NODE),
        node(SERVER_NODE),
        pod(CLIENT, CLIENT_NODE, client_ip.to_string(), "app: client"),
        pod(SERVER, SERVER_NODE, server_ip.to_string(), "app: server"),
        pod(
            WAYPOINT,
            SERVER_NODE,
            WAYPOINT_IP.to_string(),
            &format!(
                "gateway.networking.k8s.io/gateway-name: {WAYPOINT}, istio.io/dataplane-mode: none"
            ),
        ),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SERVICE}\n  namespace: {NAMESPACE}\n  \
             labels: {{istio.io/use-waypoint: {WAYPOINT}}}\nspec:\n  clusterIP: {SERVICE_VIP}\n  \
             selector: {{app: server}}\n  ports:\n  \
             - {{name: http, port: {HTTP_SERVICE_PORT}, targetPort: {HTTP_PORT}, appProtocol: http}}\n  \
             - {{name: grpc, port: {GRPC_SERVICE_PORT}, targetPort: {GRPC_PORT}, appProtocol: grpc}}\n"
        ),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {WAYPOINT}\n  namespace: {NAMESPACE}\n\
             spec:\n  clusterIP: {WAYPOINT_VIP}\n  \
             selector: {{gateway.networking.k8s.io/gateway-name: {WAYPOINT}}}\n  ports:\n  \
             - {{name: mesh, port: {HBONE_PORT}, targetPort: {HBONE_PORT}, appProtocol: HBONE}}\n"
        ),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {WAYPOINT}\n  \
             namespace: {NAMESPACE}\n  labels: {{istio.io/waypoint-for: service}}\nspec:\n  \
             gatewayClassName: istio-waypoint\n  listeners:\n  \
             - {{name: mesh, port: {HBONE_PORT}, protocol: HBONE}}\n"
        ),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {SERVICE}-http\n  \
             namespace: {NAMESPACE}\nspec:\n  parentRefs:\n  \
             - {{group: \"\", kind: Service, name: {SERVICE}, port: {HTTP_SERVICE_PORT}}}\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    \
             backendRefs: [{{name: {SERVICE}, port: {HTTP_SERVICE_PORT}}}]\n"
        ),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {SERVICE}-grpc\n  \
             namespace: {NAMESPACE}\nspec:\n  parentRefs:\n  \
             - {{group: \"\", kind: Service, name: {SERVICE}, port: {GRPC_SERVICE_PORT}}}\n  rules:\n  \
             - backendRefs: [{{name: {SERVICE}, port: {GRPC_SERVICE_PORT}}}]\n"
        ),
    ];
    docs.join("---\n")
}

/// Starts istiod-lite (server namespace, loopback, server CPU) and the waypoint, and
/// waits until the waypoint is ready.
pub async fn start(
    topo: &Topology,
    settings: &Settings,
    ca: &CaFiles,
    dir: &Path,
    patience: Duration,
) -> Result<WaypointRun> {
    let server = topo.server();
    let resources = dir.join("cluster/resources");
    let state = dir.join("cluster/state");
    std::fs::create_dir_all(&resources)
        .with_context(|| format!("creating {}", resources.display()))?;
    std::fs::write(
        resources.join("bench.yaml"),
        cluster_yaml(topo.client_ip(), topo.server_ip()),
    )
    .context("writing the cluster's resources")?;
    let istiod_log = dir.join("istiod-lite.log");
    let s = |p: &Path| p.display().to_string();
    let istiod = topology::spawn_pinned(
        server,
        SERVER_CPU,
        &settings.istiod,
        &[
            "--dir",
            &s(&resources),
            "--state-dir",
            &s(&state),
            "--grpc-listen",
            &ISTIOD_GRPC.to_string(),
            "--admin-listen",
            &ISTIOD_ADMIN.to_string(),
            "--root-cert",
            &s(&ca.cert),
            "--root-key",
            &s(&ca.key),
            "--trust-domain",
            TRUST_DOMAIN,
        ],
        &istiod_log,
    )?;
    eventually("istiod-lite ready", patience, || async {
        if let Some(status) = istiod.wait_timeout(Duration::ZERO)? {
            bail!("istiod-lite exited ({status})");
        }
        let r = get(server, ISTIOD_ADMIN, "/ready")?;
        if r.status != 200 {
            bail!("/ready answered {}", r.status);
        }
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "istiod-lite's log: {}",
            topology::tail(
                &std::fs::read_to_string(&istiod_log).unwrap_or_default(),
                3000
            )
        )
    })?;

    // The server node's token stands in for the waypoint pod's service account token.
    let tokens: std::collections::BTreeMap<String, String> = serde_yaml::from_str(
        &std::fs::read_to_string(state.join("node-tokens.yaml"))
            .context("reading istiod-lite's node tokens")?,
    )
    .context("parsing istiod-lite's node-tokens.yaml")?;
    let token = tokens
        .get(SERVER_NODE)
        .with_context(|| format!("istiod-lite made no token for {SERVER_NODE}"))?;
    let token_file = dir.join("waypoint.token");
    std::fs::write(&token_file, token).context("writing the waypoint's token")?;

    let waypoint_log = dir.join("waypoint.log");
    let listen = SocketAddr::new(WAYPOINT_IP, HBONE_PORT).to_string();
    let xds = format!("https://{ISTIOD_GRPC}");
    let waypoint = topology::spawn_pinned(
        server,
        SERVER_CPU,
        &settings.waypoint,
        &[
            "--gateway-name",
            WAYPOINT,
            "--gateway-namespace",
            NAMESPACE,
            "--xds-address",
            &xds,
            "--xds-server-name",
            "localhost",
            "--root-cert",
            &s(&ca.cert),
            "--token-file",
            &s(&token_file),
            "--trust-domain",
            TRUST_DOMAIN,
            "--pod-name",
            WAYPOINT,
            "--node-name",
            SERVER_NODE,
            "--instance-ip",
            &WAYPOINT_IP.to_string(),
            "--listen",
            &listen,
            "--admin",
            &WAYPOINT_ADMIN.to_string(),
        ],
        &waypoint_log,
    )?;
    let run = WaypointRun {
        waypoint,
        _istiod: istiod,
        waypoint_log,
        istiod_log,
    };
    eventually("the waypoint ready", patience, || async {
        if let Some(status) = run.waypoint.wait_timeout(Duration::ZERO)? {
            bail!("the waypoint exited ({status})");
        }
        let r = get(server, WAYPOINT_ADMIN, "/ready")?;
        if r.status != 200 {
            bail!("/ready answered {}: {}", r.status, r.body.trim());
        }
        Ok(())
    })
    .await
    .with_context(|| format!("the waypoint's log: {}", run.log_tails()))?;
    Ok(run)
}

/// What the waypoint's and the server ztunnel's counters say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaypointProof {
    /// `istio_requests_total`, all labels.
    pub requests: f64,
    /// The same, with the client's principal as `source_principal`.
    pub requests_from_client: f64,
    /// Connections the server ztunnel accepted from the waypoint's identity.
    pub server_ztunnel_from_waypoint: f64,
}

/// Fails unless the waypoint counted every answered request (warm-up requests make its
/// count higher), from the client's identity, and the server ztunnel accepted mTLS
/// connections from the waypoint's identity.
pub fn verify(
    waypoint: &[Sample],
    server_ztunnel: &[Sample],
    answered: u64,
) -> Result<WaypointProof> {
    let client = spiffe_id(CLIENT);
    let client_principal = client.trim_start_matches("spiffe://");
    let proof = WaypointProof {
        requests: prom::sum(waypoint, REQUESTS, &[]),
        requests_from_client: prom::sum(waypoint, REQUESTS, &[("source_principal", &client)])
            + prom::sum(
                waypoint,
                REQUESTS,
                &[("source_principal", client_principal)],
            ),
        server_ztunnel_from_waypoint: prom::sum(
            server_ztunnel,
            ztunnel::OPENED,
            &[
                ("source_principal", &spiffe_id(WAYPOINT)),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) + prom::sum(
            server_ztunnel,
            ztunnel::OPENED,
            &[
                (
                    "source_principal",
                    spiffe_id(WAYPOINT).trim_start_matches("spiffe://"),
                ),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
    };
    if proof.requests < answered as f64 {
        bail!(
            "traffic bypassed the waypoint: its {REQUESTS} is {}, the client had {answered} \
             requests answered",
            proof.requests
        );
    }
    if proof.requests_from_client <= 0.0 {
        bail!("the waypoint counted no request with the client's principal {client}");
    }
    if proof.server_ztunnel_from_waypoint <= 0.0 {
        bail!(
            "the server ztunnel accepted no mTLS connection from the waypoint's identity {}",
            spiffe_id(WAYPOINT)
        );
    }
    Ok(proof)
}
