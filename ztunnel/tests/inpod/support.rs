//! The pieces of the in-pod tests: pods (network namespaces with the node
//! agent's redirection rules of spec 6.1, written out here), a test-side node
//! agent speaking ZDS, an app that records who called it, and ztunnel run
//! in-process.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use mesh_api::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use mesh_core::drain::DrainOutcome;
use mesh_core::telemetry::LogControl;
use mesh_core::tls::CertificateAuthority;
use mesh_core::zds::{ZdsListener, ZdsSocket};
use mesh_testkit::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use ztunnel::{Addresses, App, Config, Shutdown};

pub const PATIENCE: Duration = Duration::from_secs(10);
pub const APP_PORT: u16 = 8080;

/// The node agent's in-pod rules (spec 6.1, without DNS capture).
const POD_RULES: &str = "*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";

/// A pod: its netns, its address(es) and its ZDS description.
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub service_account: String,
    pub ns: Netns,
    pub ips: Vec<IpAddr>,
}

impl Pod {
    pub fn new(name: &str) -> Result<Pod> {
        Ok(Pod {
            uid: format!("uid-{name}"),
            name: name.into(),
            service_account: name.into(),
            ns: Netns::new(name)?,
            ips: Vec::new(),
        })
    }

    /// Applies the redirection rules and the return route for spoofed
    /// sources, IPv4 and IPv6.
    pub fn enrol(&self, dir: &Path) -> Result<()> {
        let v6_rules = POD_RULES.replace("127.0.0.1/32", "::1/128").replace(
            "169.254.7.127/32",
            "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128",
        );
        for (tool, rules, any, family) in [
            ("iptables-restore", POD_RULES.to_string(), "0.0.0.0/0", "-4"),
            ("ip6tables-restore", v6_rules, "::/0", "-6"),
        ] {
            let file = dir.join(format!("{}.{tool}", self.ns.name()));
            std::fs::write(&file, rules)?;
            self.ns
                .exec(tool, &["--noflush", &file.to_string_lossy()])?;
            let rule = "rule add fwmark 0x111/0xfff pref 32764 lookup 100";
            let route = format!("route add local {any} dev lo table 100");
            for args in [rule.to_string(), route] {
                let mut argv = vec![family];
                argv.extend(args.split(' '));
                self.ns.ip(&argv)?;
            }
        }
        Ok(())
    }

    pub fn info(&self) -> WorkloadInfo {
        WorkloadInfo {
            name: self.name.clone(),
            namespace: "default".into(),
            service_account: self.service_account.clone(),
        }
    }

    pub fn identity(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/default/sa/{}",
            self.service_account
        )
    }

    /// The app in this pod opening a connection (captured by the rules).
    pub async fn connect(&self, to: IpAddr) -> Result<tokio::net::TcpStream> {
        self.ns.tcp_connect(SocketAddr::new(to, APP_PORT)).await
    }
}

/// Joins two pods with a veth pair on `fd77:<n>::/64` only.
pub fn link_v6(a: &mut Pod, b: &mut Pod, n: u16) -> Result<()> {
    let (ia, ib) = (format!("fd77:{n:x}::1"), format!("fd77:{n:x}::2"));
    mesh_testkit::link(
        &a.ns,
        &[format!("{ia}/64").parse()?],
        &b.ns,
        &[format!("{ib}/64").parse()?],
    )?;
    a.ips.push(ia.parse()?);
    b.ips.push(ib.parse()?);
    Ok(())
}

/// Joins two pods with a veth pair on `subnet` (a /24 prefix like `10.77.1`).
pub fn link(a: &mut Pod, b: &mut Pod, subnet: &str) -> Result<()> {
    let (ia, ib) = (format!("{subnet}.1"), format!("{subnet}.2"));
    mesh_testkit::link(
        &a.ns,
        &[format!("{ia}/24").parse()?],
        &b.ns,
        &[format!("{ib}/24").parse()?],
    )?;
    a.ips.push(ia.parse()?);
    b.ips.push(ib.parse()?);
    Ok(())
}

/// An app that echoes and records the address of every caller.
pub struct EchoApp {
    pub callers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoApp {
    pub fn start(pod: &Pod) -> Result<EchoApp> {
        // Dual-stack: IPv4 callers show as IPv4-mapped, see `caller_ips`.
        let listener = pod.ns.tcp_listener(SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            APP_PORT,
        )))?;
        let callers = Arc::new(Mutex::new(Vec::new()));
        let seen = callers.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(EchoApp { callers, task })
    }

    /// The callers' addresses, IPv4 ones as IPv4.
    pub fn caller_ips(&self) -> Vec<IpAddr> {
        self.callers
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.ip().to_canonical())
            .collect()
    }
}

/// One write and its echo on an open connection.
pub async fn roundtrip(s: &mut tokio::net::TcpStream, payload: &[u8]) -> Result<()> {
    s.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .context("no echo in time")??;
    ensure!(back == payload, "echo differs");
    Ok(())
}

/// A connection that ztunnel closed: reading ends (EOF or reset) promptly.
pub async fn closed(s: &mut tokio::net::TcpStream) -> Result<()> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => bail!("{n} bytes arrived on a connection that should be closed"),
        Err(_) => bail!("the connection is still open"),
    }
}

/// A CA, written where the config can name it.
pub fn write_ca(dir: &Path) -> Result<()> {
    let ca = CertificateAuthority::generate("mesh")?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root.key"), ca.key_pem())?;
    Ok(())
}

/// An in-pod config with the mesh model from the file (`workloads`: YAML
/// list items, one per line; empty for none).
pub fn config(dir: &Path, socket: &Path, workloads: &str) -> Result<Config> {
    let workloads = if workloads.is_empty() {
        "[]".to_string()
    } else {
        format!("\n{workloads}")
    };
    Ok(Config::parse(&format!(
        "
proxy:
  inpod: {{socket: {socket}}}
  certificates: {{ca: {{cert: {dir}/root.pem, key: {dir}/root.key}}}}
  listeners: {{admin: 127.0.0.1:0, metrics: 127.0.0.1:0, readiness: 127.0.0.1:0}}
  drainDeadline: 1s
  connectTimeout: 3s
workloads: {workloads}
",
        socket = socket.display(),
        dir = dir.display(),
    ))?)
}

pub fn workload_yaml(pod: &Pod) -> String {
    let ips: Vec<String> = pod.ips.iter().map(|i| i.to_string()).collect();
    format!(
        "- {{uid: {}, name: {}, namespace: default, serviceAccount: {}, addresses: [{}]}}",
        pod.uid,
        pod.name,
        pod.service_account,
        ips.join(", ")
    )
}

/// ztunnel running in-process.
pub struct Ztunnel {
    pub addresses: Addresses,
    pub shutdown: Shutdown,
    pub running: JoinHandle<DrainOutcome>,
}

impl Ztunnel {
    pub async fn start(config: Config) -> Result<Ztunnel> {
        let app = App::build(config, LogControl::detached()).await?;
        let addresses = app.addresses;
        let shutdown = app.shutdown();
        let running = tokio::spawn(app.run());
        Ok(Ztunnel {
            addresses,
            shutdown,
            running,
        })
    }

    /// Shuts down and waits (bounded) for the drain to end.
    pub async fn stop(self) -> Result<DrainOutcome> {
        self.shutdown.trigger();
        Ok(tokio::time::timeout(PATIENCE, self.running).await??)
    }

    pub async fn ready(&self) -> Result<(u16, String)> {
        http_get(self.addresses.readiness, "/healthz/ready").await
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(http_get(self.addresses.metrics, "/metrics").await?.1)
    }

    pub async fn config_dump(&self) -> Result<serde_json::Value> {
        let (_, body) = http_get(self.addresses.admin, "/config_dump").await?;
        Ok(serde_json::from_str(&body)?)
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {buf:?}"))?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// The node agent's end of ZDS.
pub struct NodeAgent {
    pub path: PathBuf,
    listener: ZdsListener,
}

impl NodeAgent {
    pub fn bind(path: PathBuf) -> Result<NodeAgent> {
        let listener = ZdsListener::bind(&path)?;
        Ok(NodeAgent { path, listener })
    }

    /// Accepts a ztunnel and checks its hello.
    pub async fn accept(&self) -> Result<AgentConn> {
        let socket = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .context("no ztunnel connected")??;
        let hello: ZdsHello = tokio::time::timeout(PATIENCE, socket.recv())
            .await
            .context("no hello")??
            .decode("ZdsHello")?;
        ensure!(hello.version == 1, "hello version {}", hello.version);
        Ok(AgentConn { socket })
    }
}

pub struct AgentConn {
    pub socket: ZdsSocket,
}

impl AgentConn {
    /// Sends a request and returns the Ack's error text ("" = ACK).
    pub async fn request(&self, payload: Payload, netns: Option<&Path>) -> Result<String> {
        let file = netns.map(std::fs::File::open).transpose()?;
        let request = WorkloadRequest {
            payload: Some(payload),
        };
        self.socket
            .send(&request, file.as_ref().map(|f| f.as_raw_fd()))
            .await?;
        self.ack().await
    }

    pub async fn ack(&self) -> Result<String> {
        let response: WorkloadResponse = tokio::time::timeout(PATIENCE, self.socket.recv())
            .await
            .context("no answer from ztunnel")??
            .decode("WorkloadResponse")?;
        match response.payload {
            Some(workload_response::Payload::Ack(a)) => Ok(a.error),
            None => bail!("a response with no Ack"),
        }
    }

    pub async fn add(&self, pod: &Pod) -> Result<String> {
        let add = AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(pod.info()),
        };
        self.request(Payload::Add(add), Some(&pod.ns.path())).await
    }

    pub async fn keep(&self, uid: &str) -> Result<String> {
        self.request(Payload::Keep(KeepWorkload { uid: uid.into() }), None)
            .await
    }

    pub async fn del(&self, uid: &str) -> Result<String> {
        self.request(Payload::Del(DelWorkload { uid: uid.into() }), None)
            .await
    }

    pub async fn snapshot_sent(&self) -> Result<String> {
        self.request(Payload::SnapshotSent(SnapshotSent {}), None)
            .await
    }

    /// The snapshot: every pod added and acked, then SnapshotSent.
    pub async fn snapshot(&self, pods: &[&Pod]) -> Result<()> {
        for pod in pods {
            let error = self.add(pod).await?;
            ensure!(error.is_empty(), "Add {} NACKed: {error}", pod.uid);
        }
        let error = self.snapshot_sent().await?;
        ensure!(error.is_empty(), "SnapshotSent NACKed: {error}");
        Ok(())
    }
}

/// Whether `metrics` has an opened-connections line with all of `parts`.
pub fn opened_with(metrics: &str, parts: &[&str]) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{") && parts.iter().all(|p| l.contains(p))
    })
}
