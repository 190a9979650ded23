//! An in-process mesh around one waypoint: a CA, a scripted xDS server,
//! destination "ztunnels" (mesh-core HBONE servers with the destination's
//! identity) in front of local HTTP backends, and a caller that speaks HBONE
//! to the waypoint with a client workload's certificate.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::ambit::waypoint::v1 as wp;
use mesh_api::istio::workload as xw;
use mesh_api::{ADDRESS_TYPE_URL, WAYPOINT_TYPE_URL};
use mesh_core::Identity;
use mesh_core::drain::{self, DrainOutcome, DrainWatcher};
use mesh_core::hbone::{
    self, ClientSettings, ConnectRequest, Handler, InboundRequest, PlainDialer, Pool, PoolKey,
    ServerSettings,
};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{CertStore, CertificateAuthority, LocalCa, TrustBundle};
use mesh_testkit::eventually;
use mesh_testkit::xds_server::{XdsServer, resource};
use tokio::net::{TcpListener, TcpStream};
use waypoint::stream_io::StreamIo;
use waypoint::{App, Overrides, Settings};

pub const PATIENCE: Duration = Duration::from_secs(10);
pub const NS: &str = "default";
pub const GATEWAY: &str = "waypoint";

pub fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", NS, sa).unwrap()
}

static NEXT_NET: AtomicU64 = AtomicU64::new(1);

/// A unique 127.a.b.0/24 per mesh, so tests in one process never share addresses.
fn next_net() -> [u8; 3] {
    let n = NEXT_NET.fetch_add(1, Ordering::SeqCst) as u32 + std::process::id() % 200 * 50;
    [10 + (n / 250 % 200) as u8, (n % 250) as u8, 0]
}

pub struct Mesh {
    pub ca: Arc<CertificateAuthority>,
    pub xds: XdsServer,
    pub app: Option<App>,
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: waypoint::Shutdown,
    pub client_pool: Arc<Pool>,
    pub client_id: Identity,
    pub waypoint_id: Identity,
    pub net: [u8; 3],
    /// The destination ztunnels' HBONE port (same on every endpoint IP).
    pub dest_port: u16,
    pub destinations: Vec<Destination>,
    _dir: tempfile::TempDir,
    addresses: Mutex<BTreeMap<String, mesh_api::envoy::service::discovery::v3::Resource>>,
    version: AtomicU64,
}

impl Mesh {
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.net[0], self.net[1], host))
    }

    /// Starts the waypoint with `tweak` applied to its settings, and waits
    /// until it is ready (certificate and first xDS config).
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Result<Mesh> {
        static LOGGING: std::sync::Once = std::sync::Once::new();
        LOGGING.call_once(|| {
            if std::env::var_os("RUST_LOG").is_some() {
                mesh_core::telemetry::init_logging("info");
            }
        });
        let ca = Arc::new(CertificateAuthority::generate("waypoint test")?);
        let xds = XdsServer::start().await?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("xds-root.pem");
        std::fs::write(&root, xds.root_pem())?;
        let net = next_net();
        // The destinations' port: free on the first endpoint IP.
        let probe = TcpListener::bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], 1)),
            0,
        ))
        .await?;
        let dest_port = probe.local_addr()?.port();
        drop(probe);
        let mut settings = Settings {
            gateway_name: GATEWAY.into(),
            gateway_namespace: NS.into(),
            xds_address: xds.address(),
            xds_server_name: None,
            root_cert: root,
            token_file: None,
            trust_domain: "cluster.local".into(),
            pod_name: "waypoint-0".into(),
            node_name: "node-a".into(),
            instance_ip: None,
            service_account: None,
            cluster_id: "Kubernetes".into(),
            ca_impersonate: false,
            listen: Some("127.0.0.1:0".parse()?),
            admin: "127.0.0.1:0".parse()?,
            drain_deadline: Duration::from_secs(3),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 100,
            upstream_hbone_port: dest_port,
            cert_ttl: Duration::from_secs(3600),
        };
        tweak(&mut settings);
        let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()])?);
        let source = Arc::new(LocalCa {
            ca: CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem())?,
            ttl: Duration::from_secs(3600),
        });
        let app = App::build(
            settings,
            LogControl::detached(),
            Overrides {
                certificates: Some((source, roots.clone())),
            },
        )
        .await?;
        let client_store = CertStore::new(
            Arc::new(LocalCa {
                ca: CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem())?,
                ttl: Duration::from_secs(3600),
            }),
            roots,
        );
        client_store.prefetch(&id("client")).await?;
        let mesh = Mesh {
            hbone: app.addresses.hbone,
            admin: app.addresses.admin,
            shutdown: app.shutdown(),
            app: Some(app),
            ca,
            xds,
            client_pool: Pool::new(
                client_store,
                Arc::new(PlainDialer),
                ClientSettings::default(),
            ),
            client_id: id("client"),
            waypoint_id: id(GATEWAY),
            net,
            dest_port,
            destinations: Vec::new(),
            _dir: dir,
            addresses: Mutex::new(BTreeMap::new()),
            version: AtomicU64::new(1),
        };
        eventually("the waypoint subscribed", PATIENCE, || async {
            ensure!(mesh.xds.open_streams() > 0 && mesh.xds.requests().len() >= 2);
            Ok(())
        })
        .await?;
        // The caller's workload, so that metrics can name it.
        mesh.put_workload(&workload("client", mesh.ip(200), "client", &[]))
            .await?;
        mesh.push_waypoint(wp::Waypoint {
            namespace: NS.into(),
            name: GATEWAY.into(),
            ..Default::default()
        })
        .await?;
        let ready = mesh.app.as_ref().unwrap().readiness.clone();
        eventually("the waypoint is ready", PATIENCE, || async {
            ensure!(ready.is_ready(), "pending: {:?}", ready.pending());
            Ok(())
        })
        .await?;
        Ok(mesh)
    }

    fn next_version(&self) -> String {
        self.version.fetch_add(1, Ordering::SeqCst).to_string()
    }

    /// Pushes one Address resource and waits for its ACK.
    async fn put_address(&self, name: &str, address: xw::Address) -> Result<()> {
        let r = resource(name, &self.next_version(), ADDRESS_TYPE_URL, &address);
        self.addresses
            .lock()
            .unwrap()
            .insert(name.into(), r.clone());
        let nonce = self.xds.push(ADDRESS_TYPE_URL, vec![r], vec![]).await?;
        self.acked(&nonce).await
    }

    async fn acked(&self, nonce: &str) -> Result<()> {
        let reply = eventually("the xDS reply", PATIENCE, || async {
            self.xds
                .requests()
                .into_iter()
                .find(|r| r.request.response_nonce == nonce)
                .ok_or_else(|| anyhow!("no reply to {nonce} yet"))
        })
        .await?;
        ensure!(reply.nack().is_none(), "NACK: {:?}", reply.nack());
        Ok(())
    }

    pub async fn put_workload(&self, w: &xw::Workload) -> Result<()> {
        self.put_address(
            &w.uid,
            xw::Address {
                r#type: Some(xw::address::Type::Workload(w.clone())),
            },
        )
        .await
    }

    pub async fn put_service(&self, s: &xw::Service) -> Result<()> {
        self.put_address(
            &format!("{}/{}", s.namespace, s.hostname),
            xw::Address {
                r#type: Some(xw::address::Type::Service(s.clone())),
            },
        )
        .await
    }

    /// Pushes the waypoint's own config; returns the NACK text, if any.
    pub async fn push_waypoint_raw(&self, w: wp::Waypoint) -> Result<Option<String>> {
        let r = resource(
            &format!("{NS}/{GATEWAY}"),
            &self.next_version(),
            WAYPOINT_TYPE_URL,
            &w,
        );
        let nonce = self.xds.push(WAYPOINT_TYPE_URL, vec![r], vec![]).await?;
        let reply = eventually("the xDS reply", PATIENCE, || async {
            self.xds
                .requests()
                .into_iter()
                .find(|r| r.request.response_nonce == nonce)
                .ok_or_else(|| anyhow!("no reply to {nonce} yet"))
        })
        .await?;
        Ok(reply.nack().map(str::to_string))
    }

    pub async fn push_waypoint(&self, w: wp::Waypoint) -> Result<()> {
        match self.push_waypoint_raw(w).await? {
            None => Ok(()),
            Some(n) => Err(anyhow!("NACK: {n}")),
        }
    }

    /// A destination ztunnel at `ip` (HBONE, identity `sa`) in front of the
    /// local backends.
    pub async fn destination(&mut self, host: u8, sa: &str) -> Result<Destination> {
        let d =
            Destination::start(self, SocketAddr::new(self.ip(host), self.dest_port), sa).await?;
        self.destinations.push(d.clone());
        Ok(d)
    }

    /// A service at VIP `127.n.n.<vip_host>:port` backed by `backends`:
    /// (workload name, endpoint host, backend port).
    pub async fn service(
        &self,
        name: &str,
        vip_host: u8,
        port: u16,
        endpoints: &[(&str, u8, u16)],
    ) -> Result<SocketAddr> {
        let hostname = format!("{name}.{NS}.svc.cluster.local");
        self.put_service(&xw::Service {
            name: name.into(),
            namespace: NS.into(),
            hostname: hostname.clone(),
            addresses: vec![xw::NetworkAddress {
                network: String::new(),
                address: ip_bytes(self.ip(vip_host)),
                length: None,
            }],
            ports: vec![xw::Port {
                service_port: port as u32,
                target_port: 0,
                app_protocol: 0,
            }],
            ..Default::default()
        })
        .await?;
        for (wname, host, backend_port) in endpoints {
            self.put_workload(&workload(
                wname,
                self.ip(*host),
                wname,
                &[(format!("{NS}/{hostname}"), port, *backend_port)],
            ))
            .await?;
        }
        Ok(SocketAddr::new(self.ip(vip_host), port))
    }

    /// Opens a CONNECT stream to the waypoint for `authority`, as the
    /// caller's ztunnel does (with `forwarded: for=` naming the client).
    pub async fn connect(
        &self,
        authority: SocketAddr,
    ) -> Result<StreamIo, mesh_core::hbone::HboneError> {
        let key = PoolKey::new(
            self.client_id.clone(),
            vec![self.waypoint_id.clone()],
            self.hbone,
            None,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            format!("for=\"{}:40000\"", self.ip(200)).parse().unwrap(),
        );
        let (tunnel, _) = self
            .client_pool
            .connect(&key, ConnectRequest { authority, headers })
            .await?;
        Ok(StreamIo::from_tunnel(tunnel))
    }

    pub async fn h1(
        &self,
        authority: SocketAddr,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let io = self.connect(authority).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    pub async fn h2(
        &self,
        authority: SocketAddr,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
        let io = self.connect(authority).await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    pub async fn metrics(&self) -> Result<String> {
        admin_get(self.admin, "/metrics").await
    }

    /// Drains the waypoint; returns how it ended and how long it took.
    pub async fn drain(&mut self) -> (DrainOutcome, Duration) {
        let app = self.app.take().expect("running");
        let started = std::time::Instant::now();
        let run = tokio::spawn(app.run());
        self.shutdown.trigger();
        let outcome = run.await.expect("run does not panic");
        (outcome, started.elapsed())
    }

    /// Starts `App::run` in the background (needed before a drain is triggered
    /// while requests are in flight).
    pub fn run_in_background(&mut self) -> tokio::task::JoinHandle<DrainOutcome> {
        let app = self.app.take().expect("running");
        tokio::spawn(app.run())
    }
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// A workload record: `services` lists (`ns/hostname`, service port, target port).
pub fn workload(name: &str, ip: IpAddr, sa: &str, services: &[(String, u16, u16)]) -> xw::Workload {
    let mut map = BTreeMap::new();
    for (svc, port, target) in services {
        map.entry(svc.clone())
            .or_insert_with(|| xw::PortList { ports: vec![] })
            .ports
            .push(xw::Port {
                service_port: *port as u32,
                target_port: *target as u32,
                app_protocol: 0,
            });
    }
    xw::Workload {
        uid: format!("Kubernetes//Pod/{NS}/{name}"),
        name: name.into(),
        namespace: NS.into(),
        addresses: vec![ip_bytes(ip)],
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
        canonical_name: name.into(),
        canonical_revision: "v1".into(),
        workload_name: name.into(),
        services: map,
        ..Default::default()
    }
}

/// A destination ztunnel: HBONE with its identity, each CONNECT spliced to
/// `127.0.0.1:<authority port>` (the local backend).
#[derive(Clone)]
pub struct Destination {
    pub addr: SocketAddr,
    /// The identities of the callers it saw (the waypoint's, if all is well).
    pub callers: Arc<Mutex<Vec<Option<Identity>>>>,
    pub connections: Arc<AtomicU64>,
    pub streams: Arc<AtomicU64>,
    _drain: Arc<drain::DrainTrigger>,
}

struct Splice {
    callers: Arc<Mutex<Vec<Option<Identity>>>>,
    streams: Arc<AtomicU64>,
}

impl Handler for Splice {
    async fn handle(&self, request: InboundRequest) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        self.callers
            .lock()
            .unwrap()
            .push(request.peer.identity.clone());
        let port = request.authority.port();
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
            request.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let Ok(tunnel) = request.accept(HeaderMap::new()) else {
            return;
        };
        hbone::splice(&mut tcp, tunnel, None).await;
    }
}

impl Destination {
    async fn start(mesh: &Mesh, addr: SocketAddr, sa: &str) -> Result<Destination> {
        let store = CertStore::new(
            Arc::new(LocalCa {
                ca: CertificateAuthority::from_pem(mesh.ca.root_pem(), &mesh.ca.key_pem())?,
                ttl: Duration::from_secs(3600),
            }),
            Arc::new(TrustBundle::new(vec![mesh.ca.root_der().clone()])?),
        );
        let identity = id(sa);
        store.prefetch(&identity).await?;
        let acceptor =
            tokio_rustls::TlsAcceptor::from(mesh_core::tls::server_config(store, identity));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the destination at {addr}"))?;
        let (trigger, watcher) = drain::channel();
        let callers: Arc<Mutex<Vec<Option<Identity>>>> = Arc::default();
        let connections = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(Splice {
            callers: callers.clone(),
            streams: streams.clone(),
        });
        let conns = connections.clone();
        tokio::spawn(serve_destination(
            listener, acceptor, handler, watcher, conns,
        ));
        Ok(Destination {
            addr,
            callers,
            connections,
            streams,
            _drain: Arc::new(trigger),
        })
    }
}

async fn serve_destination(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<Splice>,
    drain: DrainWatcher,
    connections: Arc<AtomicU64>,
) {
    let settings = ServerSettings::default();
    while let Ok((tcp, _)) = listener.accept().await {
        connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, handler, drain, settings) = (
            acceptor.clone(),
            handler.clone(),
            drain.clone(),
            settings.clone(),
        );
        tokio::spawn(async move {
            let _ = hbone::serve_connection(tcp, acceptor, &settings, handler, drain).await;
        });
    }
}

/// A local HTTP backend (HTTP/1.1 or HTTP/2). It answers every request with
/// `name` in `x-backend` and the request headers echoed as `echo-<name>`;
/// `/status/<n>` answers n, `/delay/<ms>` waits first, `/slow503/<ms>`
/// waits then answers 503, `/flaky/<n>` fails with 503 on its first n
/// requests.
pub struct Backend {
    pub port: u16,
    pub requests: Arc<AtomicU64>,
}

impl Backend {
    pub async fn start(name: &'static str, h2: bool) -> Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(answer(name, req, &counter).await) }
                    });
                    let io = TokioIo::new(tcp);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Ok(Backend { port, requests })
    }
}

async fn answer(name: &str, req: Request<Incoming>, counter: &AtomicU64) -> Response<Full<Bytes>> {
    let n = counter.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(ms) = path.strip_prefix("/slow503/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(k) = path.strip_prefix("/flaky/")
        && n < k.parse().unwrap_or(0)
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut resp = Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("x-version", format!("{:?}", req.version()));
    for (k, v) in req.headers() {
        resp = resp.header(format!("echo-{k}"), v);
    }
    if path == "/head-only" {
        // Answers on the request head, as a server that speaks first does.
        return resp
            .body(Full::new(Bytes::from(format!("{name} {path}"))))
            .unwrap();
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    resp.body(Full::new(Bytes::from(format!(
        "{name} {path} {}",
        body.len()
    ))))
    .unwrap()
}

/// GET on the admin port.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", "admin")
                .body(Full::new(Bytes::new()))?,
        )
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A GET over HTTP/1.1 through the waypoint.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "echo.default.svc.cluster.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub async fn body_text(resp: Response<Incoming>) -> Result<String> {
    Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub fn h2_preface() -> Vec<u8> {
    let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    v.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    v
}

/// Reads raw HTTP/2 frames until one of `frame_type` arrives (its payload),
/// or the stream ends (`None`).
pub async fn read_until_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    frame_type: u8,
) -> Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut head = [0u8; 9];
        if r.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        if head[3] == frame_type {
            return Ok(Some(payload));
        }
    }
}

/// Reads what the peer sends until it closes (or `patience` passes).
pub async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    patience: Duration,
) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(patience, read)
        .await
        .map_err(|_| anyhow!("the peer did not close within {patience:?}"))?;
    Ok(out)
}
