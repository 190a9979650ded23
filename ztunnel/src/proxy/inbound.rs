//! Inbound HBONE (15008, spec 2.8): each CONNECT is checked against the local
//! workload, authorized, and delivered to the app.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::{self, Handler, HboneError, InboundRequest, Peer};

use super::route::ILLEGAL_PORTS;
use super::waypoint::{self, Admission};
use super::{Proxy, Record};
use crate::authz::{self, Connection};
use crate::capture;
use crate::metrics::{Endpoints, Metrics, Reporter, TrafficLabels, WaypointLabels};

#[derive(Debug)]
pub struct Inbound {
    pub proxy: Arc<Proxy>,
    pub drain: DrainWatcher,
}

impl Handler for Inbound {
    async fn handle(&self, req: InboundRequest) {
        let proxy = &self.proxy;
        let target = capture::canonical(req.authority);
        let peer = req.peer.clone();
        let local = match proxy.inbound_local_workload(peer.local.ip()).await {
            Ok(local) => local,
            Err(error) => {
                // Without its record the pod's selector policies and waypoint
                // binding are unknown: admitting would skip them.
                Metrics::count_reason(&proxy.metrics.malformed_requests, "local_workload_unknown");
                tracing::info!(peer = %peer.addr, %target, %error, "refused CONNECT to a pod the control plane has not described");
                return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let Some(local) = local.filter(|w| proxy.is_local_target(w, target, peer.local.ip()))
        else {
            // Not ours: this ztunnel is no open relay.
            Metrics::count_reason(&proxy.metrics.malformed_requests, "unknown_target");
            tracing::info!(peer = %peer.addr, %target, "refused CONNECT to an address that is not a local workload");
            return req.refuse(StatusCode::BAD_REQUEST);
        };
        if ILLEGAL_PORTS.contains(&target.port()) {
            Metrics::count_reason(&proxy.metrics.malformed_requests, "illegal_port");
            tracing::info!(peer = %peer.addr, %target, "refused CONNECT to one of ztunnel's own ports");
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
        let state = proxy.state.load();
        let source = state
            .workload_by_ip(capture::canonical_ip(peer.addr.ip()))
            .cloned();
        let service = req
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(hbone::headers::forwarded_host)
            .and_then(|h| state.service_by_hostname(h).cloned());
        let mut record = Record::new(&proxy.metrics, "inbound", peer.addr, target);
        let labels = TrafficLabels::new(
            Reporter::destination,
            &Endpoints {
                source: source.as_deref(),
                source_principal: peer.identity.as_ref().map(|i| i.to_string()),
                destination: Some(&local),
                service: service.as_deref(),
                mtls: true,
            },
        );
        // Before authorization: a pod behind a waypoint takes traffic only
        // from it, or its L7 policy could be skipped by dialling the pod.
        let admission = waypoint::admit(&state, &local, peer.identity.as_ref());
        match &admission {
            Admission::Refused {
                waypoints,
                cause,
                reason,
            } => {
                drop(state);
                proxy
                    .metrics
                    .waypoint_bypass_refused
                    .get_or_create(&WaypointLabels::new(waypoints, cause.label()))
                    .inc();
                tracing::info!(peer = %peer.addr, %target, waypoint = %waypoints, %reason, "refused a connection that bypasses the destination's waypoint");
                record.via_waypoint(waypoints);
                record.failed(labels, "DENY", reason);
                return req.refuse(StatusCode::UNAUTHORIZED);
            }
            Admission::FromWaypoint { waypoint } => record.via_waypoint(waypoint),
            Admission::Unbound => {}
        }
        let decision = authz::decide(
            &state,
            &local,
            &Connection {
                source_ip: capture::canonical_ip(peer.addr.ip()),
                source: peer.identity.as_ref(),
                destination: target,
            },
        );
        drop(state);
        for key in &decision.audited {
            tracing::info!(target: "access", policy = %key, peer = %peer.addr, %target, "audited connection");
        }
        for (key, would_deny) in &decision.dry_run {
            tracing::info!(policy = %key, would_deny, peer = %peer.addr, %target, "dry-run policy evaluated");
        }
        if !decision.allowed {
            record.failed(labels, "DENY", &decision.reason);
            return req.refuse(StatusCode::UNAUTHORIZED);
        }
        let client_ip = capture::canonical_ip(peer.addr.ip());
        let mut upstream = match proxy.connect_app(target, client_ip).await {
            Ok(s) => s,
            Err(error) => {
                record.failed(labels, "CONNECT", &format!("connect to the app: {error}"));
                return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::try_from(super::outbound::baggage(&local).encode()) {
            headers.insert("baggage", v);
        }
        let Ok(tunnel) = req.accept(headers) else {
            return;
        };
        record.opened(&labels);
        let t = hbone::splice(&mut upstream, tunnel, Some(&self.drain)).await;
        // Client to server is "received"; server to client is "sent".
        record.closed(
            &labels,
            t.tcp_to_tunnel,
            t.tunnel_to_tcp,
            &format!("{:?}", t.end),
        );
    }

    fn malformed(&self, peer: &Peer, error: &HboneError) {
        let reason = match error {
            HboneError::NotConnect(_) => "not_connect",
            _ => "bad_authority",
        };
        Metrics::count_reason(&self.proxy.metrics.malformed_requests, reason);
        tracing::info!(peer = %peer.addr, %error, "refused a malformed HBONE request");
    }
}
