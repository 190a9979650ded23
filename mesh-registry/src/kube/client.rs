//! Building the `kube::Client` the source watches with.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where the API server's address and credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientSource {
    /// `kube::Client::try_default()`: the kubeconfig named by `KUBECONFIG` or
    /// `~/.kube/config`, else the in-cluster service account.
    #[default]
    Infer,
    /// This kubeconfig file, its current context.
    Kubeconfig(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Kubernetes client configuration found (neither kubeconfig nor in-cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building the Kubernetes client for {cluster_url}: {source}")]
    Build {
        cluster_url: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// Loads the configuration and builds the client.
pub async fn build_client(source: &ClientSource) -> Result<kube::Client, ClientError> {
    let config = match source {
        ClientSource::Infer => kube::Config::infer().await.map_err(ClientError::Infer)?,
        ClientSource::Kubeconfig(path) => load_kubeconfig(path).await?,
    };
    client_from_config(config)
}

/// Builds a client from an already assembled configuration.
pub fn client_from_config(config: kube::Config) -> Result<kube::Client, ClientError> {
    let cluster_url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| ClientError::Build {
        cluster_url,
        source: Box::new(source),
    })
}

async fn load_kubeconfig(path: &Path) -> Result<kube::Config, ClientError> {
    let error = |source| ClientError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent-kubeconfig");
        let Err(err) = build_client(&ClientSource::Kubeconfig(path.clone())).await else {
            panic!("expected an error");
        };
        assert!(matches!(err, ClientError::Kubeconfig { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_without_server_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n\
             clusters: [{name: k, cluster: {}}]\nusers: [{name: u, user: {}}]\n",
        )
        .unwrap();
        let Err(err) = build_client(&ClientSource::Kubeconfig(path.clone())).await else {
            panic!("expected an error");
        };
        assert!(err.to_string().contains("config"), "{err}");
        assert!(matches!(err, ClientError::Kubeconfig { .. }));
    }

    #[tokio::test]
    async fn a_kubeconfig_file_yields_a_client_for_its_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             contexts: [{name: c, context: {cluster: k, user: u, namespace: ns1}}]\n\
             clusters: [{name: k, cluster: {server: 'http://127.0.0.1:6443'}}]\n\
             users: [{name: u, user: {token: t}}]\n",
        )
        .unwrap();
        let client = build_client(&ClientSource::Kubeconfig(path)).await.unwrap();
        assert_eq!(client.default_namespace(), "ns1");
    }
}
