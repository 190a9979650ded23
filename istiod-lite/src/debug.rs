//! What the debug endpoints show: the resources as pushed, and the registry.

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::Address;
use prost::Message;
use serde_json::{Value, json};

use crate::model::Store;
use crate::registry::dir::DocumentError;
use crate::xds::Snapshot;

/// Every resource of the current snapshot with its version, decoded.
pub fn config_dump(snapshot: &Snapshot) -> Value {
    let mut types = serde_json::Map::new();
    for (type_url, resources) in &snapshot.types {
        let mut out = serde_json::Map::new();
        for (name, resource) in resources.iter() {
            let decoded = decode(type_url, &resource.body().value);
            out.insert(
                name.to_string(),
                json!({"version": resource.version, "resource": decoded}),
            );
        }
        types.insert(type_url.clone(), Value::Object(out));
    }
    json!({ "published": snapshot.published_at.is_some(), "types": types })
}

fn decode(type_url: &str, bytes: &[u8]) -> Value {
    let text = match type_url {
        mesh_api::ADDRESS_TYPE_URL => Address::decode(bytes).map(|m| format!("{m:?}")),
        mesh_api::AUTHORIZATION_TYPE_URL => Authorization::decode(bytes).map(|m| format!("{m:?}")),
        _ => return json!({"bytes": bytes.len()}),
    };
    match text {
        Ok(text) => Value::String(text),
        Err(e) => json!({"undecodable": e.to_string()}),
    }
}

/// Object counts per kind, and the documents the directory source refused.
pub fn registry(store: &Store, errors: Vec<DocumentError>) -> Value {
    let counts: serde_json::Map<String, Value> = store
        .counts()
        .into_iter()
        .map(|(kind, n)| (kind.name().to_string(), json!(n)))
        .collect();
    let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    json!({ "objects": counts, "refused_documents": errors })
}
