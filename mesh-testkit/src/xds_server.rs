//! [`XdsServer`]: a scripted delta ADS server for tests. It serves the real
//! gRPC service over real TLS (a DNS certificate for `localhost` from a
//! throw-away root), records every request it receives, and sends exactly the
//! responses a test pushes. Tests can also fail the open streams or stop the
//! server to exercise reconnects.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow};
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_api::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

type Reply = Result<DeltaDiscoveryResponse, Status>;

/// A request as the server received it, with the stream it came on (streams
/// are numbered from 1 in the order they opened).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub stream: u64,
    pub request: DeltaDiscoveryRequest,
}

impl ReceivedRequest {
    /// An ACK or NACK (it answers a nonce) rather than a subscription.
    pub fn is_reply(&self) -> bool {
        !self.request.response_nonce.is_empty()
    }

    /// The NACK text, if this is a NACK.
    pub fn nack(&self) -> Option<&str> {
        self.request
            .error_detail
            .as_ref()
            .map(|e| e.message.as_str())
    }
}

#[derive(Debug, Default)]
struct Shared {
    streams: Mutex<Vec<(u64, mpsc::Sender<Reply>)>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    metadata: Mutex<Vec<MetadataMap>>,
    next_stream: AtomicU64,
    next_nonce: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type DeltaAggregatedResourcesStream = ReceiverStream<Reply>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let shared = self.0.clone();
        let id = shared.next_stream.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&shared.metadata).push(request.metadata().clone());
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        lock(&shared.streams).push((id, tx));
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                lock(&shared.requests).push(ReceivedRequest {
                    stream: id,
                    request,
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One connection as tonic's server wants it: the near end of a pipe whose
/// far end is pumped to the TLS stream by a task the server owns, so that
/// `stop` can cut connections at once (tonic's own shutdown would wait for
/// the client to go away).
struct PipedConnection(DuplexStream);

impl Connected for PipedConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for PipedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Running {
    accept: JoinHandle<()>,
    /// The TLS pumps of the open connections.
    pumps: Arc<Mutex<Vec<AbortHandle>>>,
    serve: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

/// The scripted server. Dropping it stops it.
#[derive(Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    root_pem: String,
    root_der: CertificateDer<'static>,
    running: Mutex<Option<Running>>,
}

impl XdsServer {
    /// Serves on `127.0.0.1` at a free port.
    pub async fn start() -> Result<XdsServer> {
        let (tls, root_pem, root_der) = localhost_tls()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = XdsServer {
            shared: Arc::new(Shared::default()),
            addr: listener.local_addr()?,
            tls: Arc::new(tls),
            root_pem,
            root_der,
            running: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<PipedConnection>>(16);
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let pumps: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let pumps_in_loop = pumps.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, conn_tx) = (acceptor.clone(), conn_tx.clone());
                let pump = tokio::spawn(async move {
                    // A client that fails the handshake is simply not served.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (near, mut far) = tokio::io::duplex(64 * 1024);
                    if conn_tx.send(Ok(PipedConnection(near))).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut far).await;
                    }
                });
                lock(&pumps_in_loop).push(pump.abort_handle());
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = AggregatedDiscoveryServiceServer::new(Service(self.shared.clone()));
        let serve = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async {
                    let _ = stopped.await;
                })
                .await;
        });
        *lock(&self.running) = Some(Running {
            accept,
            pumps,
            serve,
            stop,
        });
    }

    /// `https://localhost:<port>`: the certificate is valid for `localhost`.
    pub fn address(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root that signed the server certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The request metadata (headers) of every stream opened so far.
    pub fn stream_metadata(&self) -> Vec<MetadataMap> {
        lock(&self.shared.metadata).clone()
    }

    /// How many streams were opened so far (open or not).
    pub fn streams_opened(&self) -> u64 {
        self.shared.next_stream.load(Ordering::SeqCst)
    }

    /// Streams whose client is still there.
    pub fn open_streams(&self) -> usize {
        let mut streams = lock(&self.shared.streams);
        streams.retain(|(_, tx)| !tx.is_closed());
        streams.len()
    }

    /// Sends one response to every open stream; returns its nonce. Fails if
    /// no stream is open.
    pub async fn push(
        &self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<String> {
        let nonce = format!(
            "n{}",
            self.shared.next_nonce.fetch_add(1, Ordering::SeqCst) + 1
        );
        let response = DeltaDiscoveryResponse {
            system_version_info: String::new(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            removed_resources: removed,
        };
        let senders: Vec<_> = lock(&self.shared.streams)
            .iter()
            .map(|(_, tx)| tx.clone())
            .collect();
        let mut sent = 0;
        for tx in senders {
            if tx.send(Ok(response.clone())).await.is_ok() {
                sent += 1;
            }
        }
        if sent == 0 {
            return Err(anyhow!("no open xDS stream to push {type_url} to"));
        }
        Ok(nonce)
    }

    /// Fails every open stream with UNAVAILABLE (the connection stays up).
    pub fn fail_streams(&self) {
        for (_, tx) in lock(&self.shared.streams).drain(..) {
            let _ = tx.try_send(Err(Status::unavailable(
                "stream dropped by the test server",
            )));
        }
    }

    /// Ends every open stream cleanly (OK status), as a server does when it
    /// rebalances its clients.
    pub fn end_streams(&self) {
        lock(&self.shared.streams).clear();
    }

    /// Stops the server: open streams fail, connections close, the port
    /// refuses connections until [`resume`](Self::resume).
    pub async fn stop(&self) {
        self.fail_streams();
        let running = lock(&self.running).take();
        if let Some(r) = running {
            r.accept.abort();
            for pump in lock(&r.pumps).drain(..) {
                pump.abort();
            }
            let _ = r.stop.send(());
            let _ = r.serve.await;
        }
    }

    /// Serves again on the same port, with the same certificate.
    pub async fn resume(&self) -> Result<()> {
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("rebinding {}", self.addr))?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.running).take() {
            r.accept.abort();
            for pump in lock(&r.pumps).drain(..) {
                pump.abort();
            }
            r.serve.abort();
        }
    }
}

/// A resource entry with `message` as its body.
pub fn resource(
    name: &str,
    version: &str,
    type_url: &str,
    message: &impl prost::Message,
) -> Resource {
    Resource {
        version: version.to_string(),
        resource: Some(prost_types::Any {
            type_url: type_url.to_string(),
            value: message.encode_to_vec(),
        }),
        name: name.to_string(),
        ..Default::default()
    }
}

/// A root and a leaf for `localhost` signed by it.
fn localhost_tls() -> Result<(ServerConfig, String, CertificateDer<'static>)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let root_key = KeyPair::generate()?;
    let mut root_params = CertificateParams::new(Vec::<String>::new())?;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "xds test root");
    let root = root_params.self_signed(&root_key)?;
    let leaf_key = KeyPair::generate()?;
    let leaf_params = CertificateParams::new(vec!["localhost".to_string()])?;
    let leaf = leaf_params.signed_by(&leaf_key, &root, &root_key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, root.pem(), root.der().clone()))
}
