//! The gRPC side: authenticates each stream, then runs one task per stream
//! that feeds requests and snapshots to its `ClientState` and sends what
//! that decides.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_core::drain::DrainWatcher;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::client::{ClientState, RequestOutcome};
use super::info::ClientInfo;
use super::metrics::{TypeLabels, XdsMetrics};
use super::push_limit::{DEFAULT_LARGE_PUSHES, HeldSlots, PERMIT_HOLD_MAX, PushLimit, Slot};
use super::service::AdsService;
use super::{PushResponse, Snapshot};
use crate::auth::Authenticate;

/// Responses queued per stream; at most one per type is in flight, so this
/// is never the limit in practice.
const STREAM_BUFFER: usize = 16;

/// What the stream task hands to tonic.
pub(super) type ResponseStream = ReceiverStream<Result<PushResponse, Status>>;

/// The delta ADS service. Cheap to clone. It holds the drain open until it
/// is dropped (with the tonic server that serves it); give admin handlers a
/// [`ConnectedClients`] instead of a clone.
#[derive(Clone, Debug)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

/// The connected streams, for `/debug/clients`. Does not hold the drain open.
#[derive(Clone, Debug, Default)]
pub struct ConnectedClients {
    map: Arc<Mutex<BTreeMap<u64, ClientInfo>>>,
}

impl ConnectedClients {
    /// Every connected stream and what it was sent, by stream id.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock().values().cloned().collect()
    }

    /// The `/debug/clients` body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.list()).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("could not describe the clients: {e}") }),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        // The map holds plain data, valid even if a writer panicked.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Inner {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Option<Arc<dyn Authenticate>>,
    metrics: Arc<XdsMetrics>,
    drain: DrainWatcher,
    clients: ConnectedClients,
    next_stream: AtomicU64,
    push_limit: PushLimit,
    /// Random per server instance, so nonces of a previous instance never
    /// match ours.
    nonce_prefix: String,
    next_nonce: AtomicU64,
}

impl XdsServer {
    /// A server of the snapshots published on `snapshots`. Streams end when
    /// `drain` starts draining; every stream holds a clone of it until it ends.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Option<Arc<dyn Authenticate>>,
        metrics: Arc<XdsMetrics>,
        drain: DrainWatcher,
    ) -> Self {
        XdsServer {
            inner: Arc::new(Inner {
                snapshots,
                auth,
                metrics,
                drain,
                clients: ConnectedClients::default(),
                next_stream: AtomicU64::new(1),
                push_limit: PushLimit::new(DEFAULT_LARGE_PUSHES, PERMIT_HOLD_MAX),
                nonce_prefix: format!("{:08x}", rand::random::<u32>()),
                next_nonce: AtomicU64::new(1),
            }),
        }
    }

    /// At most `slots` large responses in flight at once, each slot held
    /// until the client answers or for `hold_max`. Set before serving.
    pub fn with_large_push_slots(mut self, slots: usize, hold_max: Duration) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("the push limit is set before the server is shared")
            .push_limit = PushLimit::new(slots, hold_max);
        self
    }

    /// The tonic service, with the spec's message size limit.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Every connected stream and what it was sent.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.inner.clients.list()
    }

    /// A handle on the connected streams that outlives the server.
    pub fn connected_clients(&self) -> ConnectedClients {
        self.inner.clients.clone()
    }
}

impl Inner {
    fn nonce(&self) -> String {
        let n = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.nonce_prefix)
    }

    fn labels(&self, snapshot: &Snapshot, type_url: &str) -> TypeLabels {
        let type_url = if snapshot.types.contains_key(type_url) {
            type_url
        } else {
            "other"
        };
        TypeLabels {
            type_url: type_url.to_string(),
        }
    }
}

impl XdsServer {
    /// Authenticates a new stream and starts its task.
    pub(super) async fn open_stream(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let remote = request.remote_addr();
        let caller = match &self.inner.auth {
            Some(auth) => match auth.authenticate(request.metadata()).await {
                Ok(caller) => Some(caller.description),
                Err(e) => {
                    tracing::warn!(?remote, error = %e, "xDS stream refused");
                    return Err(e.into());
                }
            },
            None => None,
        };
        if self.inner.drain.is_draining() {
            return Err(Status::unavailable("the control plane is shutting down"));
        }
        let stream_id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = ClientStream {
            inner: self.inner.clone(),
            drain: self.inner.drain.clone(),
            stream_id,
            caller,
            connected_since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            state: ClientState::default(),
            outbox: VecDeque::new(),
            slots: HeldSlots::default(),
            waiting: None,
        };
        tracing::debug!(stream_id, ?remote, "xDS stream opened");
        tokio::spawn(stream.run(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One stream's task.
struct ClientStream {
    inner: Arc<Inner>,
    drain: DrainWatcher,
    stream_id: u64,
    caller: Option<String>,
    connected_since: u64,
    state: ClientState,
    /// Responses decided but not yet handed to tonic: the first one waits
    /// for a large-push slot while the others queue behind it.
    outbox: VecDeque<PushResponse>,
    slots: HeldSlots,
    /// Set while the first response in the outbox waits for a slot.
    waiting: Option<Waiting>,
}

type Outbox = mpsc::Sender<Result<PushResponse, Status>>;

impl ClientStream {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>, tx: Outbox) {
        let _registered = Registered::new(&self.inner, self.stream_id);
        self.publish_info();
        let mut snapshots = self.inner.snapshots.clone();
        let mut publisher_alive = true;
        let drain = self.drain.clone();
        let draining = drain.draining();
        tokio::pin!(draining);
        let limit = self.inner.push_limit.clone();
        loop {
            let mut slot = None;
            tokio::select! {
                _ = &mut draining => {
                    let _ = tx.try_send(Err(Status::unavailable("the control plane is shutting down")));
                    break;
                }
                _ = tx.closed() => break,
                message = requests.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(status) = self.on_request(&request, &snapshots.borrow()) {
                            let _ = tx.try_send(Err(status));
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(stream_id = self.stream_id, %status, "xDS stream failed");
                        break;
                    }
                },
                changed = snapshots.changed(), if publisher_alive => {
                    // Without a publisher the last snapshot stays in force.
                    publisher_alive = changed.is_ok();
                }
                _ = sleep_until(self.slots.next_expiry()) => {
                    self.slots.release_expired(tokio::time::Instant::now());
                }
                acquired = limit.acquire(), if self.waiting.is_some() => slot = Some(acquired),
            }
            let snapshot = snapshots.borrow_and_update().clone();
            let inner = self.inner.clone();
            let responses = self.state.responses(&snapshot, || inner.nonce());
            self.outbox.extend(responses);
            if !self.flush(slot, &snapshot, &tx, &mut draining).await {
                break;
            }
            self.publish_info();
        }
        tracing::debug!(stream_id = self.stream_id, "xDS stream closed");
    }

    fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<(), Status> {
        let outcome = self.state.on_request(request).map_err(|e| {
            tracing::warn!(stream_id = self.stream_id, error = %e, "xDS request refused");
            Status::invalid_argument(e.to_string())
        })?;
        let type_url = request.type_url.as_str();
        let node = self
            .state
            .node
            .as_ref()
            .map(|n| n.id.as_str())
            .unwrap_or("");
        match outcome {
            RequestOutcome::Opened => {
                if !snapshot.types.contains_key(type_url) && snapshot.published_at.is_some() {
                    tracing::warn!(
                        stream_id = self.stream_id,
                        node,
                        type_url,
                        "subscription to a type this server has no resources for"
                    );
                }
                tracing::debug!(stream_id = self.stream_id, node, type_url, "subscribed");
            }
            RequestOutcome::Acked { published_at } => {
                self.slots.release(type_url);
                if let Some(at) = published_at {
                    let latency = Instant::now().saturating_duration_since(at);
                    self.inner
                        .metrics
                        .push_latency
                        .observe(latency.as_secs_f64());
                }
            }
            RequestOutcome::Nacked { message } => {
                self.slots.release(type_url);
                tracing::warn!(stream_id = self.stream_id, node, type_url, error = %message, "xDS response rejected by the client");
                self.inner
                    .metrics
                    .nacks
                    .get_or_create(&self.inner.labels(snapshot, type_url))
                    .inc();
            }
            RequestOutcome::StaleNonce => {
                tracing::debug!(
                    stream_id = self.stream_id,
                    type_url,
                    nonce = request.response_nonce,
                    "stale nonce ignored"
                );
            }
            RequestOutcome::SubscriptionChanged => {}
        }
        Ok(())
    }

    /// Hands the outbox to tonic in order, until a large response finds no
    /// free slot (`slot` is one just acquired for it); false when the stream
    /// must end (client gone or draining while the client does not read).
    async fn flush(
        &mut self,
        mut slot: Option<Slot>,
        snapshot: &Snapshot,
        tx: &Outbox,
        draining: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> bool {
        let inner = self.inner.clone();
        while let Some(response) = self.outbox.front() {
            let bytes = response.encoded_len();
            if PushLimit::needs_slot(bytes) {
                match slot.take().or_else(|| inner.push_limit.try_acquire()) {
                    Some(slot) => self.slots.hold(&response.type_url, slot),
                    None => {
                        // Wait in the stream's loop, which keeps reading
                        // the client's answers (they free slots).
                        self.waiting
                            .get_or_insert_with(|| Waiting::new(&inner.metrics));
                        return true;
                    }
                }
            }
            self.waiting = None;
            let response = self.outbox.pop_front().expect("peeked");
            let labels = inner.labels(snapshot, &response.type_url);
            let resources = response.resources.len() as u64;
            tokio::select! {
                sent = tx.send(Ok(response)) => if sent.is_err() { return false },
                _ = &mut *draining => return false,
            }
            inner.metrics.pushes.get_or_create(&labels).inc();
            inner
                .metrics
                .push_resources
                .get_or_create(&labels)
                .inc_by(resources);
            inner
                .metrics
                .push_bytes
                .get_or_create(&labels)
                .inc_by(bytes as u64);
        }
        true
    }

    fn publish_info(&self) {
        let info = ClientInfo::describe(
            self.stream_id,
            self.caller.as_deref(),
            self.connected_since,
            &self.state,
        );
        self.inner.clients.lock().insert(self.stream_id, info);
    }
}

/// Resolves at `at`, never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A stream whose next response waits for a large-push slot, counted in the
/// gauge while it waits.
struct Waiting {
    metrics: Arc<XdsMetrics>,
}

impl Waiting {
    fn new(metrics: &Arc<XdsMetrics>) -> Self {
        metrics.pushes_waiting.inc();
        Waiting {
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.metrics.pushes_waiting.dec();
    }
}

/// A stream counted in the gauge and listed in the clients; undone on drop,
/// so a stream task that ends in any way leaves nothing behind.
struct Registered {
    inner: Arc<Inner>,
    stream_id: u64,
}

impl Registered {
    fn new(inner: &Arc<Inner>, stream_id: u64) -> Self {
        inner.metrics.clients.inc();
        Registered {
            inner: inner.clone(),
            stream_id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.inner.clients.lock().remove(&self.stream_id);
        self.inner.metrics.clients.dec();
    }
}
