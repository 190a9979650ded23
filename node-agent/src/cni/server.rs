//! The node agent's end of the plugin socket: a unix stream listener; each
//! connection carries one JSON request and gets one JSON reply.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::{AgentReply, AgentRequest, code};

/// A request larger than this is refused.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a plugin may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub type Handler =
    Arc<dyn Fn(AgentRequest) -> Pin<Box<dyn Future<Output = AgentReply> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the CNI socket {path}: {source}")]
pub struct BindError {
    pub path: String,
    pub source: io::Error,
}

/// Binds `path` (removing a stale socket, creating the directory), readable
/// and writable by root only.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let fail = |source| BindError {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// Serves until drain starts. Requests in flight finish (each is bounded by
/// its own timeout); they hold the drain open meanwhile.
pub fn serve(
    listener: UnixListener,
    handler: Handler,
    on_invalid: impl Fn() + Send + Sync + 'static,
    drain: DrainWatcher,
) -> JoinHandle<()> {
    let on_invalid = Arc::new(on_invalid);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "CNI socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = drain.draining() => return,
            };
            let handler = handler.clone();
            let on_invalid = on_invalid.clone();
            let watcher = drain.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = exchange(stream, handler, &*on_invalid) => {}
                    _ = watcher.forced() => {}
                }
                drop(watcher);
            });
        }
    })
}

async fn exchange(mut stream: UnixStream, handler: Handler, on_invalid: &(dyn Fn() + Send + Sync)) {
    let mut body = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut stream).take(MAX_REQUEST + 1).read_to_end(&mut body),
    )
    .await;
    let reply = match read {
        Err(_) => AgentReply::error(code::IO_FAILURE, "the request did not arrive in time"),
        Ok(Err(e)) => AgentReply::error(code::IO_FAILURE, format!("reading the request: {e}")),
        Ok(Ok(_)) if body.len() as u64 > MAX_REQUEST => {
            AgentReply::error(code::DECODE_FAILURE, "the request is too large")
        }
        Ok(Ok(_)) => match serde_json::from_slice::<AgentRequest>(&body) {
            Ok(request) => handler(request).await,
            Err(e) => {
                on_invalid();
                AgentReply::error(
                    code::DECODE_FAILURE,
                    format!("the request is not valid: {e}"),
                )
            }
        },
    };
    let bytes = serde_json::to_vec(&reply).unwrap_or_default();
    if let Err(error) = stream.write_all(&bytes).await {
        tracing::warn!(%error, "could not answer the CNI plugin");
    }
    let _ = stream.shutdown().await;
}
