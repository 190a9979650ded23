//! Plaintext inbound (15006): connections to the local workload from peers
//! outside the mesh. No identity, so PeerAuthentication STRICT refuses them
//! and identity-based ALLOW rules cannot match.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::copy::reset_tcp;
use tokio::net::TcpStream;

use super::route::ILLEGAL_PORTS;
use super::waypoint::{self, Admission};
use super::{Proxy, Record};
use crate::authz::{self, Connection};
use crate::capture;
use crate::metrics::{Endpoints, Metrics, Reporter, TrafficLabels, WaypointLabels};

pub async fn handle(
    proxy: Arc<Proxy>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let Ok(target) = capture::original_destination(&downstream) else {
        return;
    };
    let accepted_on = downstream
        .local_addr()
        .map(|a| capture::canonical_ip(a.ip()))
        .unwrap_or(target.ip());
    let local = match proxy.inbound_local_workload(accepted_on).await {
        Ok(local) => local,
        Err(error) => {
            // Without its record the pod's selector policies and waypoint
            // binding are unknown: admitting would skip them.
            Metrics::count_reason(&proxy.metrics.malformed_requests, "local_workload_unknown");
            tracing::info!(%peer, %target, %error, "plaintext connection to a pod the control plane has not described; closing");
            reset_tcp(&downstream);
            return;
        }
    };
    let Some(local) = local.filter(|w| proxy.is_local_target(w, target, accepted_on)) else {
        tracing::info!(%peer, %target, "plaintext connection to an address that is not a local workload; closing");
        reset_tcp(&downstream);
        return;
    };
    let mut record = Record::new(&proxy.metrics, "inbound-plaintext", peer, target);
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
    // Plaintext has no identity, so it never comes from a waypoint.
    if let Admission::Refused {
        waypoints,
        cause,
        reason,
    } = &waypoint::admit(&state, &local, None)
    {
        drop(state);
        proxy
            .metrics
            .waypoint_bypass_refused
            .get_or_create(&WaypointLabels::new(waypoints, cause.label()))
            .inc();
        tracing::info!(%peer, %target, waypoint = %waypoints, %reason, "refused a plaintext connection that bypasses the destination's waypoint");
        record.via_waypoint(waypoints);
        record.failed(labels, "DENY", reason);
        reset_tcp(&downstream);
        return;
    }
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
        record.failed(labels, "DENY", &reason);
        reset_tcp(&downstream);
        return;
    }
    let mut upstream = match proxy.connect_app(target, peer.ip()).await {
        Ok(s) => s,
        Err(error) => {
            record.failed(labels, "CONNECT", &format!("connect to the app: {error}"));
            reset_tcp(&downstream);
            return;
        }
    };
    record.opened(&labels);
    let t = super::plain::splice(&mut downstream, &mut upstream, &drain).await;
    record.closed(&labels, t.b_to_a, t.a_to_b, &format!("{:?}", t.end));
}
