//! `proxy.inpod`: the shared (in-pod) mode, where one ztunnel serves every pod
//! the node agent hands it over ZDS (spec 5), with a listener set inside each
//! pod's network namespace. Checked here so that a config that could not serve
//! pods fails at load, naming the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ProxyConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InpodConfig {
    /// The node agent's ZDS socket (`INPOD_UDS`).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Trust domain of the pods' identities
    /// (`spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Connect to apps from the original client's address (`IP_TRANSPARENT`),
    /// so the app sees who called it; off: from the pod's own address.
    #[serde(default = "default_true")]
    pub original_source: bool,
}

fn default_socket() -> PathBuf {
    PathBuf::from(mesh_core::zds::DEFAULT_SOCKET)
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_true() -> bool {
    true
}

/// `Err((field, message))` naming the first problem with the mode settings.
pub(super) fn validate(proxy: &ProxyConfig) -> Result<(), (String, String)> {
    let Some(inpod) = &proxy.inpod else {
        if proxy.workload.is_none() {
            return Err((
                "proxy.workload".into(),
                "set the workload this ztunnel serves (dedicated mode), or proxy.inpod \
                 (shared mode: pods come from the node agent)"
                    .into(),
            ));
        }
        return Ok(());
    };
    if proxy.workload.is_some() {
        return Err((
            "proxy.workload".into(),
            "must be absent with proxy.inpod: the node agent names the pods to serve".into(),
        ));
    }
    if inpod.socket.as_os_str().is_empty() {
        return Err(("proxy.inpod.socket".into(), "must not be empty".into()));
    }
    mesh_core::Identity::for_workload(&inpod.trust_domain, "ns", "sa")
        .map_err(|e| ("proxy.inpod.trustDomain".into(), e.to_string()))?;
    let certs = &proxy.certificates;
    if !certs.files.is_empty() {
        return Err((
            "proxy.certificates.files".into(),
            "fixed certificates cannot serve pods that arrive later; use controlPlane \
             (with impersonate: true) or ca"
                .into(),
        ));
    }
    if let Some(cp) = &certs.control_plane
        && !cp.impersonate
    {
        return Err((
            "proxy.certificates.controlPlane.impersonate".into(),
            "must be true with proxy.inpod: ztunnel asks for its pods' identities with its \
             own credential"
                .into(),
        ));
    }
    if proxy.packet_mark.is_none() {
        return Err((
            "proxy.packetMark".into(),
            "must be set with proxy.inpod: the pods' redirection rules let ztunnel's own \
             traffic through by this mark"
                .into(),
        ));
    }
    let l = &proxy.listeners;
    for (field, addr) in [
        ("outbound", l.outbound),
        ("inbound", l.inbound),
        ("inboundPlaintext", l.inbound_plaintext),
    ] {
        if addr.port() == 0 {
            return Err((
                format!("proxy.listeners.{field}"),
                "port 0 cannot be used with proxy.inpod: every pod's redirection rules \
                 name a fixed port"
                    .into(),
            ));
        }
        if !addr.ip().is_unspecified() {
            return Err((
                format!("proxy.listeners.{field}"),
                format!(
                    "{addr}: with proxy.inpod only the port is used (bound on the wildcard \
                     address in each pod); write [::]:{}",
                    addr.port()
                ),
            ));
        }
    }
    Ok(())
}
