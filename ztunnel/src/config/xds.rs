//! `proxy.xds`: where the control plane is and how to authenticate to it
//! (spec 3.1). Validated with the rest of the file; the token itself is never
//! shown in `/config_dump`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct XdsConfig {
    /// `https://host:port` of istiod or istiod-lite (15012).
    pub address: String,
    /// Name to verify the server certificate against; the address's host when unset.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file with the roots that signed the control plane's certificate.
    pub root_cert: PathBuf,
    /// Bearer token, literal.
    #[serde(default, serialize_with = "redact")]
    pub token: Option<String>,
    /// Or a file holding the token, re-read on every connect (rotated tokens).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Sent as `clusterid` metadata and `CLUSTER_ID` node metadata.
    #[serde(default = "default_cluster")]
    pub cluster_id: String,
    /// The Kubernetes node this ztunnel runs on (`NODE_NAME`).
    #[serde(default)]
    pub node_name: String,
    /// Extra metadata on every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This ztunnel's own pod, for the node id.
    #[serde(default = "default_pod_name")]
    pub pod_name: String,
    #[serde(default = "default_pod_namespace")]
    pub pod_namespace: String,
    /// Sent as `INSTANCE_IPS`; `1.1.1.1` when unset, as Istio does.
    #[serde(default)]
    pub instance_ip: Option<IpAddr>,
    /// Extra node metadata (Istio's `ISTIO_META_<K>`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_cluster() -> String {
    "Kubernetes".into()
}
fn default_pod_name() -> String {
    "ztunnel".into()
}
fn default_pod_namespace() -> String {
    "istio-system".into()
}

fn redact<S: serde::Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl XdsConfig {
    /// `Err((field, message))` naming the first problem.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("proxy.xds.{f}");
        match self.address.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(_) => {
                return Err((
                    field("address"),
                    format!(
                        "{:?} must be an https://host:port URL (TLS is mandatory)",
                        self.address
                    ),
                ));
            }
            Err(e) => return Err((field("address"), format!("{:?}: {e}", self.address))),
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err((field("token"), "set token or tokenFile, not both".into()));
        }
        if self.cluster_id.is_empty() {
            return Err((field("clusterId"), "must not be empty".into()));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
                return Err((
                    field(&format!("headers.{name}")),
                    "not a valid header name".into(),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err((
                    field(&format!("headers.{name}")),
                    "the value is not valid header text".into(),
                ));
            }
        }
        Ok(())
    }
}
