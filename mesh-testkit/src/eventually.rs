//! [`eventually`]: wait for a condition with bounded patience instead of sleeping.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Calls `f` until it returns `Ok`, pausing 10 ms, doubling up to 200 ms, between
/// attempts, for at most `patience` in all; then fails with
/// `"{what}: not true after {patience:?}: {last error}"`.
///
/// `f` is called at least once. An attempt still pending when patience runs out is
/// dropped (and counts as failed), so a hanging check cannot hang the test. Uses tokio's
/// clock, so it also works with paused time.
pub async fn eventually<F, Fut, T>(what: &str, patience: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the last attempt was still pending"),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!("{what}: not true after {patience:?}: {last:#}"));
        }
        tokio::time::sleep_until((now + pause).min(deadline)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
