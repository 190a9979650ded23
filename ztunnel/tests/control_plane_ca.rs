//! ztunnel with `certificates.controlPlane`: at start it fetches its
//! workload's certificate from a CA over TLS (a scripted CA in this test that
//! signs real CSRs), and its HBONE listener verifies peers with the roots
//! that CA returned, not with the roots of the control plane's own TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_core::Identity;
use mesh_core::control::server::{ServingHandle, serve_tls, tls_config};
use mesh_core::telemetry::LogControl;
use mesh_core::tls::{CertStore, CertificateAuthority, LocalCa, TrustBundle, VerifiedCsr};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use ztunnel::{App, Config};

const TOKEN: &str = "node-a-token";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";

/// (identity in the CSR, `ImpersonatedIdentity` metadata) of each request.
type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Signs whatever an authorized caller asks for and records who asked for what.
#[derive(Clone)]
struct ScriptedCa {
    ca: Arc<CertificateAuthority>,
    seen: Requests,
}

#[tonic::async_trait]
impl IstioCertificateService for ScriptedCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) {
            return Err(tonic::Status::unauthenticated("wrong token"));
        }
        let body = request.into_inner();
        let csr = VerifiedCsr::parse(&body.csr)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let identity = csr
            .identity()
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let impersonated = body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        self.seen
            .lock()
            .unwrap()
            .push((identity.to_string(), impersonated));
        let leaf = self
            .ca
            .sign_verified_csr(
                &csr,
                &identity,
                Duration::from_secs(body.validity_duration as u64),
            )
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf, self.ca.root_pem().to_string()],
        }))
    }
}

/// Serves the scripted CA over TLS with a DNS certificate from `serving`.
async fn serve(ca: ScriptedCa, serving: &CertificateAuthority) -> ServingHandle {
    let (chain, key) = serving
        .issue_server(&["istiod.test".to_string()], Duration::from_secs(3600))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router =
        tonic::transport::Server::builder().add_service(IstioCertificateServiceServer::new(ca));
    serve_tls(listener, tls_config(&chain, &key).unwrap(), router).unwrap()
}

fn config(ca_addr: std::net::SocketAddr, serving_root: &std::path::Path) -> Config {
    Config::parse(&format!(
        "
proxy:
  workload: default/server
  certificates:
    controlPlane:
      address: https://127.0.0.1:{port}
      serverName: istiod.test
      rootCert: {root}
      token: {TOKEN}
      ttl: 1h
      impersonate: true
  listeners:
    outbound: 127.0.0.1:0
    inbound: 127.0.0.1:0
    inboundPlaintext: 127.0.0.1:0
    admin: 127.0.0.1:0
    metrics: 127.0.0.1:0
    readiness: 127.0.0.1:0
  packetMark: null
workloads:
- name: server
  namespace: default
  serviceAccount: server
  addresses: [127.0.0.1]
",
        port = ca_addr.port(),
        root = serving_root.display(),
    ))
    .unwrap()
}

/// A TLS handshake with ztunnel's HBONE listener as a client whose
/// certificate comes from `issuer`, expecting the server to be `SERVER` under
/// `mesh_root`. Ok when both sides accept.
async fn handshake(
    addr: std::net::SocketAddr,
    mesh_root: &CertificateAuthority,
    issuer: CertificateAuthority,
) -> Result<(), String> {
    let client: Identity = "spiffe://cluster.local/ns/default/sa/client"
        .parse()
        .unwrap();
    let roots = Arc::new(TrustBundle::new(vec![mesh_root.root_der().clone()]).unwrap());
    let store = CertStore::new(
        Arc::new(LocalCa {
            ca: issuer,
            ttl: Duration::from_secs(600),
        }),
        roots.clone(),
    );
    store.prefetch(&client).await.map_err(|e| e.to_string())?;
    let config = mesh_core::tls::client_config(store, roots, client, vec![SERVER.parse().unwrap()]);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows on the first exchange after the handshake.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    tokio::io::AsyncReadExt::read_exact(&mut tls, &mut buf)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn certificates_and_peer_roots_come_from_the_control_plane_ca() {
    let mesh_root = Arc::new(CertificateAuthority::generate("mesh").unwrap());
    // The control plane's serving certificate comes from a different root, so
    // a working handshake below proves peers are checked with the CA's roots.
    let serving_root = CertificateAuthority::generate("serving").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("istiod-root.pem");
    std::fs::write(&root_file, serving_root.root_pem()).unwrap();
    let scripted = ScriptedCa {
        ca: mesh_root.clone(),
        seen: Arc::default(),
    };
    let ca_server = serve(scripted.clone(), &serving_root).await;
    let addr = ca_server.addr;

    let app = App::build(config(addr, &root_file), LogControl::detached())
        .await
        .unwrap();
    assert_eq!(
        scripted.seen.lock().unwrap().as_slice(),
        &[(SERVER.to_string(), Some(SERVER.to_string()))]
    );
    let inbound = app.addresses.inbound;
    let shutdown = app.shutdown();
    let running = tokio::spawn(app.run());

    let mesh_issuer =
        CertificateAuthority::from_pem(mesh_root.root_pem(), &mesh_root.key_pem()).unwrap();
    handshake(inbound, &mesh_root, mesh_issuer).await.unwrap();
    // The server refuses a client from another root.
    let err = handshake(
        inbound,
        &mesh_root,
        CertificateAuthority::generate("stranger").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_refusing_ca_fails_start_up_with_the_address_named() {
    let mesh_root = Arc::new(CertificateAuthority::generate("mesh").unwrap());
    let serving_root = CertificateAuthority::generate("serving").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("istiod-root.pem");
    std::fs::write(&root_file, serving_root.root_pem()).unwrap();
    let ca_server = serve(
        ScriptedCa {
            ca: mesh_root,
            seen: Arc::default(),
        },
        &serving_root,
    )
    .await;
    let addr = ca_server.addr;
    let mut config = config(addr, &root_file);
    config
        .proxy
        .certificates
        .control_plane
        .as_mut()
        .unwrap()
        .token = Some("wrong".into());
    let err = App::build(config, LogControl::detached())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{}", addr.port())) && err.contains("wrong token"),
        "{err}"
    );
}

/// In-pod mode: an added pod's certificate is asked for with ztunnel's own
/// token and the pod's identity as `ImpersonatedIdentity`, before the Add is
/// ACKed; a CA that refuses turns the Add into a NACK naming the pod.
#[tokio::test]
async fn inpod_pods_get_impersonated_certificates_before_their_add_is_acked() {
    use mesh_api::istio::workload::zds::{
        AddWorkload, WorkloadInfo, WorkloadRequest, WorkloadResponse, workload_request,
        workload_response,
    };
    use std::os::fd::AsRawFd;

    mesh_testkit::require_root();
    let mesh_root = Arc::new(CertificateAuthority::generate("mesh").unwrap());
    let serving_root = CertificateAuthority::generate("serving").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("istiod-root.pem");
    std::fs::write(&root_file, serving_root.root_pem()).unwrap();
    let scripted = ScriptedCa {
        ca: mesh_root.clone(),
        seen: Arc::default(),
    };
    let ca_server = serve(scripted.clone(), &serving_root).await;
    let socket = dir.path().join("zds.sock");
    let agent = mesh_core::zds::ZdsListener::bind(&socket).unwrap();
    let add = |token: &str| {
        let mut config = config(ca_server.addr, &root_file);
        config.workloads.clear();
        config.proxy.workload = None;
        config.proxy.packet_mark = Some(1337);
        config.proxy.listeners = Default::default();
        config.proxy.listeners.admin = "127.0.0.1:0".parse().unwrap();
        config.proxy.listeners.metrics = "127.0.0.1:0".parse().unwrap();
        config.proxy.listeners.readiness = "127.0.0.1:0".parse().unwrap();
        config.proxy.inpod =
            Some(serde_yaml::from_str(&format!("{{socket: {}}}", socket.display())).unwrap());
        config
            .proxy
            .certificates
            .control_plane
            .as_mut()
            .unwrap()
            .token = Some(token.into());
        config
    };

    for (token, pod_name, expected) in [
        (TOKEN, "web", ""),
        (
            "wrong",
            "db",
            "pod default/db: no certificate for spiffe://cluster.local/ns/default/sa/db",
        ),
    ] {
        let pod = mesh_testkit::Netns::new(pod_name).unwrap();
        let app = App::build(add(token), LogControl::detached())
            .await
            .unwrap();
        let shutdown = app.shutdown();
        let running = tokio::spawn(app.run());
        let conn = tokio::time::timeout(Duration::from_secs(10), agent.accept())
            .await
            .unwrap()
            .unwrap();
        conn.recv().await.unwrap();
        let netns = std::fs::File::open(pod.path()).unwrap();
        let request = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: format!("uid-{pod_name}"),
                workload_info: Some(WorkloadInfo {
                    name: pod_name.into(),
                    namespace: "default".into(),
                    service_account: pod_name.into(),
                }),
            })),
        };
        conn.send(&request, Some(netns.as_raw_fd())).await.unwrap();
        let response: WorkloadResponse = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .unwrap()
            .unwrap()
            .decode("WorkloadResponse")
            .unwrap();
        let Some(workload_response::Payload::Ack(ack)) = response.payload else {
            panic!("no Ack: {response:?}");
        };
        assert!(ack.error.contains(expected), "{pod_name}: {:?}", ack.error);
        assert_eq!(ack.error.is_empty(), expected.is_empty(), "{:?}", ack.error);
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), running)
            .await
            .unwrap()
            .unwrap();
    }
    let web = "spiffe://cluster.local/ns/default/sa/web".to_string();
    assert_eq!(
        scripted.seen.lock().unwrap().as_slice(),
        &[(web.clone(), Some(web))]
    );
}
