//! Plaintext inbound (15006): connections to the local workload from peers
//! outside the mesh. No identity, so PeerAuthentication STRICT refuses them
//! and identity-based ALLOW rules cannot match.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::copy::reset_tcp;
use tokio::net::TcpStream;

use super::route::ILLEGAL_PORTS;
use super::{AccessLog, Proxy};
use crate::authz::{self, Connection};
use crate::capture;
use crate::metrics::{Endpoints, Reporter, TrafficLabels};

pub async fn handle(
    proxy: Arc<Proxy>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let started = Instant::now();
    let Ok(target) = capture::original_destination(&downstream) else {
        return;
    };
    let Some(local) = proxy
        .local_workload()
        .filter(|w| w.spec.addresses.contains(&target.ip()))
    else {
        tracing::info!(%peer, %target, "plaintext connection to an address that is not a local workload; closing");
        reset_tcp(&downstream);
        return;
    };
    let state = proxy.state.load();
    let source = state.workload_by_ip(peer.ip()).cloned();
    let labels = TrafficLabels::new(
        Reporter::destination,
        &Endpoints {
            source: source.as_deref(),
            destination: Some(&local),
            ..Default::default()
        },
    );
    let decision = if ILLEGAL_PORTS.contains(&target.port()) {
        None
    } else {
        Some(authz::decide(
            &state,
            &local,
            &Connection {
                source_ip: peer.ip(),
                source: None,
                destination: target,
            },
        ))
    };
    drop(state);
    let refusal = match &decision {
        None => Some("target is one of ztunnel's own ports".to_string()),
        Some(d) if !d.allowed => Some(d.reason.clone()),
        Some(_) => None,
    };
    if let Some(reason) = refusal {
        let labels = labels.with_flag("DENY");
        proxy.metrics.failed.get_or_create(&labels).inc();
        log(peer, target, &labels, started, 0, 0, &reason);
        reset_tcp(&downstream);
        return;
    }
    let mut upstream = match capture::connect(target, proxy.mark, proxy.connect_timeout).await {
        Ok(s) => s,
        Err(error) => {
            let labels = labels.with_flag("CONNECT");
            proxy.metrics.failed.get_or_create(&labels).inc();
            log(
                peer,
                target,
                &labels,
                started,
                0,
                0,
                &format!("connect to the app: {error}"),
            );
            reset_tcp(&downstream);
            return;
        }
    };
    proxy.metrics.opened.get_or_create(&labels).inc();
    let t = super::plain::splice(&mut downstream, &mut upstream, &drain).await;
    proxy.metrics.closed.get_or_create(&labels).inc();
    proxy
        .metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(t.a_to_b);
    proxy
        .metrics
        .sent_bytes
        .get_or_create(&labels)
        .inc_by(t.b_to_a);
    log(
        peer,
        target,
        &labels,
        started,
        t.b_to_a,
        t.a_to_b,
        &format!("{:?}", t.end),
    );
}

fn log(
    src: SocketAddr,
    dst: SocketAddr,
    labels: &TrafficLabels,
    started: Instant,
    sent: u64,
    received: u64,
    outcome: &str,
) {
    AccessLog {
        direction: "inbound-plaintext",
        src,
        dst,
        labels,
        started,
        bytes_sent: sent,
        bytes_received: received,
        outcome,
    }
    .emit();
}
