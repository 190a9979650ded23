//! An in-process Kubernetes API server speaking the real HTTP protocol, for
//! testing the kube source with kube-rs's own client: list (cluster-wide and
//! per namespace) with `resourceVersion` in the list metadata; watch as a
//! chunked stream of newline-delimited JSON events replayed from a history,
//! with bookmarks; 410 Gone as an `ERROR` event when a watch asks for a
//! version older than the kept history (or on command); 404 for kinds not
//! installed; merge patches (objects and the status subresource) and
//! server-side apply patches (creating missing objects), recorded.
//!
//! Plain HTTP on loopback: what is under test is the watch protocol, not TLS.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

mod serve;

type Body = BoxBody<Bytes, io::Error>;
type Chunk = Result<Frame<Bytes>, io::Error>;

/// One kind the server serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// `/api/v1` or `/apis/{group}/{version}`.
    pub prefix: String,
    pub plural: String,
    pub api_version: String,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceType {
    /// The cluster-wide collection path, e.g. `/api/v1/pods`; also the key
    /// the test controls use.
    pub fn collection(&self) -> String {
        format!("{}/{}", self.prefix, self.plural)
    }
}

/// A PATCH the server received.
#[derive(Clone, Debug)]
pub struct RecordedPatch {
    pub path: String,
    pub content_type: String,
    pub body: Value,
}

/// The server's objects and open watches; test controls act on it under
/// one lock, so a group of changes is atomic with respect to watchers.
pub struct ApiState {
    revision: u64,
    /// Watches asking for a version below this get 410 Gone.
    history_floor: u64,
    collections: BTreeMap<String, Collection>,
    watches: Vec<OpenWatch>,
    list_calls: HashMap<String, usize>,
    watch_versions: HashMap<String, Vec<String>>,
    patches: Vec<RecordedPatch>,
}

struct Collection {
    resource: ResourceType,
    /// By (namespace, name).
    objects: BTreeMap<(String, String), Value>,
    history: Vec<HistoryEntry>,
}

struct HistoryEntry {
    revision: u64,
    namespace: String,
    line: Bytes,
}

struct OpenWatch {
    collection: String,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Chunk>,
}

impl ApiState {
    /// Starts serving a kind (as if its CRD were installed).
    pub fn install(&mut self, resource: ResourceType) {
        self.collections
            .entry(resource.collection())
            .or_insert_with(|| Collection {
                resource,
                objects: BTreeMap::new(),
                history: Vec::new(),
            });
    }

    /// Creates or replaces an object (found by its apiVersion and kind),
    /// stamping a new resourceVersion; open watches see ADDED or MODIFIED.
    pub fn apply(&mut self, mut object: Value) {
        let collection = self.collection_of(&object);
        self.revision += 1;
        let revision = self.revision.to_string();
        let metadata = object["metadata"]
            .as_object_mut()
            .expect("object without metadata");
        metadata.insert("resourceVersion".into(), revision.into());
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = metadata["name"]
            .as_str()
            .expect("object without name")
            .to_string();
        let objects = &mut self.collections.get_mut(&collection).unwrap().objects;
        let type_ = match objects.insert((namespace, name), object.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        self.record(&collection, type_, object);
    }

    /// Deletes an object; open watches see DELETED. Returns whether it existed.
    pub fn delete(&mut self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let collection = self.collection_of(&json!({"apiVersion": api_version, "kind": kind}));
        let objects = &mut self.collections.get_mut(&collection).unwrap().objects;
        let Some(mut object) = objects.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        self.revision += 1;
        object["metadata"]["resourceVersion"] = self.revision.to_string().into();
        self.record(&collection, "DELETED", object);
        true
    }

    /// Forgets the watch history: a watch from any earlier version gets
    /// 410 Gone, as after an etcd compaction.
    pub fn expire_history(&mut self) {
        self.history_floor = self.revision;
        for collection in self.collections.values_mut() {
            collection.history.clear();
        }
    }

    /// Cuts every open watch connection mid-stream (no final chunk).
    pub fn drop_watches(&mut self) {
        for watch in self.watches.drain(..) {
            let _ = watch.tx.send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "dropped by test",
            )));
        }
    }

    /// Ends every open watch cleanly, as the server's watch timeout does.
    pub fn close_watches(&mut self) {
        self.watches.clear();
    }

    /// Sends a 410 Gone `ERROR` event on every open watch and ends them.
    pub fn send_gone(&mut self) {
        let line = event_line("ERROR", &gone_status());
        for watch in self.watches.drain(..) {
            let _ = watch.tx.send(Ok(Frame::data(line.clone())));
        }
    }

    /// Sends a BOOKMARK at the current revision on every open watch.
    pub fn send_bookmarks(&mut self) {
        let revision = self.revision.to_string();
        for watch in &self.watches {
            let resource = &self.collections[&watch.collection].resource;
            let bookmark = json!({"apiVersion": resource.api_version, "kind": resource.kind,
                                  "metadata": {"resourceVersion": revision}});
            let _ = watch
                .tx
                .send(Ok(Frame::data(event_line("BOOKMARK", &bookmark))));
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn collection_of(&self, object: &Value) -> String {
        let (api_version, kind) = (&object["apiVersion"], &object["kind"]);
        self.collections
            .iter()
            .find(|(_, c)| c.resource.api_version == *api_version && c.resource.kind == *kind)
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| panic!("{api_version} {kind} is not installed"))
    }

    fn record(&mut self, collection: &str, type_: &str, object: Value) {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let line = event_line(type_, &object);
        self.watches.retain(|watch| {
            if watch.collection != collection
                || watch.namespace.as_ref().is_some_and(|ns| *ns != namespace)
            {
                return true;
            }
            watch.tx.send(Ok(Frame::data(line.clone()))).is_ok()
        });
        self.collections
            .get_mut(collection)
            .unwrap()
            .history
            .push(HistoryEntry {
                revision: self.revision,
                namespace,
                line,
            });
    }
}

/// The running server; dropping it closes the listener and every connection.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start(installed: impl IntoIterator<Item = ResourceType>) -> FakeApiServer {
        let mut state = ApiState {
            revision: 1,
            history_floor: 0,
            collections: BTreeMap::new(),
            watches: Vec::new(),
            list_calls: HashMap::new(),
            watch_versions: HashMap::new(),
            patches: Vec::new(),
        };
        for resource in installed {
            state.install(resource);
        }
        let state = Arc::new(Mutex::new(state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(accept(listener, state.clone()));
        FakeApiServer { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs test controls atomically.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut ApiState) -> T) -> T {
        f(&mut self.lock())
    }

    /// Cuts every watch, then runs `f` while no watcher can reconnect: what
    /// `f` changes happens "while the watch was down".
    pub fn outage<T>(&self, f: impl FnOnce(&mut ApiState) -> T) -> T {
        let mut state = self.lock();
        state.drop_watches();
        f(&mut state)
    }

    pub fn apply(&self, object: Value) {
        self.lock().apply(object)
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.lock().delete(api_version, kind, namespace, name)
    }

    /// List requests served for a collection (404s included).
    pub fn list_calls(&self, collection: &str) -> usize {
        self.lock().list_calls.get(collection).copied().unwrap_or(0)
    }

    /// The `resourceVersion` of every watch request on a collection, in order.
    pub fn watch_versions(&self, collection: &str) -> Vec<String> {
        self.lock()
            .watch_versions
            .get(collection)
            .cloned()
            .unwrap_or_default()
    }

    /// Watches currently streaming from a collection.
    pub fn open_watches(&self, collection: &str) -> usize {
        let mut state = self.lock();
        state.watches.retain(|watch| !watch.tx.is_closed());
        state
            .watches
            .iter()
            .filter(|watch| watch.collection == collection)
            .count()
    }

    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.lock().patches.clone()
    }

    /// An object as the server holds it.
    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .collections
            .get(collection)?
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept(listener: TcpListener, state: Arc<Mutex<ApiState>>) {
    // Owned here so that aborting this task also ends every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(serve::handle(request, &state).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn gone_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "too old resource version", "reason": "Expired", "code": 410})
}
