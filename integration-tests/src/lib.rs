//! A two-host mesh for integration tests: client and server network
//! namespaces joined by a veth pair, a ztunnel process in each, nat rules
//! sending the client's outbound TCP to its ztunnel (15001) and the server's
//! plaintext inbound to 15006, and an echo app on the server. Everything is
//! removed on drop. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_core::Identity;
use mesh_core::tls::CertificateAuthority;
use mesh_testkit::{ChildGuard, EchoServer, Netns, TwoHosts, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ECHO_PORT: u16 = 9000;
pub const MARK: u32 = 0x539;

/// The ztunnel binary built next to this test (or `AMBIT_ZTUNNEL`).
pub fn ztunnel_binary() -> PathBuf {
    if let Ok(p) = std::env::var("AMBIT_ZTUNNEL") {
        return PathBuf::from(p);
    }
    workspace_binary("ztunnel")
}

/// A binary of the workspace, built next to this test.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p {name})",
        bin.display()
    );
    bin
}

/// How the client side authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// Issued from the mesh root for `spiffe://cluster.local/ns/default/sa/client`.
    Valid,
    /// The same identity, from a certificate that expired an hour ago.
    Expired,
    /// Issued from the mesh root, but in trust domain `other.domain`.
    OtherTrustDomain,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub ipv6: bool,
    pub client_cert: ClientCert,
    /// The service account the client believes the server has.
    pub server_sa_seen_by_client: String,
    /// YAML list items appended to the server's `authorizationPolicies`.
    pub server_policies: String,
    /// YAML list items for the server's `peerAuthentications`.
    pub server_peer_authentications: String,
    pub drain_deadline: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ipv6: false,
            client_cert: ClientCert::Valid,
            server_sa_seen_by_client: "server".into(),
            server_policies: String::new(),
            server_peer_authentications: String::new(),
            drain_deadline: "10s".into(),
        }
    }
}

pub struct Mesh {
    pub hosts: TwoHosts,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub client_ztunnel: ChildGuard,
    pub server_ztunnel: ChildGuard,
    pub echo: EchoServer,
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("client", &self.hosts.client.name())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    pub async fn start(tag: &str, opts: Options) -> Result<Mesh> {
        mesh_testkit::require_root();
        let hosts = TwoHosts::new(tag)?;
        let (client_ip, server_ip) = if opts.ipv6 {
            (hosts.client_v6, hosts.server_v6)
        } else {
            (hosts.client_v4, hosts.server_v4)
        };
        let dir = tempfile::tempdir()?;
        let ca = CertificateAuthority::generate("ambit-test")?;
        std::fs::write(dir.path().join("root.pem"), ca.root_pem())?;
        std::fs::write(dir.path().join("root.key"), ca.key_pem())?;

        let client_td = match opts.client_cert {
            ClientCert::OtherTrustDomain => "other.domain",
            _ => "cluster.local",
        };
        let client_certs = match opts.client_cert {
            ClientCert::Expired => {
                let id = Identity::new("cluster.local", "default", "client")?;
                let now = std::time::SystemTime::now();
                let (cert, key) = ca.issue_pem_between(
                    &id,
                    now - Duration::from_secs(7200),
                    now - Duration::from_secs(3600),
                )?;
                std::fs::write(dir.path().join("client-cert.pem"), cert)?;
                std::fs::write(dir.path().join("client-key.pem"), key)?;
                "files: [{cert: client-cert.pem, key: client-key.pem, roots: root.pem}]".to_string()
            }
            _ => "ca: {cert: root.pem, key: root.key, ttl: 1h}".to_string(),
        };
        let workloads = |server_sa: &str, client_td: &str| {
            format!(
                "workloads:\n\
                 - {{name: client, namespace: default, serviceAccount: client, trustDomain: {client_td}, addresses: [{c4}, '{c6}']}}\n\
                 - {{name: server, namespace: default, serviceAccount: {server_sa}, addresses: [{s4}, '{s6}']}}\n",
                c4 = hosts.client_v4,
                c6 = hosts.client_v6,
                s4 = hosts.server_v4,
                s6 = hosts.server_v6,
            )
        };
        // The client side runs one worker (a current-thread runtime), the server
        // side one per CPU: both runtime flavours are exercised.
        let client_cfg = format!(
            "proxy:\n  workload: default/client\n  workerThreads: 1\n  drainDeadline: {dd}\n  certificates:\n    {client_certs}\n    roots: [root.pem]\n{w}",
            dd = opts.drain_deadline,
            w = workloads(&opts.server_sa_seen_by_client, client_td),
        );
        let server_cfg = format!(
            "proxy:\n  workload: default/server\n  drainDeadline: {dd}\n  certificates:\n    ca: {{cert: root.pem, key: root.key, ttl: 1h}}\n{w}\
             authorizationPolicies:\n{pol}\npeerAuthentications:\n{pa}\n",
            dd = opts.drain_deadline,
            w = workloads("server", "cluster.local"),
            pol = if opts.server_policies.is_empty() {
                "  []".into()
            } else {
                opts.server_policies.clone()
            },
            pa = if opts.server_peer_authentications.is_empty() {
                "  []".into()
            } else {
                opts.server_peer_authentications.clone()
            },
        );
        std::fs::write(dir.path().join("client.yaml"), client_cfg)?;
        std::fs::write(dir.path().join("server.yaml"), server_cfg)?;

        // Capture: the client's outbound TCP to 15001, the server's plaintext inbound to 15006.
        for (ipt, lo) in [("iptables", "127.0.0.1/32"), ("ip6tables", "::1/128")] {
            hosts.client.exec(
                ipt,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "!",
                    "-d",
                    lo,
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
            hosts.server.exec(
                ipt,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "!",
                    "--dport",
                    "15008",
                    "-m",
                    "mark",
                    "!",
                    "--mark",
                    "0x539/0xfff",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "15006",
                ],
            )?;
        }

        let echo = EchoServer::start(
            hosts
                .server
                .tcp_listener(SocketAddr::new(any(server_ip), ECHO_PORT))?,
        );
        let bin = ztunnel_binary();
        let bin = bin.to_str().context("binary path")?;
        let server_ztunnel = start_ztunnel(&hosts.server, bin, dir.path(), "server")?;
        let client_ztunnel = start_ztunnel(&hosts.client, bin, dir.path(), "client")?;
        let mesh = Mesh {
            hosts,
            client_ip,
            server_ip,
            client_ztunnel,
            server_ztunnel,
            echo,
            dir,
        };
        mesh.wait_ready(&mesh.hosts.server, "server").await?;
        mesh.wait_ready(&mesh.hosts.client, "client").await?;
        Ok(mesh)
    }

    async fn wait_ready(&self, ns: &Netns, side: &str) -> Result<()> {
        let guard = if side == "server" {
            &self.server_ztunnel
        } else {
            &self.client_ztunnel
        };
        eventually(
            &format!("{side} ztunnel ready"),
            Duration::from_secs(20),
            || async {
                if !guard.is_running() {
                    bail!("{side} ztunnel exited: {}", self.log(side));
                }
                let (status, _) =
                    http_get(ns, "127.0.0.1:15021".parse()?, "/healthz/ready").await?;
                anyhow::ensure!(status == 200, "status {status}");
                Ok(())
            },
        )
        .await
    }

    /// A connection from the client app to `server_ip:port` (captured by the client ztunnel).
    pub async fn connect(&self, port: u16) -> Result<TcpStream> {
        self.hosts
            .client
            .tcp_connect(SocketAddr::new(self.server_ip, port))
            .await
    }

    pub async fn metrics(&self, side: &str) -> Result<String> {
        let ns = if side == "server" {
            &self.hosts.server
        } else {
            &self.hosts.client
        };
        let (status, body) = http_get(ns, "127.0.0.1:15020".parse()?, "/metrics").await?;
        anyhow::ensure!(status == 200, "metrics status {status}");
        Ok(body)
    }

    pub fn log(&self, side: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{side}.log"))).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn any(like: IpAddr) -> IpAddr {
    if like.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    }
}

/// Starts ztunnel in `ns` with `<dir>/<side>.yaml`, logging to `<dir>/<side>.log`.
pub fn start_ztunnel(ns: &Netns, bin: &str, dir: &Path, side: &str) -> Result<ChildGuard> {
    let cfg = dir.join(format!("{side}.yaml"));
    let log = dir.join(format!("{side}.log"));
    ns.spawn_with(
        bin,
        &["--config", cfg.to_str().context("path")?],
        &[("RUST_LOG", "info")],
        Some(&log),
    )
}

/// A minimal HTTP/1.1 GET from inside a namespace.
pub async fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(ns, addr, "GET", path).await
}

/// A minimal HTTP/1.1 request without a body from inside a namespace.
pub async fn http_request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String)> {
    let mut s = ns.tcp_connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The sum of a metric's series whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP connection from the client namespace that bypasses capture (ztunnel's mark).
pub async fn connect_uncaptured(ns: &Netns, addr: SocketAddr) -> Result<TcpStream> {
    let std = ns.try_run(move || -> Result<std::net::TcpStream> {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        s.set_mark(MARK)?;
        s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })??;
    Ok(TcpStream::from_std(std)?)
}

/// Expects a connection to be refused: reset while connecting, or closed or
/// reset before any byte comes back.
pub async fn expect_refused(
    connecting: impl std::future::Future<Output = Result<TcpStream>>,
) -> Result<()> {
    let mut stream = match connecting.await {
        Ok(s) => s,
        Err(e)
            if ["reset", "refused"]
                .iter()
                .any(|w| format!("{e:#}").contains(w)) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let _ = stream.write_all(b"are you there?").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => bail!("the refused connection carried {n} bytes"),
        Err(_) => bail!("the connection neither closed nor answered within 10 s"),
    }
}
