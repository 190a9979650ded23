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
    /// The Kubernetes node this ztunnel runs on; default: the `NODE_NAME`
    /// environment variable (the downward API sets it in a DaemonSet).
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Extra metadata on every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This ztunnel's own pod, for the node id.
    #[serde(default = "default_pod_name")]
    pub pod_name: String,
    #[serde(default = "default_pod_namespace")]
    pub pod_namespace: String,
    /// Sent as `INSTANCE_IPS`; default: the `INSTANCE_IP` environment variable,
    /// else `1.1.1.1` as Istio sends.
    #[serde(default = "default_instance_ip")]
    pub instance_ip: Option<IpAddr>,
    /// Extra node metadata (Istio's `ISTIO_META_<K>`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_cluster() -> String {
    "Kubernetes".into()
}
// One config file serves every node of a DaemonSet, so what differs per pod
// comes from the environment, as Istio's ztunnel takes it.
fn default_node_name() -> String {
    env_or("NODE_NAME", "")
}
fn default_pod_name() -> String {
    env_or("POD_NAME", "ztunnel")
}
fn default_pod_namespace() -> String {
    env_or("POD_NAMESPACE", "istio-system")
}
fn default_instance_ip() -> Option<IpAddr> {
    std::env::var("INSTANCE_IP").ok()?.parse().ok()
}

fn env_or(var: &str, fallback: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => fallback.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::env_or;

    #[test]
    fn per_pod_defaults_come_from_the_environment_when_set() {
        let path = std::env::var("PATH").expect("PATH is set in every test process");
        assert_eq!(env_or("PATH", "fallback"), path);
        assert_eq!(
            env_or("AMBIT_SURELY_UNSET_VARIABLE_FOR_THIS_TEST", "fallback"),
            "fallback"
        );
    }
}
