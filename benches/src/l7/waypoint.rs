//! Ambit's waypoint in its slot: istiod-lite in directory mode (the benchmark's
//! cluster as Kubernetes YAML, signing with the benchmark's CA root) serves it its
//! config over xDS and its certificate; the waypoint runs in the server namespace on the
//! waypoint pod's address, pinned to the server CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_testkit::{ChildGuard, Netns, eventually};
use serde::{Deserialize, Serialize};

use super::layout::{
    CLIENT, GRPC_PORT, GRPC_SERVICE_PORT, HBONE_PORT, HTTP_PORT, HTTP_SERVICE_PORT, ISTIOD_ADMIN,
    ISTIOD_GRPC, NAMESPACE, SERVER, SERVICE, SERVICE_VIP, TRUST_DOMAIN, WAYPOINT, WAYPOINT_ADMIN,
    WAYPOINT_IP, spiffe_id,
};
use super::scenario::Settings;
use crate::prom::{self, Sample};
use crate::topology::{self, SERVER_CPU, Topology};
use crate::ztunnel::config::CaFiles;
use crate::{http, ztunnel};

/// The nodes of the benchmark's cluster: one per namespace. istiod-lite places a
/// provisioned waypoint on the node with the fewest pods, ties broken by name: the
/// server's node sorts first so the waypoint's pod is on the node it runs on.
pub const SERVER_NODE: &str = "node-1";
pub const CLIENT_NODE: &str = "node-2";
/// The file istiod-lite writes its provisioned waypoint objects to (directory mode).
pub const GENERATED_FILE: &str = "ambit-waypoints.generated.yaml";
/// The pod status file, as the local cluster's pod runner writes it.
pub const STATUS_FILE: &str = "ambit-pods.status.yaml";

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
/// client and backend pods (with status IPs), the backend Service bound to the
/// waypoint (`istio.io/use-waypoint`), the waypoint's Gateway, and an HTTPRoute and a
/// GRPCRoute attached to the backend Service. istiod-lite provisions the waypoint's
/// Pod, Service and ServiceAccount from the Gateway; [`waypoint_status`] is its pod
/// status.
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
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SERVICE}\n  namespace: {NAMESPACE}\n  \
             labels: {{istio.io/use-waypoint: {WAYPOINT}}}\nspec:\n  clusterIP: {SERVICE_VIP}\n  \
             selector: {{app: server}}\n  ports:\n  \
             - {{name: http, port: {HTTP_SERVICE_PORT}, targetPort: {HTTP_PORT}, appProtocol: http}}\n  \
             - {{name: grpc, port: {GRPC_SERVICE_PORT}, targetPort: {GRPC_PORT}, appProtocol: grpc}}\n"
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

/// The waypoint pod's status document (Running, Ready, 10.1.1.3), as the pod runner
/// publishes it for a pod it started.
pub fn waypoint_status() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {WAYPOINT}\n  namespace: {NAMESPACE}\n\
         status:\n  phase: Running\n  podIP: {WAYPOINT_IP}\n  podIPs: [{{ip: {WAYPOINT_IP}}}]\n  \
         conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

/// The node istiod-lite placed the waypoint pod on, from its generated file.
pub fn provisioned_node(generated: &str) -> Result<String> {
    for doc in serde_yaml::Deserializer::from_str(generated) {
        let value = serde_yaml::Value::deserialize(doc).context("parsing the generated file")?;
        if value["kind"].as_str() == Some("Pod")
            && value["metadata"]["name"].as_str() == Some(WAYPOINT)
        {
            return value["spec"]["nodeName"]
                .as_str()
                .map(str::to_string)
                .context("the provisioned waypoint pod has no spec.nodeName");
        }
    }
    bail!("istiod-lite's generated file has no waypoint pod yet")
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

    // istiod-lite provisions the waypoint pod from the Gateway; the pod "runs" here,
    // so its status (address 10.1.1.3) is published as the pod runner would.
    let generated = resources.join(GENERATED_FILE);
    let node = eventually(
        "istiod-lite provisioning the waypoint pod",
        patience,
        || async { provisioned_node(&std::fs::read_to_string(&generated).unwrap_or_default()) },
    )
    .await?;
    std::fs::write(resources.join(STATUS_FILE), waypoint_status())
        .context("writing the waypoint pod's status")?;

    // Its node's token stands in for the waypoint pod's service account token.
    let tokens: std::collections::BTreeMap<String, String> = serde_yaml::from_str(
        &std::fs::read_to_string(state.join("node-tokens.yaml"))
            .context("reading istiod-lite's node tokens")?,
    )
    .context("parsing istiod-lite's node-tokens.yaml")?;
    let token = tokens
        .get(&node)
        .with_context(|| format!("istiod-lite made no token for {node}"))?;
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
            &node,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_leaves_the_waypoint_pod_to_provisioning() {
        let text = cluster_yaml("10.1.1.1".parse().unwrap(), "10.1.1.2".parse().unwrap());
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "Node",
                "Node",
                "Pod",
                "Pod",
                "Service",
                "Gateway",
                "HTTPRoute",
                "GRPCRoute"
            ]
        );
        let service = &docs[5];
        assert_eq!(
            service["metadata"]["labels"]["istio.io/use-waypoint"].as_str(),
            Some("waypoint")
        );
        assert_eq!(service["spec"]["clusterIP"].as_str(), Some("10.96.0.10"));
        assert_eq!(
            service["spec"]["ports"][1]["appProtocol"].as_str(),
            Some("grpc")
        );
        assert_eq!(
            docs[6]["spec"]["gatewayClassName"].as_str(),
            Some("istio-waypoint")
        );
        assert_eq!(docs[4]["status"]["podIP"].as_str(), Some("10.1.1.2"));
        assert_eq!(docs[4]["spec"]["nodeName"].as_str(), Some(SERVER_NODE));
        let status: serde_yaml::Value = serde_yaml::from_str(&waypoint_status()).unwrap();
        assert_eq!(status["status"]["podIP"].as_str(), Some("10.1.1.3"));
        assert_eq!(status["metadata"]["name"].as_str(), Some("waypoint"));
    }

    #[test]
    fn node_of_the_provisioned_pod() {
        let generated = "# header\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: waypoint}\n\
                         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: waypoint, namespace: bench}\n\
                         spec: {nodeName: node-1}\n";
        assert_eq!(provisioned_node(generated).unwrap(), "node-1");
        assert!(provisioned_node("").is_err());
    }

    #[test]
    fn proof_needs_requests_the_client_principal_and_the_waypoint_identity() {
        let wp = prom::parse(
            "istio_requests_total{source_principal=\"spiffe://cluster.local/ns/bench/sa/client\",response_code=\"200\"} 120\n",
        )
        .unwrap();
        let zt = prom::parse(
            "istio_tcp_connections_opened_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/bench/sa/waypoint\",connection_security_policy=\"mutual_tls\"} 3\n",
        )
        .unwrap();
        let proof = verify(&wp, &zt, 100).unwrap();
        assert_eq!(proof.requests, 120.0);
        assert_eq!(proof.server_ztunnel_from_waypoint, 3.0);
        let err = verify(&wp, &zt, 500).unwrap_err();
        assert!(err.to_string().contains("bypassed the waypoint"), "{err}");
        assert!(verify(&wp, &[], 100).is_err());
    }
}
