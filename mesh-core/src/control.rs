//! The connection to the control plane (istiod or istiod-lite on 15012), shared
//! by the xDS client and the CA client (spec 3.1 and 4): gRPC over TLS 1.3, the
//! server verified by hostname against configured roots (its certificate is a
//! DNS certificate, not a SPIFFE one), no client certificate, and on every call
//! `authorization: Bearer <token>` and `clusterid` metadata.

pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::transport::{Channel, Endpoint};

/// Limits of spec 3.1.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control plane address {address:?} is not a valid https URL: {reason}")]
    Address { address: String, reason: String },
    #[error("control plane roots: {0}")]
    Roots(String),
    #[error("reading token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata {name:?} has a value that is not valid ASCII header text")]
    Metadata { name: String },
}

/// Where the bearer token comes from. A file is read on every call, because
/// projected service-account tokens are rotated in place.
#[derive(Clone, Debug)]
pub enum TokenSource {
    Literal(String),
    File(PathBuf),
}

impl TokenSource {
    pub fn read(&self) -> Result<String, ControlError> {
        match self {
            TokenSource::Literal(token) => Ok(token.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| ControlError::Token {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// How to reach and authenticate to the control plane.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `https://host:port`.
    pub address: String,
    /// Name checked against the server certificate; the URL's host when unset
    /// (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`).
    pub server_name: Option<String>,
    pub roots: Vec<CertificateDer<'static>>,
    pub token: Option<TokenSource>,
    pub cluster_id: String,
    /// Extra metadata sent on every call (`XDS_HEADER_<name>` / `CA_HEADER_<name>`).
    pub headers: Vec<(String, String)>,
    /// `SO_MARK` for the connection, so a proxy running inside a captured
    /// network namespace reaches the control plane without being redirected
    /// to itself.
    pub mark: Option<u32>,
}

impl ControlPlane {
    /// A lazily connecting channel: the first call connects, and a broken
    /// connection is re-established on the next call.
    pub fn channel(&self) -> Result<Channel, ControlError> {
        let uri: Uri =
            self.address
                .parse()
                .map_err(|e: http::uri::InvalidUri| ControlError::Address {
                    address: self.address.clone(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("https") {
            return Err(ControlError::Address {
                address: self.address.clone(),
                reason: "the scheme must be https (TLS is mandatory)".into(),
            });
        }
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| ControlError::Address {
                address: self.address.clone(),
                reason: format!("{name:?} is not a valid server name"),
            })?;
        let tls = Arc::new(self.tls_config()?);
        let port = uri.port_u16().unwrap_or(443);
        let target = format!("{}:{port}", uri.host().unwrap_or_default());
        let mark = self.mark;
        let connector = tower::service_fn(move |_: Uri| {
            let tls = tls.clone();
            let server_name = server_name.clone();
            let target = target.clone();
            async move {
                let tcp = connect(&target, mark).await?;
                let _ = tcp.set_nodelay(true);
                let stream = TlsConnector::from(tls).connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| ControlError::Address {
                address: self.address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    fn tls_config(&self) -> Result<ClientConfig, ControlError> {
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            roots
                .add(root.clone())
                .map_err(|e| ControlError::Roots(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ControlError::Roots(
                "no root certificate to verify the control plane with".into(),
            ));
        }
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ControlError::Roots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![crate::tls::ALPN_H2.to_vec()];
        Ok(config)
    }

    /// Adds the bearer token, cluster id and extra headers to a request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ControlError> {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.token {
            let value = format!("Bearer {}", token.read()?);
            insert(metadata, "authorization", &value)?;
        }
        if !self.cluster_id.is_empty() {
            insert(metadata, "clusterid", &self.cluster_id)?;
        }
        for (name, value) in &self.headers {
            insert(metadata, name, value)?;
        }
        Ok(())
    }
}

/// Resolves `target` and connects to the first address that answers, with
/// the socket mark set before the SYN goes out.
async fn connect(target: &str, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(mark) = mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{target} resolves to no address"),
        )
    }))
}

fn insert(
    metadata: &mut tonic::metadata::MetadataMap,
    name: &str,
    value: &str,
) -> Result<(), ControlError> {
    let bad = || ControlError::Metadata {
        name: name.to_string(),
    };
    let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
    let value: AsciiMetadataValue = value.parse().map_err(|_| bad())?;
    metadata.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(address: &str) -> ControlPlane {
        let ca = crate::tls::CertificateAuthority::generate("test").unwrap();
        ControlPlane {
            address: address.into(),
            server_name: None,
            roots: vec![ca.root_der().clone()],
            token: Some(TokenSource::Literal("t0k".into())),
            cluster_id: "Kubernetes".into(),
            headers: vec![("X-Extra".into(), "1".into())],
            mark: None,
        }
    }

    #[tokio::test]
    async fn plaintext_and_malformed_addresses_are_refused() {
        let err = plane("http://localhost:15012").channel().unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        assert!(plane("https://bad host:1").channel().is_err());
        assert!(plane("https://localhost:15012").channel().is_ok());
    }

    #[test]
    fn metadata_carries_token_cluster_and_headers() {
        let mut request = tonic::Request::new(());
        plane("https://localhost:15012")
            .authorize(&mut request)
            .unwrap();
        let m = request.metadata();
        assert_eq!(m.get("authorization").unwrap(), "Bearer t0k");
        assert_eq!(m.get("clusterid").unwrap(), "Kubernetes");
        assert_eq!(m.get("x-extra").unwrap(), "1");
    }

    #[test]
    fn a_missing_token_file_names_the_file() {
        let err = TokenSource::File("/nonexistent/token".into())
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }
}
