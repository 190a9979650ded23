//! Built-in apps for example clusters, so they need nothing else installed.
//!
//! `server`: accepts TCP; a connection that starts with an HTTP request gets
//! one plain-text response naming the server and the peer it saw; any other
//! connection is a line echo, each reply naming the server and the peer.
//! `client`: connects to a target at an interval, sends a line, and prints
//! one line per attempt, `ok <target> <reply>` or
//! `failed <target> after <ms> ms: <why>`; each of connect and read waits at
//! most the client's timeout, so a hung attempt shows as a failure that took
//! about that long, and one refused or reset as a failure that took less.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The client's default bound on connect and on the reply's read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_METHODS: [&str; 7] = [
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "PATCH ", "OPTIONS ",
];

/// Who this app is in replies: `--name`, else the pod name the runner sets.
pub fn app_name(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| "ambit-app".into())
}

/// Serves until the process is stopped.
pub fn serve(listener: TcpListener, name: &str) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let name = name.to_string();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, &name) {
                eprintln!("connection: {e}");
            }
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, name: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(());
    }
    if HTTP_METHODS.iter().any(|m| first.starts_with(m)) {
        // Headers up to the blank line; the body, if any, is not read.
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && !line.trim().is_empty() {
            line.clear();
        }
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let body = format!("{name} served {method} {path} for {peer}\n");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return writer.flush();
    }
    let mut line = first;
    loop {
        let text = line.trim_end_matches(['\r', '\n']);
        writeln!(writer, "{name} got {text:?} from {peer}")?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

/// One attempt: connect, send a line, read the reply line, each of connect
/// and read within `timeout`.
pub fn attempt(target: &str, name: &str, timeout: Duration) -> Result<String, String> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    writeln!(stream, "hello from {name}").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| e.to_string())?;
    if reply.is_empty() {
        return Err("connection closed without a reply".into());
    }
    Ok(reply.trim_end().to_string())
}

/// How the client calls.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    pub every: Duration,
    /// Stop after this many attempts; `None`: never.
    pub count: Option<u64>,
    /// Bound on connect and on the reply's read.
    pub timeout: Duration,
}

/// Calls `target` as `options` say, printing a line per attempt.
pub fn run_client(target: &str, options: ClientOptions, name: &str) {
    let mut done = 0;
    loop {
        let start = Instant::now();
        let outcome = attempt(target, name, options.timeout);
        let line = attempt_line(target, outcome, start.elapsed());

        println!("{line}");
        let _ = io::stdout().flush();
        done += 1;
        if options.count.is_some_and(|c| done >= c) {
            return;
        }
        std::thread::sleep(options.every.saturating_sub(start.elapsed()));
    }
}

/// The printed line of one attempt; a failure says how long it took, which
/// tells a hang (about the timeout) from a refusal or reset (less).
pub fn attempt_line(target: &str, outcome: Result<String, String>, took: Duration) -> String {
    match outcome {
        Ok(reply) => format!("ok {target} {reply}"),
        Err(why) => format!("failed {target} after {} ms: {why}", took.as_millis()),
    }
}

/// The milliseconds a `failed` line of `attempt_line` reports, if it is one.
pub fn failed_after(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("failed ")?;
    let (_, after) = rest.split_once(" after ")?;
    after.split_once(" ms:")?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, "srv"));
        addr
    }

    #[test]
    fn the_client_gets_a_reply_naming_server_and_peer() {
        let addr = server();
        let reply = attempt(&addr.to_string(), "cli", IO_TIMEOUT).unwrap();
        assert!(
            reply.starts_with("srv got \"hello from cli\" from 127.0.0.1:"),
            "{reply}"
        );
    }

    #[test]
    fn an_http_request_gets_one_response() {
        let addr = server();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("srv served GET /x for 127.0.0.1:"),
            "{response}"
        );
    }

    #[test]
    fn a_refused_connection_is_a_failed_attempt() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = attempt(&addr.to_string(), "cli", IO_TIMEOUT).unwrap_err();
        assert!(error.contains("refused"), "{error}");
    }

    #[test]
    fn a_silent_server_is_a_failure_after_the_timeout() {
        // Accepted by the kernel, never answered.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let start = Instant::now();
        let outcome = attempt(&addr.to_string(), "cli", Duration::from_millis(200));
        let line = attempt_line("t", outcome, start.elapsed());
        let took = failed_after(&line).unwrap_or_else(|| panic!("{line}"));
        assert!((200..2000).contains(&took), "{line}");
        drop(listener);
    }

    #[test]
    fn lines_say_how_long_a_failure_took() {
        let line = attempt_line("a:1", Err("reset".into()), Duration::from_millis(12));
        assert_eq!(line, "failed a:1 after 12 ms: reset");
        assert_eq!(failed_after(&line), Some(12));
        let ok = attempt_line("a:1", Ok("hi".into()), Duration::from_millis(12));
        assert_eq!(ok, "ok a:1 hi");
        assert_eq!(failed_after(&ok), None);
    }
}
