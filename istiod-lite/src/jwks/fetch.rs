//! One key set fetched over HTTP or HTTPS: a plain GET on a fresh
//! connection (a few requests per issuer per 20 minutes do not need a
//! pool), each request bounded by a timeout and its body by a size cap.
//! HTTPS verifies the server against the system's roots, with TLS 1.2 and
//! 1.3 as public identity providers serve them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{JwksSource, KeySetError, discovery_uri, key_set};

/// Largest response read; a key set is a few kilobytes.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not an http or https URL with a host")]
    BadUri(String),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("reading the response: {0}")]
    Body(String),
    #[error("{uri} answered HTTP {status}")]
    Status { uri: String, status: u16 },
    #[error("{uri} sent more than {max} bytes")]
    TooLarge { uri: String, max: usize },
    #[error("{uri} did not answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
    #[error("{uri} is not a JSON Web Key Set: {source}")]
    KeySet { uri: String, source: KeySetError },
    #[error("the discovery document {uri} has no \"jwks_uri\"")]
    NoJwksUri { uri: String },
}

/// Fetches key sets; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<ClientConfig>,
    max_bytes: usize,
}

impl Fetcher {
    pub fn new(tls: Arc<ClientConfig>, max_bytes: usize) -> Self {
        Fetcher { tls, max_bytes }
    }

    /// Verifies HTTPS servers against the system's roots (those that
    /// cannot be read are skipped; with none, HTTPS fetches fail).
    pub fn with_system_roots() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system's root certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system roots for fetching key sets");
        Fetcher::new(Arc::new(client_config(roots)), DEFAULT_MAX_BYTES)
    }

    /// The key set of `source` and the URI it was read from; each request
    /// may take up to `timeout`.
    pub async fn key_set(
        &self,
        source: &JwksSource,
        timeout: Duration,
    ) -> Result<(String, String), FetchError> {
        let uri = match source {
            JwksSource::Uri(uri) => uri.clone(),
            JwksSource::Discovery(issuer) => {
                let at = discovery_uri(issuer);
                let body = self.get(&at, timeout).await?;
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|doc| doc.get("jwks_uri")?.as_str().map(str::to_string))
                    .ok_or(FetchError::NoJwksUri { uri: at })?
            }
        };
        let body = self.get(&uri, timeout).await?;
        let text = String::from_utf8_lossy(&body);
        match key_set(&text) {
            Ok(jwks) => Ok((uri, jwks)),
            Err(source) => Err(FetchError::KeySet { uri, source }),
        }
    }

    /// The body of a 200 answer to `GET uri`.
    pub async fn get(&self, uri: &str, timeout: Duration) -> Result<Bytes, FetchError> {
        match tokio::time::timeout(timeout, self.get_unbounded(uri)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                uri: uri.to_string(),
                timeout,
            }),
        }
    }

    async fn get_unbounded(&self, text: &str) -> Result<Bytes, FetchError> {
        let bad = || FetchError::BadUri(text.to_string());
        let uri: http::Uri = text.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // `[::1]` in a URL is `::1` to connect to and to name in TLS.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).ok_or_else(bad)?;
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|source| FetchError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, &authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "istiod-lite")
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad())?;
        if https {
            let name = ServerName::try_from(bare_host.to_string()).map_err(|_| bad())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| FetchError::Tls {
                    host: bare_host.to_string(),
                    source,
                })?;
            self.exchange(TokioIo::new(tls), request, text).await
        } else {
            self.exchange(TokioIo::new(tcp), request, text).await
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        request: http::Request<Empty<Bytes>>,
        uri: &str,
    ) -> Result<Bytes, FetchError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        // The connection is driven beside the request and dropped with it.
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            if status != http::StatusCode::OK {
                return Err(FetchError::Status {
                    uri: uri.to_string(),
                    status: status.as_u16(),
                });
            }
            let too_large = || FetchError::TooLarge {
                uri: uri.to_string(),
                max: self.max_bytes,
            };
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_bytes as u64) {
                return Err(too_large());
            }
            match Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
            {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
                Err(e) => Err(FetchError::Body(e.to_string())),
            }
        };
        tokio::pin!(connection);
        tokio::pin!(exchange);
        let mut connection_open = true;
        loop {
            tokio::select! {
                result = &mut exchange => return result,
                // A connection that ends cleanly first leaves the request to
                // finish or fail with hyper's reason.
                done = &mut connection, if connection_open => {
                    connection_open = false;
                    done?;
                }
            }
        }
    }
}

/// rustls with aws-lc-rs, TLS 1.2 and 1.3, HTTP/1.1.
pub fn client_config(roots: rustls::RootCertStore) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
