//! One access-log line per request, key=value, to stdout, while the `access`
//! log target is enabled at info (`RUST_LOG=access=off` turns it off). Lines
//! wait in memory and go out together every [`FLUSH_EVERY`]: a write per
//! request, on the request's own path, cost more than making the line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_core::drain::DrainWatcher;

/// How long a line may wait before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Lines waiting beyond this (stdout not keeping up) are dropped and counted.
const MAX_PENDING: usize = 4 << 20;

/// What one line reports.
#[derive(Debug)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub grpc_status: Option<&'a str>,
    pub flags: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub source_principal: &'a str,
    /// `<iss>/<sub>` of the request's verified JWT.
    pub request_principal: Option<&'a str>,
    pub destination_principal: Option<&'a mesh_core::Identity>,
    pub route: Option<&'a str>,
    pub decision: &'a str,
    pub trace_id: &'a [u8; 16],
    pub client: Option<SocketAddr>,
}

/// Renders an entry (without writing it): `start=... method=GET ...`.
/// Values with spaces or quotes are quoted so the line stays parseable.
pub fn render(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(384);
    render_into(&mut s, e);
    s
}

fn render_into(s: &mut String, e: &Entry<'_>) {
    let start = e
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let _ = write!(s, "start_ms={start} method={}", quoted(e.method));
    let _ = write!(
        s,
        " authority={} path={}",
        quoted(e.authority),
        quoted(e.path)
    );
    let _ = write!(s, " protocol={} status={}", e.protocol, e.status);
    if let Some(g) = e.grpc_status {
        let _ = write!(s, " grpc_status={}", quoted(g));
    }
    let _ = write!(
        s,
        " flags={} bytes_in={} bytes_out={} duration_us={}",
        e.flags,
        e.request_bytes,
        e.response_bytes,
        e.duration.as_micros()
    );
    match e.upstream {
        Some(u) => {
            let _ = write!(s, " upstream={u}");
        }
        None => s.push_str(" upstream=-"),
    }
    if let Some(c) = e.client {
        let _ = write!(s, " client={c}");
    }
    // Made only here, so a request costs no identity string while the log is off.
    let dst = e.destination_principal.map(|i| i.to_string());
    let _ = write!(
        s,
        " src={} dst={} route={} decision={} trace_id=",
        quoted(or_dash(e.source_principal)),
        quoted(dst.as_deref().unwrap_or("-")),
        quoted(e.route.unwrap_or("-")),
        quoted(e.decision),
    );
    for b in e.trace_id {
        let _ = write!(s, "{b:02x}");
    }
    // Only requests that carried a verified JWT have one: no field otherwise,
    // so lines of meshes without RequestAuthentication stay as they were.
    if let Some(p) = e.request_principal {
        let _ = write!(s, " request_principal={}", quoted(p));
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn quoted(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=')
    {
        return v.into();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q.into()
}

/// The lines not yet written out.
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Queues the line for `e`, if the access log is enabled.
    pub fn line(&self, e: &Entry<'_>) {
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            self.push(e);
        }
    }

    fn push(&self, e: &Entry<'_>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        render_into(&mut pending, e);
        pending.push('\n');
    }

    /// Takes the waiting lines, and how many were dropped since the last take.
    pub fn take(&self) -> (String, u64) {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        (lines, self.dropped.swap(0, Ordering::Relaxed))
    }

    /// Writes the waiting lines to stdout (off the runtime's threads: a slow
    /// reader of stdout must not stall requests).
    pub async fn flush(self: &Arc<Self>) {
        let (lines, dropped) = self.take();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "access-log lines dropped: stdout is not keeping up (more than 4 MiB waiting)"
            );
        }
        if lines.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(lines.as_bytes());
            let _ = out.flush();
        })
        .await;
    }
}

/// Writes the access log out every [`FLUSH_EVERY`] until drain starts; the
/// app writes what is left once the drain is over.
pub async fn flush_periodically(log: Arc<AccessLog>, drain: DrainWatcher) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => log.flush().await,
            _ = drain.draining() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with odd values in it (a path with a space and a quote).
    fn sample() -> Entry<'static> {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1500),
            method: "GET",
            authority: "echo.default",
            path: "/a b\"c",
            protocol: "HTTP/1.1",
            status: 200,
            grpc_status: None,
            flags: "-",
            request_bytes: 3,
            response_bytes: 10,
            duration: Duration::from_micros(250),
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            source_principal: "spiffe://cluster.local/ns/a/sa/b",
            request_principal: None,
            destination_principal: None,
            route: Some("default/r"),
            decision: "allow",
            trace_id: &[0xab; 16],
            client: None,
        }
    }

    #[test]
    fn a_line_has_every_field_and_quotes_odd_values() {
        let e = sample();
        let l = render(&e);
        let log = AccessLog::default();
        log.push(&e);
        log.push(&e);
        assert_eq!(log.take(), (format!("{l}\n{l}\n"), 0));
        assert_eq!(log.take(), (String::new(), 0));
        assert_eq!(
            l,
            "start_ms=1500 method=GET authority=echo.default path=\"/a b\\\"c\" protocol=HTTP/1.1 status=200 flags=- bytes_in=3 bytes_out=10 duration_us=250 upstream=10.0.0.1:8080 src=spiffe://cluster.local/ns/a/sa/b dst=- route=default/r decision=allow trace_id=abababababababababababababababab"
        );
        let echo = mesh_core::Identity::new("cluster.local", "default", "echo").unwrap();
        let with_dst = render(&Entry {
            destination_principal: Some(&echo),
            ..sample()
        });
        assert!(
            with_dst.contains(" dst=spiffe://cluster.local/ns/default/sa/echo "),
            "{with_dst}"
        );
        let with_jwt = render(&Entry {
            request_principal: Some("https://issuer.example.com/alice"),
            ..sample()
        });
        assert!(
            with_jwt.ends_with(" request_principal=https://issuer.example.com/alice"),
            "{with_jwt}"
        );
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_counted() {
        let e = sample();
        let log = AccessLog::default();
        let per_line = render(&e).len() + 1;
        let fit = MAX_PENDING.div_ceil(per_line);
        for _ in 0..fit + 5 {
            log.push(&e);
        }
        let (lines, dropped) = log.take();
        assert_eq!(lines.len(), fit * per_line);
        assert_eq!(dropped, 5);
        log.push(&e);
        assert_eq!(log.take(), (format!("{}\n", render(&e)), 0));
    }

    #[tokio::test]
    async fn the_periodic_flush_stops_when_drain_starts() {
        let (trigger, watcher) = mesh_core::drain::channel();
        let log = Arc::new(AccessLog::default());
        let task = tokio::spawn(flush_periodically(log, watcher));
        let outcome = trigger.drain(Duration::from_secs(2)).await;
        assert_eq!(outcome, mesh_core::drain::DrainOutcome::Complete);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the flush task ends with the drain")
            .unwrap();
    }
}
