//! The CA over a real TLS connection: istiod-lite's `CaServer` served with
//! its own serving certificate, and mesh-core's `IstioCaClient` over the
//! control-plane channel, as ztunnel uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use istiod_lite::auth::tokens::{NODE_TOKENS_FILE, NodeTokens};
use istiod_lite::auth::{AuthError, Authenticate, Caller, bearer_token};
use istiod_lite::ca::{CaMetrics, CaPolicy, CaServer, RefusalReason};
use istiod_lite::model::{Kind, Object};
use istiod_lite::registry::{Change, Registry};
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_core::Identity;
use mesh_core::control::server::{ServingHandle, serve_tls, tls_config};
use mesh_core::control::{ControlPlane, TokenSource};
use mesh_core::tls::{
    CertStore, CertificateAuthority, CertificateSource, IstioCaClient, LeafInfo, TlsError,
    TrustBundle, WorkloadCertificate, new_csr,
};
use mesh_testkit::eventually;
use serde_json::json;
use tokio::net::TcpListener;

const SERVER_NAME: &str = "istiod.istio-system.svc";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/default";
const VAULT: &str = "spiffe://cluster.local/ns/bank/sa/vault";
/// The token a workload on node-a presents for its own identity.
const CART_OWN_TOKEN: &str = "cart-own-token";

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn pod(ns: &str, name: &str, sa: Option<&str>, node: &str) -> Change {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    Change::Upsert(
        Object::from_value(
            Kind::Pod,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        )
        .unwrap(),
    )
}

/// Node tokens, plus one workload credential naming its own identity (what a
/// TokenReview yields for a projected service-account token).
#[derive(Debug)]
struct NodesAndOneWorkload {
    nodes: NodeTokens,
}

impl Authenticate for NodesAndOneWorkload {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        if bearer_token(metadata).ok() == Some(CART_OWN_TOKEN) {
            return Box::pin(async {
                Ok(Caller {
                    node: Some("node-a".into()),
                    identity: Some(id(CART)),
                    description: "shop/cart".into(),
                })
            });
        }
        self.nodes.authenticate(metadata)
    }
}

struct Fixture {
    ca: Arc<CertificateAuthority>,
    metrics: CaMetrics,
    prometheus: prometheus_client::registry::Registry,
    node_a_token: String,
    server: Option<ServingHandle>,
    tls: Arc<rustls::ServerConfig>,
    service: CaServer,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(policy: CaPolicy) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(istiod_lite::ca::root::load_or_create(dir.path()).unwrap());
        let nodes = NodeTokens::load_or_create(
            &dir.path().join(NODE_TOKENS_FILE),
            &["node-a".to_string(), "node-b".to_string()],
        )
        .unwrap();
        let node_a_token = nodes.token("node-a").unwrap();
        let registry = Registry::new();
        registry.apply([
            pod("shop", "cart-1", Some("cart"), "node-a"),
            pod("shop", "web-1", None, "node-a"),
            pod("bank", "vault-1", Some("vault"), "node-b"),
        ]);
        let mut prometheus = prometheus_client::registry::Registry::default();
        let metrics = CaMetrics::new(&mut prometheus);
        let service = CaServer::new(
            ca.clone(),
            Arc::new(NodesAndOneWorkload { nodes }),
            registry,
            policy,
            metrics.clone(),
        );
        let (chain, key) = ca
            .issue_server(&[SERVER_NAME.to_string()], Duration::from_secs(3600))
            .unwrap();
        let tls = tls_config(&chain, &key).unwrap();
        let mut fixture = Fixture {
            ca,
            metrics,
            prometheus,
            node_a_token,
            server: None,
            tls,
            service,
            _dir: dir,
        };
        fixture.serve("127.0.0.1:0").await;
        fixture
    }

    async fn serve(&mut self, addr: &str) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let router =
            tonic::transport::Server::builder().add_service(self.service.clone().into_service());
        self.server = Some(serve_tls(listener, self.tls.clone(), router).unwrap());
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    fn control(&self, token: &str) -> ControlPlane {
        ControlPlane {
            address: format!("https://127.0.0.1:{}", self.addr().port()),
            server_name: Some(SERVER_NAME.into()),
            roots: vec![self.ca.root_der().clone()],
            token: Some(TokenSource::Literal(token.into())),
            cluster_id: "Kubernetes".into(),
            headers: vec![],
            mark: None,
        }
    }

    fn node_client(&self, ttl: Duration) -> IstioCaClient {
        IstioCaClient::new(self.control(&self.node_a_token), true, ttl)
    }

    /// A raw call, for requests the client would never build.
    async fn raw(&self, token: &str, request: IstioCertificateRequest) -> tonic::Status {
        let control = self.control(token);
        let mut request = tonic::Request::new(request);
        control.authorize(&mut request).unwrap();
        IstioCertificateServiceClient::new(control.channel().unwrap())
            .create_certificate(request)
            .await
            .expect_err("the CA should refuse this request")
    }

    fn exposition(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.prometheus).unwrap();
        out
    }
}

fn lifetime(cert: &WorkloadCertificate) -> Duration {
    cert.not_after.duration_since(cert.not_before).unwrap()
}

#[tokio::test]
async fn a_node_proxy_gets_certificates_for_pods_on_its_node() {
    let f = Fixture::start(CaPolicy::default()).await;
    let peer_roots = Arc::new(TrustBundle::new(Vec::new()).unwrap());
    let client = f
        .node_client(Duration::from_secs(3600))
        .updating_trust_bundle(peer_roots.clone(), Vec::new());
    for who in [CART, WEB] {
        let cert = client.fetch(&id(who)).await.unwrap();
        assert_eq!(cert.identity, id(who));
        // Peers are verified against the roots the CA returned.
        assert_eq!(cert.roots, vec![f.ca.root_der().clone()]);
        assert!(lifetime(&cert) >= Duration::from_secs(3600));
    }
    assert_eq!(f.metrics.signed.get(), 2);
    // The client keeps the peer-verification roots at those the CA sent.
    assert_eq!(peer_roots.len(), 1);
}

#[tokio::test]
async fn an_identity_not_on_the_callers_node_is_refused_and_counted() {
    let f = Fixture::start(CaPolicy::default()).await;
    let err = f
        .node_client(Duration::from_secs(3600))
        .fetch(&id(VAULT))
        .await
        .unwrap_err();
    let TlsError::CaClient(inner) = &err else {
        panic!("unexpected error {err}");
    };
    let message = inner.to_string();
    assert!(
        message.contains("PermissionDenied") || message.contains("permission"),
        "{message}"
    );
    assert!(
        message.contains(VAULT) && message.contains("node-a"),
        "{message}"
    );
    assert_eq!(f.metrics.refused_count(RefusalReason::NotOnNode), 1);
    assert!(
        f.exposition()
            .contains(r#"istiod_ca_certificates_refused_total{reason="not_on_node"} 1"#),
        "{}",
        f.exposition()
    );
    assert_eq!(f.metrics.signed.get(), 0);
}

#[tokio::test]
async fn a_workload_gets_its_own_identity_only() {
    let f = Fixture::start(CaPolicy::default()).await;
    let own = IstioCaClient::new(f.control(CART_OWN_TOKEN), false, Duration::from_secs(600));
    assert_eq!(own.fetch(&id(CART)).await.unwrap().identity, id(CART));
    let err = own.fetch(&id(WEB)).await.unwrap_err().to_string();
    assert!(err.contains("only obtain its own identity"), "{err}");
    assert_eq!(f.metrics.refused_count(RefusalReason::NotOwnIdentity), 1);
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    let f = Fixture::start(CaPolicy::default()).await;
    let client = IstioCaClient::new(f.control("not-a-token"), true, Duration::from_secs(600));
    let err = client.fetch(&id(CART)).await.unwrap_err().to_string();
    assert!(err.contains("token"), "{err}");
    assert_eq!(f.metrics.refused_count(RefusalReason::Unauthenticated), 1);
}

#[tokio::test]
async fn bad_and_mismatched_csrs_are_invalid_arguments() {
    let f = Fixture::start(CaPolicy::default()).await;
    let garbage = IstioCertificateRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        ..Default::default()
    };
    let status = f.raw(&f.node_a_token, garbage).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A CSR for web while the metadata asks for cart.
    let mismatched = IstioCertificateRequest {
        csr: new_csr(&id(WEB)).unwrap().0,
        validity_duration: 600,
        metadata: Some(prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(CART.into())),
                },
            )]
            .into(),
        }),
    };
    let status = f.raw(&f.node_a_token, mismatched).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(WEB), "{}", status.message());
    assert_eq!(f.metrics.refused_count(RefusalReason::BadCsr), 2);
}

#[tokio::test]
async fn the_lifetime_is_clamped_to_the_maximum() {
    let f = Fixture::start(CaPolicy {
        max_ttl: Duration::from_secs(7200),
        ..CaPolicy::default()
    })
    .await;
    let cert = f
        .node_client(Duration::from_secs(90 * 24 * 3600))
        .fetch(&id(CART))
        .await
        .unwrap();
    // Back-dated by a minute for clock skew.
    assert!(
        lifetime(&cert) <= Duration::from_secs(7200 + 61),
        "{:?}",
        lifetime(&cert)
    );
    assert!(lifetime(&cert) >= Duration::from_secs(7200));
}

#[tokio::test]
async fn another_trust_domain_is_refused() {
    let f = Fixture::start(CaPolicy::default()).await;
    let err = f
        .node_client(Duration::from_secs(600))
        .fetch(&id("spiffe://elsewhere.example/ns/shop/sa/cart"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("trust domain"), "{err}");
    assert_eq!(f.metrics.refused_count(RefusalReason::WrongTrustDomain), 1);
}

/// Counts failed fetches of the wrapped source.
#[derive(Debug)]
struct CountingFailures {
    inner: IstioCaClient,
    failures: Arc<AtomicUsize>,
}

impl CertificateSource for CountingFailures {
    fn fetch(&self, identity: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
        let identity = identity.clone();
        Box::pin(async move {
            let result = self.inner.fetch(&identity).await;
            if result.is_err() {
                self.failures.fetch_add(1, Ordering::SeqCst);
            }
            result
        })
    }
}

#[tokio::test]
async fn with_the_ca_down_the_current_certificate_stays_and_renewal_resumes() {
    let mut f = Fixture::start(CaPolicy {
        min_ttl: Duration::from_secs(1),
        ..CaPolicy::default()
    })
    .await;
    let addr = f.addr();
    let failures = Arc::new(AtomicUsize::new(0));
    // 62 s leaves back-dated by 60 s: renewal is due about a second after issue.
    let source = CountingFailures {
        inner: f.node_client(Duration::from_secs(62)),
        failures: failures.clone(),
    };
    let roots = Arc::new(TrustBundle::new(vec![f.ca.root_der().clone()]).unwrap());
    let store = CertStore::new(Arc::new(source), roots);
    let first = store.prefetch(&id(CART)).await.unwrap();
    let first_serial = LeafInfo::parse(first.leaf()).unwrap().serial;

    f.server
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    eventually(
        "renewals fail while the CA is down",
        Duration::from_secs(20),
        || async {
            let n = failures.load(Ordering::SeqCst);
            if n < 2 {
                bail!("{n} failed renewals so far");
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    let current = store.current(&id(CART)).context("no certificate").unwrap();
    assert_eq!(
        LeafInfo::parse(current.leaf()).unwrap().serial,
        first_serial
    );
    assert!(!current.is_expired(SystemTime::now()));

    f.serve(&addr.to_string()).await;
    eventually(
        "a renewal succeeds once the CA is back",
        Duration::from_secs(30),
        || async {
            let current = store.current(&id(CART)).context("no certificate")?;
            if LeafInfo::parse(current.leaf())?.serial == first_serial {
                bail!("still the first certificate");
            }
            Ok(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_server_within_its_deadline() {
    let mut f = Fixture::start(CaPolicy::default()).await;
    let addr = f.addr();
    f.server
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    eventually("the port is closed", Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => bail!("still accepting"),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let mut f = Fixture::start(CaPolicy::default()).await;
    let addr = f.addr();
    drop(f.server.take());
    eventually("the port is closed", Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => bail!("still accepting"),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
}
