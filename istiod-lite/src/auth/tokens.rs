//! Directory mode's credentials: one bearer token per node, kept in a YAML
//! file (`node-tokens.yaml`: node name -> token) that the node's proxies are
//! given. A token authenticates its node, not a workload.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;

use super::{AuthError, Authenticate, Caller, bearer_token};
use crate::model::Store;
use crate::registry::Registry;

pub const NODE_TOKENS_FILE: &str = "node-tokens.yaml";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a map of node name to token: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: the token of node {node:?} is empty")]
    Empty { path: PathBuf, node: String },
}

/// The node tokens, and the file they live in.
#[derive(Debug)]
pub struct NodeTokens {
    path: PathBuf,
    tokens: RwLock<BTreeMap<String, String>>,
}

impl NodeTokens {
    /// Reads `path` (if present), adds a fresh token for each of `nodes`
    /// that has none, and writes the file back if it changed.
    pub fn load_or_create(path: &Path, nodes: &[String]) -> Result<Self, TokenError> {
        let tokens = if path.exists() {
            read(path)?
        } else {
            BTreeMap::new()
        };
        let this = NodeTokens {
            path: path.to_path_buf(),
            tokens: RwLock::new(tokens),
        };
        this.ensure_nodes(nodes)?;
        if !path.exists() {
            this.write()?;
        }
        Ok(this)
    }

    /// Adds tokens for nodes that have none (nodes that appeared in the
    /// registry). Returns whether any was added; the file is then rewritten.
    pub fn ensure_nodes(&self, nodes: &[String]) -> Result<bool, TokenError> {
        let mut added = false;
        {
            let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
            for node in nodes {
                if !tokens.contains_key(node) {
                    tokens.insert(node.clone(), new_token());
                    added = true;
                }
            }
        }
        if added {
            self.write()?;
        }
        Ok(added)
    }

    /// The token of `node`, to hand to its proxies.
    pub fn token(&self, node: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens.get(node).cloned()
    }

    /// The node `token` belongs to. Every token is compared, in constant
    /// time, so timing tells nothing about which one nearly matched.
    pub fn node_of(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for (node, known) in tokens.iter() {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(node.clone());
            }
        }
        found
    }

    fn write(&self) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        let text = {
            let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
            serde_yaml::to_string(&*tokens).map_err(|source| TokenError::Parse {
                path: self.path.clone(),
                source,
            })?
        };
        // Write beside and rename, so a reader never sees half a file.
        let tmp = self.path.with_extension("yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Keeps a token for every Node in the registry: new nodes get one as they
/// appear (tokens of removed nodes stay, so a node that comes back keeps its
/// token). Ends when `stop` turns true or the registry is dropped.
pub async fn follow_nodes(
    tokens: Arc<NodeTokens>,
    registry: Registry,
    mut stop: watch::Receiver<bool>,
) {
    let mut snapshots = registry.subscribe();
    drop(registry);
    loop {
        let nodes = node_names(&snapshots.borrow_and_update());
        if let Err(error) = tokens.ensure_nodes(&nodes) {
            tracing::error!(%error, "cannot record tokens for new nodes");
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = async { stop.wait_for(|s| *s).await.is_err() } => return,
        }
    }
}

/// The names of the registry's Node objects.
pub fn node_names(store: &Store) -> Vec<String> {
    store.nodes.keys().map(|key| key.name.clone()).collect()
}

fn read(path: &Path) -> Result<BTreeMap<String, String>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let tokens: Option<BTreeMap<String, String>> =
        serde_yaml::from_str(&text).map_err(|source| TokenError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let tokens = tokens.unwrap_or_default();
    if let Some((node, _)) = tokens.iter().find(|(_, t)| t.trim().is_empty()) {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
            node: node.clone(),
        });
    }
    Ok(tokens)
}

/// 32 random bytes, hex: URL- and header-safe.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticate for NodeTokens {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let result = bearer_token(metadata).and_then(|token| {
            let node = self
                .node_of(token)
                .ok_or_else(|| AuthError::Invalid("not a known node token".into()))?;
            Ok(Caller {
                description: format!("node {node}"),
                node: Some(node),
                identity: None,
            })
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn metadata(token: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[tokio::test]
    async fn tokens_are_created_kept_and_authenticate_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_TOKENS_FILE);
        let tokens = NodeTokens::load_or_create(&path, &nodes(&["a", "b"])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let a = tokens.token("a").unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(Some(&a), tokens.token("b").as_ref());

        // A restart keeps existing tokens and adds new nodes.
        let again = NodeTokens::load_or_create(&path, &nodes(&["a", "c"])).unwrap();
        assert_eq!(again.token("a").unwrap(), a);
        assert!(again.token("b").is_some() && again.token("c").is_some());
        assert!(!again.ensure_nodes(&nodes(&["a"])).unwrap());
        assert!(again.ensure_nodes(&nodes(&["d"])).unwrap());
        let reread = NodeTokens::load_or_create(&path, &[]).unwrap();
        assert!(reread.token("d").is_some());

        let caller = again.authenticate(&metadata(&a)).await.unwrap();
        assert_eq!(caller.node.as_deref(), Some("a"));
        assert_eq!(caller.identity, None);
        let err = again.authenticate(&metadata("wrong")).await.unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn new_nodes_in_the_registry_get_tokens_and_the_follower_stops() {
        use crate::model::{Kind, Object};
        use crate::registry::Change;
        let dir = tempfile::tempdir().unwrap();
        let tokens =
            Arc::new(NodeTokens::load_or_create(&dir.path().join(NODE_TOKENS_FILE), &[]).unwrap());
        let registry = Registry::new();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(follow_nodes(tokens.clone(), registry.clone(), stopped));
        let node = Object::from_value(
            Kind::Node,
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-z"}}),
        )
        .unwrap();
        registry.apply([Change::Upsert(node)]);
        mesh_testkit::eventually(
            "node-z has a token",
            std::time::Duration::from_secs(5),
            || async {
                tokens
                    .token("node-z")
                    .map(|_| ())
                    .ok_or_else(|| anyhow::anyhow!("no token yet"))
            },
        )
        .await
        .unwrap();
        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the follower stops when asked")
            .unwrap();
    }

    #[test]
    fn a_malformed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_TOKENS_FILE);
        std::fs::write(&path, "- a list\n").unwrap();
        let err = NodeTokens::load_or_create(&path, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(NODE_TOKENS_FILE), "{err}");
        std::fs::write(&path, "a: ''\n").unwrap();
        let err = NodeTokens::load_or_create(&path, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\""), "{err}");
    }
}
