//! The actor that owns the ADS stream: subscribe, apply, ACK/NACK, reconnect.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{
    Backoff, Handler, Handlers, Rejection, Resource, Termination, TypeVersions, Update, XdsError,
    XdsMetrics, XdsStatus, nack_message,
};
use crate::control::ControlPlane;
use crate::drain::DrainWatcher;

/// Spec 3.1: the largest message accepted from the control plane.
pub const MAX_MESSAGE_BYTES: usize = 200 << 20;

/// Handle and task body of the delta ADS client.
#[derive(Debug)]
pub struct XdsClient {
    control: ControlPlane,
    /// Made on the runtime that runs the client (the channel's worker task
    /// lives there), so the client can run on a control runtime of its own.
    channel: Option<Channel>,
    node: Node,
    handlers: Handlers,
    versions: HashMap<String, TypeVersions>,
    status: watch::Sender<XdsStatus>,
    metrics: Arc<XdsMetrics>,
}

/// What one stream got to.
#[derive(Debug, Default)]
struct Attempt {
    opened: bool,
    delivered: bool,
}

/// How one stream ended.
enum StreamEnd {
    /// The server closed the stream cleanly after it had delivered something.
    Clean,
    /// The server closed cleanly without delivering anything, or the stream failed.
    Failed(XdsError),
}

impl XdsClient {
    /// Validates the address and handlers; nothing connects until [`run`](Self::run).
    pub fn new(
        control: ControlPlane,
        node: Node,
        handlers: Vec<Arc<dyn Handler>>,
    ) -> Result<XdsClient, XdsError> {
        if handlers.is_empty() {
            return Err(XdsError::NoHandlers);
        }
        let mut seen = std::collections::HashSet::new();
        for h in &handlers {
            if !seen.insert(h.type_url().to_string()) {
                return Err(XdsError::DuplicateType(h.type_url().to_string()));
            }
        }
        validate(&control)?;
        Ok(XdsClient {
            control,
            channel: None,
            node,
            handlers,
            versions: HashMap::new(),
            status: watch::channel(XdsStatus::default()).0,
            metrics: Arc::default(),
        })
    }

    /// Counts into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: Arc<XdsMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Follows the client's state; valid before and after `run`.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` resolves. Ends within the time the current
    /// handler call takes: nothing else is awaited once shutdown is asked for.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.reconnect_loop() => {}
        }
        self.status.send_modify(|s| s.connected = false);
        tracing::debug!("xDS client stopped");
    }

    /// Spawns [`run`](Self::run), stopping when `drain` starts draining.
    pub fn spawn(self, drain: DrainWatcher) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(async move { drain.draining().await }).await })
    }

    async fn reconnect_loop(&mut self) {
        let mut backoff = Backoff::default();
        // A failure is logged at WARN once per outage; retries are DEBUG.
        let mut failing = false;
        loop {
            let mut attempt = Attempt::default();
            let end = self.stream_once(&mut attempt, &mut backoff).await;
            self.status.send_modify(|s| s.connected = false);
            if attempt.opened {
                failing = false;
            }
            match end {
                StreamEnd::Clean => {
                    tracing::info!("xDS stream closed by the server; reconnecting");
                }
                StreamEnd::Failed(error) => {
                    let message = error.to_string();
                    if failing {
                        tracing::debug!(%error, "xDS reconnect failed");
                    } else {
                        tracing::warn!(%error, "xDS stream failed; reconnecting with backoff");
                    }
                    failing = true;
                    self.status
                        .send_modify(|s| s.last_error = Some(message.clone()));
                    let delay = backoff.next_delay(rand::random::<f64>());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The subscription requests that open a stream, in handler order.
    pub fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.handlers
            .iter()
            .map(|h| DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: h.type_url().to_string(),
                resource_names_subscribe: h.names(),
                initial_resource_versions: self
                    .versions
                    .get(h.type_url())
                    .map(|v| v.initial())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    async fn stream_once(&mut self, attempt: &mut Attempt, backoff: &mut Backoff) -> StreamEnd {
        let initial = self.initial_requests();
        let (tx, rx) = mpsc::channel(initial.len() + 4);
        for r in initial {
            // Capacity is larger than the number of initial requests.
            let _ = tx.try_send(r);
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(e) = self.control.authorize(&mut request) {
            return StreamEnd::Failed(e.into());
        }
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => match self.control.channel() {
                Ok(c) => self.channel.insert(c).clone(),
                Err(e) => return StreamEnd::Failed(e.into()),
            },
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut responses = match client.delta_aggregated_resources(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.metrics.terminated(Termination::ConnectionError);
                return StreamEnd::Failed(XdsError::Stream(Box::new(status)));
            }
        };
        self.status.send_modify(|s| s.connected = true);
        attempt.opened = true;
        tracing::info!(address = %self.control.address, "xDS stream open");
        loop {
            match responses.message().await {
                Ok(Some(response)) => {
                    attempt.delivered = true;
                    backoff.reset();
                    let reply = self.handle(response);
                    if tx.send(reply).await.is_err() {
                        return StreamEnd::Failed(XdsError::RequestsClosed);
                    }
                }
                Ok(None) if attempt.delivered => {
                    self.metrics.terminated(Termination::Complete);
                    return StreamEnd::Clean;
                }
                Ok(None) => {
                    self.metrics.terminated(Termination::Complete);
                    return StreamEnd::Failed(XdsError::Stream(Box::new(
                        tonic::Status::unavailable(
                            "the server closed the stream before sending anything",
                        ),
                    )));
                }
                Err(status) => {
                    self.metrics.terminated(Termination::Error);
                    return StreamEnd::Failed(XdsError::Stream(Box::new(status)));
                }
            }
        }
    }

    /// Applies one response and returns its ACK or NACK.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let type_url = response.type_url.clone();
        let bytes = prost::Message::encoded_len(&response);
        let (update, mut rejections) =
            split_response(response.resources, response.removed_resources);
        match self.handlers.iter().find(|h| h.type_url() == type_url) {
            Some(handler) => {
                let received = update.resources.len();
                rejections.extend(handler.apply(&update));
                self.versions
                    .entry(type_url.clone())
                    .or_default()
                    .record(&update, &rejections);
                tracing::debug!(
                    %type_url,
                    received,
                    removed = update.removed.len(),
                    rejected = rejections.len(),
                    "xDS update applied"
                );
            }
            None => rejections.push(Rejection::new(
                type_url.clone(),
                "type not subscribed by this client",
            )),
        }
        self.metrics.received(&type_url, bytes, rejections.len());
        let error_detail = nack_message(&rejections).map(|message| {
            tracing::warn!(%type_url, %message, "xDS update partly rejected (NACK)");
            RpcStatus {
                // google.rpc.Code INVALID_ARGUMENT.
                code: 3,
                message,
                details: vec![],
            }
        });
        let nack_text = error_detail.as_ref().map(|e| e.message.clone());
        let handled = self.handled_types_with(&type_url);
        self.status.send_modify(|s| {
            if let Some(text) = nack_text {
                s.last_error = Some(format!("NACK {type_url}: {text}"));
            }
            if handled && !s.synced {
                tracing::info!("xDS synced: every subscribed type applied once");
                s.synced = true;
            }
        });
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        }
    }

    /// Whether every handler's type has had a response, counting `type_url`.
    fn handled_types_with(&mut self, type_url: &str) -> bool {
        self.versions.entry(type_url.to_string()).or_default();
        self.handlers
            .iter()
            .all(|h| self.versions.contains_key(h.type_url()))
    }
}

/// The checks `ControlPlane::channel` makes, without creating the channel,
/// so that a bad address fails at construction rather than on every retry.
fn validate(control: &ControlPlane) -> Result<(), XdsError> {
    use crate::control::ControlError;
    let bad = |reason: &str| ControlError::Address {
        address: control.address.clone(),
        reason: reason.into(),
    };
    let uri: http::Uri = control
        .address
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https (TLS is mandatory)").into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host").into());
    }
    if control.roots.is_empty() {
        return Err(ControlError::Roots(
            "no root certificate to verify the control plane with".into(),
        )
        .into());
    }
    Ok(())
}

/// Turns wire resources into an [`Update`]; entries without a body are rejected here.
fn split_response(
    resources: Vec<mesh_api::envoy::service::discovery::v3::Resource>,
    removed: Vec<String>,
) -> (Update, Vec<Rejection>) {
    let mut update = Update {
        resources: Vec::with_capacity(resources.len()),
        removed,
    };
    let mut rejections = Vec::new();
    for r in resources {
        match r.resource {
            Some(body) => update.resources.push(Resource {
                name: r.name,
                version: r.version,
                body,
            }),
            None => rejections.push(Rejection::new(r.name, "resource has no body")),
        }
    }
    (update, rejections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing(&'static str);

    impl Handler for Nothing {
        fn type_url(&self) -> &str {
            self.0
        }
        fn apply(&self, _: &Update) -> Vec<Rejection> {
            Vec::new()
        }
    }

    fn plane(address: &str) -> ControlPlane {
        let ca = crate::tls::CertificateAuthority::generate("test").unwrap();
        ControlPlane {
            address: address.into(),
            server_name: None,
            roots: vec![ca.root_der().clone()],
            token: None,
            cluster_id: String::new(),
            headers: vec![],
            mark: None,
        }
    }

    fn handlers(urls: &[&'static str]) -> Vec<Arc<dyn Handler>> {
        urls.iter()
            .map(|u| Arc::new(Nothing(u)) as Arc<dyn Handler>)
            .collect()
    }

    #[test]
    fn construction_refuses_bad_setups_without_a_runtime() {
        let ok = XdsClient::new(
            plane("https://localhost:15012"),
            Node::default(),
            handlers(&["a", "b"]),
        );
        assert!(ok.is_ok());
        let e = XdsClient::new(
            plane("http://localhost:15012"),
            Node::default(),
            handlers(&["a"]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let mut no_roots = plane("https://localhost:15012");
        no_roots.roots.clear();
        assert!(XdsClient::new(no_roots, Node::default(), handlers(&["a"])).is_err());
        assert!(matches!(
            XdsClient::new(plane("https://localhost:1"), Node::default(), handlers(&["a", "a"])),
            Err(XdsError::DuplicateType(t)) if t == "a"
        ));
        assert!(matches!(
            XdsClient::new(plane("https://localhost:1"), Node::default(), vec![]),
            Err(XdsError::NoHandlers)
        ));
    }

    #[test]
    fn initial_requests_follow_handler_order_with_the_node() {
        let node = Node {
            id: "ztunnel~1.1.1.1~p.n~n.svc.cluster.local".into(),
            ..Default::default()
        };
        let client = XdsClient::new(
            plane("https://localhost:15012"),
            node.clone(),
            handlers(&["first", "second"]),
        )
        .unwrap();
        let reqs = client.initial_requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].type_url, "first");
        assert_eq!(reqs[1].type_url, "second");
        assert!(reqs.iter().all(|r| r.node.as_ref() == Some(&node)
            && r.resource_names_subscribe.is_empty()
            && r.response_nonce.is_empty()));
    }

    #[derive(Debug)]
    struct Named;

    impl Handler for Named {
        fn type_url(&self) -> &str {
            "named"
        }
        fn names(&self) -> Vec<String> {
            vec!["ns/gw".into()]
        }
        fn apply(&self, _: &Update) -> Vec<Rejection> {
            Vec::new()
        }
    }

    #[test]
    fn a_handler_naming_resources_subscribes_to_those_only() {
        let client = XdsClient::new(
            plane("https://localhost:15012"),
            Node::default(),
            vec![Arc::new(Nothing("wild")), Arc::new(Named)],
        )
        .unwrap();
        let reqs = client.initial_requests();
        assert!(reqs[0].resource_names_subscribe.is_empty());
        assert_eq!(reqs[1].resource_names_subscribe, vec!["ns/gw".to_string()]);
    }
}
