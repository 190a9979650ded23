//! HBONE client and server over real mTLS on loopback: the tunnel carries
//! bytes and half-close, identities are enforced on both sides, and resets
//! cross the tunnel as resets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use mesh_core::Identity;
use mesh_core::drain;
use mesh_core::hbone::{
    self, ConnectRequest, End, Handler, InboundRequest, PlainDialer, Pool, PoolKey,
};
use mesh_core::tls::{CertStore, CertificateAuthority, LocalCa, StaticCertificates, TrustBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn id(td: &str, sa: &str) -> Identity {
    Identity::new(td, "default", sa).unwrap()
}

/// Tunnels each CONNECT to the authority, recording the peer identity.
struct Forward {
    seen: std::sync::Mutex<Vec<Option<Identity>>>,
}

impl Handler for Forward {
    async fn handle(&self, req: InboundRequest) {
        self.seen.lock().unwrap().push(req.peer.identity.clone());
        if req.authority.port() == 1 {
            return req.refuse(StatusCode::UNAUTHORIZED);
        }
        let Ok(mut upstream) = TcpStream::connect(req.authority).await else {
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        };
        let Ok(tunnel) = req.accept(HeaderMap::new()) else {
            return;
        };
        hbone::splice(&mut upstream, tunnel, None).await;
    }
}

struct Server {
    addr: SocketAddr,
    handler: Arc<Forward>,
    _trigger: drain::DrainTrigger,
}

async fn server(ca: &CertificateAuthority, me: &Identity) -> Server {
    let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
    let source = LocalCa {
        ca: CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem()).unwrap(),
        ttl: Duration::from_secs(3600),
    };
    let store = CertStore::new(Arc::new(source), roots);
    store.prefetch(me).await.unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(mesh_core::tls::server_config(store, me.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Forward {
        seen: Default::default(),
    });
    let (trigger, watcher) = drain::channel();
    let h = handler.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, h, w) = (acceptor.clone(), h.clone(), watcher.clone());
            tokio::spawn(async move {
                let _ = hbone::serve_connection(tcp, acceptor, &Default::default(), h, w).await;
            });
        }
    });
    Server {
        addr,
        handler,
        _trigger: trigger,
    }
}

async fn pool_with(
    ca: &CertificateAuthority,
    cert: mesh_core::tls::WorkloadCertificate,
) -> (Arc<Pool>, Identity) {
    let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
    // Serve exactly the certificate under test, whatever it is.
    #[derive(Debug)]
    struct Fixed(std::sync::Mutex<Option<mesh_core::tls::WorkloadCertificate>>);
    impl mesh_core::tls::CertificateSource for Fixed {
        fn fetch(
            &self,
            _: &Identity,
        ) -> futures::future::BoxFuture<
            '_,
            Result<mesh_core::tls::WorkloadCertificate, mesh_core::tls::TlsError>,
        > {
            let c = self.0.lock().unwrap().take();
            Box::pin(async move { c.ok_or(mesh_core::tls::TlsError::EmptyChain) })
        }
    }
    let me = cert.identity.clone();
    let store = CertStore::new(Arc::new(Fixed(std::sync::Mutex::new(Some(cert)))), roots);
    store.prefetch(&me).await.unwrap();
    (
        Pool::new(store, Arc::new(PlainDialer), Default::default()),
        me,
    )
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn connect_req(target: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        authority: target,
        headers: HeaderMap::new(),
    }
}

/// Carries one TCP connection of a test client through the tunnel.
async fn proxy_once(
    pool: Arc<Pool>,
    key: PoolKey,
    target: SocketAddr,
) -> (TcpStream, tokio::task::JoinHandle<hbone::Transfer>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut downstream, _) = l.accept().await.unwrap();
        let (tunnel, _) = pool.connect(&key, connect_req(target)).await.unwrap();
        hbone::splice(&mut downstream, tunnel, None).await
    });
    (TcpStream::connect(addr).await.unwrap(), task)
}

#[tokio::test]
async fn carries_bytes_and_half_close_and_sees_the_client_identity() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let server_id = id("cluster.local", "server");
    let srv = server(&ca, &server_id).await;
    let client = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let (pool, me) = pool_with(&ca, client).await;
    let key = PoolKey::new(me.clone(), vec![server_id.clone()], srv.addr, None);
    let echo = echo_server().await;

    let (mut app, task) = proxy_once(pool.clone(), key.clone(), echo).await;
    let payload = vec![7u8; 3 << 20];
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
    let t = task.await.unwrap();
    assert_eq!(t.end, End::Clean);
    assert_eq!((t.tcp_to_tunnel, t.tunnel_to_tcp), (3 << 20, 3 << 20));
    assert_eq!(srv.handler.seen.lock().unwrap().as_slice(), &[Some(me)]);

    // A second connection reuses the pooled HTTP/2 connection.
    let (mut app2, _t2) = proxy_once(pool.clone(), key, echo).await;
    app2.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    app2.read_exact(&mut buf).await.unwrap();
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn refuses_wrong_server_identity_other_trust_domain_and_expired_certs() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let server_id = id("cluster.local", "server");
    let srv = server(&ca, &server_id).await;
    let echo = echo_server().await;

    // The client expects another identity than the server presents.
    let client = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let (pool, me) = pool_with(&ca, client).await;
    let key = PoolKey::new(
        me,
        vec![id("cluster.local", "someone-else")],
        srv.addr,
        None,
    );
    let err = pool.connect(&key, connect_req(echo)).await.unwrap_err();
    assert!(
        err.to_string().contains("is not one of the expected"),
        "{err}"
    );
    assert_eq!(err.response_flag(), "IDENTITY_ERROR");

    // A client from another trust domain, and one whose certificate expired.
    let other_td = ca
        .issue(&id("other.domain", "client"), Duration::from_secs(600))
        .unwrap();
    let now = SystemTime::now();
    let expired = ca
        .issue_between(
            &id("cluster.local", "client"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let other_root = CertificateAuthority::generate("other")
        .unwrap()
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    for (what, cert) in [
        ("other trust domain", other_td),
        ("expired", expired),
        ("other root", other_root),
    ] {
        let (pool, me) = pool_with(&ca, cert).await;
        let key = PoolKey::new(me, vec![server_id.clone()], srv.addr, None);
        // The server refuses during or right after the handshake (TLS 1.3 sends
        // the client's alert after the client thinks it is done).
        let res = pool.connect(&key, connect_req(echo)).await;
        assert!(res.is_err(), "{what}: the server accepted the client");
    }
}

#[tokio::test]
async fn refusals_reach_the_client_as_status_codes() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let server_id = id("cluster.local", "server");
    let srv = server(&ca, &server_id).await;
    let client = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let (pool, me) = pool_with(&ca, client).await;
    let key = PoolKey::new(me, vec![server_id], srv.addr, None);
    let err = pool
        .connect(&key, connect_req("127.0.0.1:1".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, hbone::HboneError::Refused { status, .. } if status == StatusCode::UNAUTHORIZED),
        "{err}"
    );
    assert_eq!(err.response_flag(), "DENY");
}

#[tokio::test]
async fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let server_id = id("cluster.local", "server");
    let srv = server(&ca, &server_id).await;
    let client = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let (pool, me) = pool_with(&ca, client).await;
    let key = PoolKey::new(me, vec![server_id], srv.addr, None);

    // An upstream that reads one message, then resets.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        hbone::copy::reset_tcp(&s);
        drop(s);
    });
    let (mut app, task) = proxy_once(pool, key, upstream).await;
    app.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_secs(5), app.read(&mut buf))
        .await
        .unwrap();
    let err = got.expect_err("the client must see a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(task.await.unwrap().end, End::TunnelReset);
}

#[tokio::test]
async fn static_certificates_load_from_pem() {
    let ca = CertificateAuthority::generate("t").unwrap();
    let cert = ca
        .issue(&id("cluster.local", "a"), Duration::from_secs(60))
        .unwrap();
    let _ = cert;
    let mut src = StaticCertificates::default();
    let err = src
        .insert_pem(
            b"nope".to_vec(),
            b"nope".to_vec(),
            ca.root_pem().as_bytes().to_vec(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("certificate chain"), "{err}");
}
