//! The ztunnel config files of the benchmark (the subset of ztunnel's YAML format it
//! needs: `proxy` and `workloads`), and the CA root they share.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// The mark ztunnel puts on its own sockets (`proxy.packetMark`), which the redirect
/// rule exempts. Written explicitly into the configs so the two stay in step.
pub const PACKET_MARK: u32 = 0x539;
/// The namespace of both benchmark workloads.
pub const NAMESPACE: &str = "bench";
/// The client workload's name and service account.
pub const CLIENT: &str = "client";
/// The server workload's name and service account.
pub const SERVER: &str = "server";

/// How the client ztunnel reaches the server workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TunnelProtocol {
    /// An mTLS HBONE tunnel to the server's port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
    /// Plain TCP straight to the server workload.
    #[serde(rename = "NONE")]
    None,
}

/// A ztunnel config file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZtunnelConfig {
    pub proxy: Proxy,
    pub workloads: Vec<Workload>,
    /// Services with VIPs (the L7 benchmark's clients call a VIP).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    /// `namespace/name` of the workload this ztunnel serves.
    pub workload: String,
    pub certificates: Certificates,
    pub packet_mark: u32,
    /// Listener addresses, when the defaults would collide with another proxy in the
    /// same namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Listeners>,
}

/// `proxy.listeners`: only the ones set are written.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<String>,
}

/// A service port and the workload port it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMap {
    pub service_port: u16,
    pub target_port: u16,
}

/// A service with VIPs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortMap>,
    /// The waypoint this service's traffic must pass through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointRef>,
}

/// A waypoint named by its Service (ztunnel's `waypoint: {hostname, hboneMtlsPort}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaypointRef {
    pub hostname: NamespacedHostname,
    pub hbone_mtls_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Certificates {
    pub ca: CaFiles,
}

/// A CA root: PEM certificate and PKCS#8 PEM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub addresses: Vec<IpAddr>,
    pub tunnel_protocol: TunnelProtocol,
    /// The services this workload is an endpoint of: `namespace/hostname` -> ports.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Vec<PortMap>>,
}

/// Which side a ztunnel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// The workload name (and service account) of this side.
    pub fn workload(self) -> &'static str {
        match self {
            Side::Client => CLIENT,
            Side::Server => SERVER,
        }
    }
}

/// The config of the ztunnel serving `side`. Both sides' configs list both workloads,
/// with the server's tunnel protocol as given (the client's is always HBONE), and the
/// same CA.
pub fn ztunnel_config(
    side: Side,
    ca: &CaFiles,
    client_ip: IpAddr,
    server_ip: IpAddr,
    server_tunnel: TunnelProtocol,
) -> ZtunnelConfig {
    let workload = |name: &str, ip, tunnel_protocol| Workload {
        name: name.to_string(),
        namespace: NAMESPACE.to_string(),
        service_account: name.to_string(),
        addresses: vec![ip],
        tunnel_protocol,
        services: BTreeMap::new(),
    };
    ZtunnelConfig {
        proxy: Proxy {
            workload: format!("{NAMESPACE}/{}", side.workload()),
            certificates: Certificates { ca: ca.clone() },
            packet_mark: PACKET_MARK,
            listeners: None,
        },
        workloads: vec![
            workload(CLIENT, client_ip, TunnelProtocol::Hbone),
            workload(SERVER, server_ip, server_tunnel),
        ],
        services: Vec::new(),
    }
}

impl ZtunnelConfig {
    /// The config as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).context("serializing a ztunnel config")
    }
}

/// Creates a self-signed CA root in `dir` with `openssl`: ECDSA P-256,
/// `basicConstraints=critical,CA:TRUE`, `keyUsage=critical,keyCertSign,cRLSign`, valid
/// for 30 days; the key is written as unencrypted PKCS#8 PEM.
pub fn make_root_ca(dir: &Path) -> Result<CaFiles> {
    let files = CaFiles {
        cert: dir.join("root.pem"),
        key: dir.join("root.key"),
    };
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .args(["-subj", "/O=ambit-bench/CN=ambit-bench root"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()
        .context("running openssl (apt-get install -y openssl) to make the CA root")?;
    if !output.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let key = std::fs::read_to_string(&files.key)
        .with_context(|| format!("reading {}", files.key.display()))?;
    if !key.starts_with("-----BEGIN PRIVATE KEY-----") {
        bail!(
            "openssl wrote {} in a format other than PKCS#8 PEM",
            files.key.display()
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn ca() -> CaFiles {
        CaFiles {
            cert: "/w/root.pem".into(),
            key: "/w/root.key".into(),
        }
    }

    fn ips() -> (IpAddr, IpAddr) {
        ("10.1.1.1".parse().unwrap(), "10.1.1.2".parse().unwrap())
    }

    /// Parses the YAML back generically, so the check is on ztunnel's key names and
    /// value spellings rather than on our own structs.
    fn yaml(side: Side, tunnel: TunnelProtocol) -> Value {
        let (c, s) = ips();
        let text = ztunnel_config(side, &ca(), c, s, tunnel).to_yaml().unwrap();
        serde_yaml::from_str(&text).unwrap()
    }

    #[test]
    fn client_config_for_the_plain_hop() {
        let v = yaml(Side::Client, TunnelProtocol::None);
        assert_eq!(v["proxy"]["workload"].as_str(), Some("bench/client"));
        assert_eq!(v["proxy"]["packetMark"].as_u64(), Some(1337));
        assert_eq!(
            v["proxy"]["certificates"]["ca"]["cert"].as_str(),
            Some("/w/root.pem")
        );
        assert_eq!(
            v["proxy"]["certificates"]["ca"]["key"].as_str(),
            Some("/w/root.key")
        );
        let workloads = v["workloads"].as_sequence().unwrap();
        assert_eq!(workloads.len(), 2);
        let client = &workloads[0];
        assert_eq!(client["name"].as_str(), Some("client"));
        assert_eq!(client["namespace"].as_str(), Some("bench"));
        assert_eq!(client["serviceAccount"].as_str(), Some("client"));
        assert_eq!(client["addresses"][0].as_str(), Some("10.1.1.1"));
        assert_eq!(client["tunnelProtocol"].as_str(), Some("HBONE"));
        let server = &workloads[1];
        assert_eq!(server["name"].as_str(), Some("server"));
        assert_eq!(server["serviceAccount"].as_str(), Some("server"));
        assert_eq!(server["addresses"][0].as_str(), Some("10.1.1.2"));
        assert_eq!(server["tunnelProtocol"].as_str(), Some("NONE"));
    }

    #[test]
    fn server_config_for_hbone() {
        let v = yaml(Side::Server, TunnelProtocol::Hbone);
        assert_eq!(v["proxy"]["workload"].as_str(), Some("bench/server"));
        assert_eq!(v["workloads"][1]["tunnelProtocol"].as_str(), Some("HBONE"));
        assert_eq!(v["workloads"][0]["tunnelProtocol"].as_str(), Some("HBONE"));
        // Only fields ztunnel knows: it rejects unknown ones.
        let proxy_keys: Vec<&str> = v["proxy"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(proxy_keys, ["workload", "certificates", "packetMark"]);
        let top: Vec<&str> = v
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(top, ["proxy", "workloads"]);
    }

    #[test]
    fn openssl_root_is_a_p256_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = make_root_ca(dir.path()).unwrap();
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&files.cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign"), "{text}");
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{text}"
        );
    }
}
