//! A ztunnel under test: started pinned in a namespace, ready when
//! `GET /healthz/ready` on 15021 says 200, measured from `/proc`, and asked for its
//! counters to prove the traffic went through it.

pub mod config;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_testkit::{ChildGuard, Netns, eventually};
use serde::Serialize;

use crate::procfs::{self, ProcessUsage};
use crate::prom::{self, Sample};
use crate::scenario::PathKind;
use crate::{http, topology};
use config::Side;

/// Readiness port (`GET /healthz/ready`).
pub const READINESS_PORT: u16 = 15021;
/// Prometheus metrics port (`GET /metrics`).
pub const METRICS_PORT: u16 = 15020;
/// The counter that proves a connection went through a ztunnel.
pub const OPENED: &str = "istio_tcp_connections_opened_total";

/// Timeout of each HTTP request to ztunnel's own endpoints.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// A running ztunnel; killed when dropped.
#[derive(Debug)]
pub struct Ztunnel {
    pub side: Side,
    pub log: PathBuf,
    child: ChildGuard,
}

impl Ztunnel {
    /// Starts `taskset -c CPU ztunnel --config CONFIG` in `ns` (output to `log`) and
    /// waits, at most `patience`, until it reports ready; fails at once if it exits.
    pub async fn start(
        ns: &Netns,
        side: Side,
        cpu: u32,
        binary: &Path,
        config: &Path,
        log: &Path,
        patience: Duration,
    ) -> Result<Ztunnel> {
        let config_arg = config
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", config.display()))?;
        let child = topology::spawn_pinned(ns, cpu, binary, &["--config", config_arg], log)?;
        let zt = Ztunnel {
            side,
            log: log.to_path_buf(),
            child,
        };
        let what = format!("the {side:?} ztunnel in {} ready", ns.name());
        let ready = eventually(&what, patience, || async {
            if let Some(status) = zt.child.wait_timeout(Duration::ZERO)? {
                return Ok(Readiness::Exited(status));
            }
            let response = get(ns, READINESS_PORT, "/healthz/ready")?;
            if response.status != 200 {
                bail!("/healthz/ready answered {}", response.status);
            }
            Ok(Readiness::Ready)
        })
        .await;
        match ready {
            Ok(Readiness::Ready) => {
                zt.check_not_a_wrapper()?;
                Ok(zt)
            }
            Ok(Readiness::Exited(status)) => Err(anyhow!(
                "the {side:?} ztunnel exited ({status}) before it was ready; its log:\n{}",
                zt.log_tail()
            )),
            Err(e) => Err(e.context(format!("its log:\n{}", zt.log_tail()))),
        }
    }

    /// Makes sure the pid measured is the program itself and not one of the wrappers
    /// it was started through (`ip netns exec` and `taskset` exec in place, so they
    /// should be gone).
    fn check_not_a_wrapper(&self) -> Result<()> {
        let pid = self.child.pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .with_context(|| format!("reading /proc/{pid}/comm"))?;
        let comm = comm.trim();
        if comm == "ip" || comm == "taskset" {
            bail!(
                "pid {pid} is still `{comm}`, not ztunnel: its CPU time and RSS would not be \
                 ztunnel's"
            );
        }
        Ok(())
    }

    /// Its process id (ztunnel itself, not a wrapper).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// CPU seconds and peak RSS so far.
    pub fn usage(&self, clk_tck: u64) -> Result<ProcessUsage> {
        if let Some(status) = self.child.wait_timeout(Duration::ZERO)? {
            bail!(
                "the {:?} ztunnel has exited ({status}); its log:\n{}",
                self.side,
                self.log_tail()
            );
        }
        Ok(procfs::process_usage(self.child.pid(), clk_tck)?)
    }

    /// Its `/metrics`, fetched from inside `ns`.
    pub fn metrics(&self, ns: &Netns) -> Result<Vec<Sample>> {
        let response = get(ns, METRICS_PORT, "/metrics")
            .with_context(|| format!("fetching the {:?} ztunnel's metrics", self.side))?;
        if response.status != 200 {
            bail!(
                "the {:?} ztunnel's /metrics answered {}",
                self.side,
                response.status
            );
        }
        Ok(prom::parse(&response.body)?)
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "{} (full log: {})",
            topology::tail(&text, 3000),
            self.log.display()
        )
    }
}

enum Readiness {
    Ready,
    Exited(ExitStatus),
}

/// GETs `path` from 127.0.0.1:`port` inside `ns`.
fn get(ns: &Netns, port: u16, path: &str) -> Result<http::Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    Ok(ns.try_run(|| http::get(addr, path, HTTP_TIMEOUT))??)
}

/// What the ztunnels' counters say about a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathProof {
    /// Client ztunnel: connections opened with `reporter="source"`.
    pub client_source_opened: f64,
    /// Client ztunnel: connections opened with `connection_security_policy="mutual_tls"`.
    pub client_mtls_opened: f64,
    /// Server ztunnel (HBONE only): connections opened with
    /// `connection_security_policy="mutual_tls"`.
    pub server_mtls_opened: Option<f64>,
    /// Connections the load generators opened (echo clients and iperf3, control
    /// connections included); the counters should reach at least this.
    pub expected_at_least: u64,
}

impl PathProof {
    /// The counter that must cover every client connection on this path.
    pub fn counted(&self, path: PathKind) -> f64 {
        match path {
            PathKind::Hbone => self.client_mtls_opened,
            _ => self.client_source_opened,
        }
    }
}

/// The traffic did not (all) go through the mesh.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(
        "traffic bypassed the mesh: the client ztunnel's {OPENED}{{reporter=\"source\"}} is {0}, \
         so no connection went through it (is the REDIRECT rule in place and does ztunnel \
         listen on 15001?)"
    )]
    ClientPlain(f64),
    #[error(
        "traffic bypassed the mesh or was not mTLS: the client ztunnel's \
         {OPENED}{{connection_security_policy=\"mutual_tls\"}} is {0}"
    )]
    ClientMtls(f64),
    #[error(
        "traffic bypassed the server ztunnel or was not mTLS: its \
         {OPENED}{{connection_security_policy=\"mutual_tls\"}} is {0}"
    )]
    ServerMtls(f64),
    #[error("the HBONE path needs the server ztunnel's metrics")]
    NoServerMetrics,
}

/// Checks the counters: on the plain path the client ztunnel counted connections as
/// `reporter="source"`; on HBONE both ztunnels counted `mutual_tls` connections.
pub fn verify_path(
    path: PathKind,
    client: &[Sample],
    server: Option<&[Sample]>,
    expected_at_least: u64,
) -> Result<PathProof, ProofError> {
    let mtls = [("connection_security_policy", "mutual_tls")];
    let proof = PathProof {
        client_source_opened: prom::sum(client, OPENED, &[("reporter", "source")]),
        client_mtls_opened: prom::sum(client, OPENED, &mtls),
        server_mtls_opened: server.map(|s| prom::sum(s, OPENED, &mtls)),
        expected_at_least,
    };
    match path {
        PathKind::Direct => {}
        PathKind::Plain => {
            if proof.client_source_opened <= 0.0 {
                return Err(ProofError::ClientPlain(proof.client_source_opened));
            }
        }
        PathKind::Hbone => {
            if proof.client_mtls_opened <= 0.0 {
                return Err(ProofError::ClientMtls(proof.client_mtls_opened));
            }
            match proof.server_mtls_opened {
                None => return Err(ProofError::NoServerMetrics),
                Some(n) if n <= 0.0 => return Err(ProofError::ServerMtls(n)),
                Some(_) => {}
            }
        }
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str) -> Vec<Sample> {
        prom::parse(text).unwrap()
    }

    const CLIENT_PLAIN: &str = r#"istio_tcp_connections_opened_total{reporter="source",connection_security_policy="unknown",destination_workload="server"} 812
istio_tcp_sent_bytes_total{reporter="source",connection_security_policy="unknown"} 1e9
"#;
    const CLIENT_HBONE: &str = r#"istio_tcp_connections_opened_total{reporter="source",connection_security_policy="mutual_tls"} 812
"#;
    const SERVER_HBONE: &str = r#"istio_tcp_connections_opened_total{reporter="destination",connection_security_policy="mutual_tls"} 812
"#;
    const EMPTY: &str = "# EOF\n";

    #[test]
    fn plain_path_needs_source_connections() {
        let proof = verify_path(PathKind::Plain, &samples(CLIENT_PLAIN), None, 800).unwrap();
        assert_eq!(proof.client_source_opened, 812.0);
        assert_eq!(proof.client_mtls_opened, 0.0);
        assert_eq!(proof.counted(PathKind::Plain), 812.0);
        assert!(matches!(
            verify_path(PathKind::Plain, &samples(EMPTY), None, 800),
            Err(ProofError::ClientPlain(_))
        ));
    }

    #[test]
    fn hbone_needs_mtls_on_both_sides() {
        let proof = verify_path(
            PathKind::Hbone,
            &samples(CLIENT_HBONE),
            Some(&samples(SERVER_HBONE)),
            800,
        )
        .unwrap();
        assert_eq!(proof.server_mtls_opened, Some(812.0));
        assert_eq!(proof.counted(PathKind::Hbone), 812.0);
        // Plain TCP on the client side is not HBONE.
        let err = verify_path(
            PathKind::Hbone,
            &samples(CLIENT_PLAIN),
            Some(&samples(SERVER_HBONE)),
            800,
        )
        .unwrap_err();
        assert!(matches!(err, ProofError::ClientMtls(_)));
        assert!(err.to_string().contains("bypassed"), "{err}");
        // The server ztunnel saw nothing: bypassed on the server side.
        assert!(matches!(
            verify_path(
                PathKind::Hbone,
                &samples(CLIENT_HBONE),
                Some(&samples(EMPTY)),
                800
            ),
            Err(ProofError::ServerMtls(_))
        ));
        assert!(matches!(
            verify_path(PathKind::Hbone, &samples(CLIENT_HBONE), None, 800),
            Err(ProofError::NoServerMetrics)
        ));
    }
}
