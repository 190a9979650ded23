//! A minimal delta ADS client for the scale benchmark: subscribes to the
//! workload types like a ztunnel (spec 3.3), ACKs every response at once and
//! reports each response's arrival, size and resource count.

use std::time::Instant;

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_core::control::ControlPlane;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The node of a ztunnel (spec 3.3) on `node_name`.
fn node(client: usize, node_name: &str) -> Node {
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    };
    let pod = format!("ztunnel-{client}");
    Node {
        id: format!("ztunnel~10.0.0.1~{pod}.istio-system~istio-system.svc.cluster.local"),
        metadata: Some(prost_types::Struct {
            fields: [
                ("NAME".to_string(), string(&pod)),
                ("NAMESPACE".to_string(), string("istio-system")),
                ("NODE_NAME".to_string(), string(node_name)),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

/// One response as the client saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub client: usize,
    pub at: Instant,
    pub type_url: String,
    pub bytes: usize,
    pub resources: usize,
    pub removed: usize,
}

/// Runs one client until the stream ends or the receiver of `events` is gone.
pub async fn run(
    client: usize,
    control: ControlPlane,
    node_name: String,
    events: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<()> {
    let channel = control.channel()?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(200 * 1024 * 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        tx.send(DeltaDiscoveryRequest {
            node: Some(node(client, &node_name)),
            type_url: type_url.into(),
            ..Default::default()
        })?;
    }
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    control.authorize(&mut request)?;
    let mut responses = ads.delta_aggregated_resources(request).await?.into_inner();
    while let Some(response) = responses.next().await {
        let response: DeltaDiscoveryResponse = response?;
        let at = Instant::now();
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })?;
        let seen = Received {
            client,
            at,
            type_url: response.type_url.clone(),
            bytes: response.encoded_len(),
            resources: response.resources.len(),
            removed: response.removed_resources.len(),
        };
        if events.send(seen).is_err() {
            break;
        }
    }
    Ok(())
}
