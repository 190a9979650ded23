//! Logging (tracing, with a level that can be changed at run time) and the
//! Prometheus text rendering every binary serves.

use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Changes the log filter at run time (the admin `/logging` endpoint).
#[derive(Clone, Debug)]
pub struct LogControl {
    handle: Option<FilterHandle>,
    initial: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level {level:?}: {reason}")]
    Invalid { level: String, reason: String },
    #[error("logging is not controllable in this process")]
    NotInstalled,
}

impl LogControl {
    /// A control that changes nothing (tests that run several apps in one process).
    pub fn detached() -> Self {
        LogControl {
            handle: None,
            initial: String::new(),
        }
    }

    pub fn current(&self) -> String {
        self.handle
            .as_ref()
            .and_then(|h| h.with_current(|f| f.to_string()).ok())
            .unwrap_or_else(|| self.initial.clone())
    }

    /// Sets a filter such as `debug` or `ztunnel=debug,h2=info`.
    pub fn set(&self, level: &str) -> Result<String, LogError> {
        let filter = EnvFilter::try_new(level).map_err(|e| LogError::Invalid {
            level: level.to_string(),
            reason: e.to_string(),
        })?;
        let handle = self.handle.as_ref().ok_or(LogError::NotInstalled)?;
        handle.reload(filter).map_err(|_| LogError::NotInstalled)?;
        Ok(self.current())
    }

    pub fn reset(&self) -> Result<String, LogError> {
        let initial = self.initial.clone();
        self.set(&initial)
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init_logging(default_filter: &str) -> LogControl {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_string());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (layer, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(true)
                // Colours only on a terminal, never into log files.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .try_init()
        .is_ok();
    LogControl {
        handle: installed.then_some(handle),
        initial,
    }
}

/// The OpenMetrics content type, sent when the client's Accept asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text;charset=utf-8;version=1.0.0";
/// The plain Prometheus text content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; charset=utf-8";

/// Renders the registry; the body is always OpenMetrics text ending in `# EOF`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// The content type for a request's Accept header.
pub fn content_type(accept: Option<&str>) -> &'static str {
    match accept {
        Some(a) if a.contains("application/openmetrics-text") => OPENMETRICS,
        _ => PROMETHEUS_TEXT,
    }
}
