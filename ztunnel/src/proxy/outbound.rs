//! Outbound (15001): a connection redirected from the local workload is
//! planned by `route` and carried over HBONE, or plain TCP where the plan says so.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use mesh_core::drain::DrainWatcher;
use mesh_core::hbone::{self, ConnectRequest, PoolKey, headers};
use tokio::net::TcpStream;

use super::route::{self, Plan};
use super::{Proxy, Record};
use crate::capture;
use crate::metrics::{Endpoints, Reporter, TrafficLabels, WaypointLabels};
use crate::state::WorkloadEntry;

pub async fn handle(
    proxy: Arc<Proxy>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let dst = match capture::original_destination(&downstream) {
        Ok(d) => d,
        Err(error) => {
            tracing::warn!(%peer, %error, "no original destination; closing");
            return;
        }
    };
    let Some(source) = proxy.local_workload(peer.ip()) else {
        tracing::warn!(%peer, %dst, workload = ?proxy.local.name, "the local workload is not in the config; refusing");
        hbone::copy::reset_tcp(&downstream);
        return;
    };
    let state = proxy.state.load();
    let planned = route::plan(&state, &source, dst, &mut rand::rng());
    drop(state);
    let mut record = Record::new(&proxy.metrics, "outbound", peer, dst);
    let plan = match planned {
        Ok(p) => p,
        Err(error) => {
            if let route::RouteError::Waypoint(e) = &error {
                // Never around the waypoint: the connection fails and says why.
                record.via_waypoint(e.waypoint());
                proxy
                    .metrics
                    .waypoint_unreachable
                    .get_or_create(&WaypointLabels::new(e.waypoint(), e.reason()))
                    .inc();
            }
            let labels = TrafficLabels::new(
                Reporter::source,
                &Endpoints {
                    source: Some(&source),
                    source_principal: Some(source.identity.to_string()),
                    ..Default::default()
                },
            );
            record.failed(labels, "CONNECT", &error.to_string());
            hbone::copy::reset_tcp(&downstream);
            return;
        }
    };
    let labels = TrafficLabels::new(
        Reporter::source,
        &Endpoints {
            source: Some(&source),
            source_principal: Some(source.identity.to_string()),
            destination: match &plan {
                // The peer whose identity is checked is the waypoint pod.
                Plan::Waypoint { hop, .. } => hop.workload.as_deref(),
                _ => plan.destination().map(|d| d.as_ref()),
            },
            service: plan.service().map(|s| s.as_ref()),
            mtls: matches!(plan, Plan::Hbone { .. } | Plan::Waypoint { .. }),
        },
    );
    if let Some(name) = plan.waypoint() {
        record.via_waypoint(name);
        proxy
            .metrics
            .via_waypoint
            .get_or_create(&WaypointLabels::new(name, "outbound"))
            .inc();
    }
    record.opened(&labels);
    let hbone = match plan {
        Plan::Hbone {
            peer,
            authority,
            expected,
            service,
            ..
        } => Ok((peer, authority, expected, service)),
        Plan::Waypoint {
            hop,
            authority,
            service,
            ..
        } => Ok((hop.peer, authority, hop.expected, service)),
        Plan::Direct { target, .. } | Plan::Passthrough { target, .. } => Err(target),
    };
    let (sent, received, outcome, labels) = match hbone {
        Ok((hbone_peer, authority, expected, service)) => {
            let key = PoolKey::new(source.identity.clone(), expected, hbone_peer, None);
            let req = ConnectRequest {
                authority,
                headers: request_headers(
                    &source,
                    peer,
                    service.as_ref().map(|s| s.hostname.as_str()),
                ),
            };
            match proxy.pool.connect(&key, req).await {
                Ok((tunnel, _)) => {
                    let t = hbone::splice(&mut downstream, tunnel, Some(&drain)).await;
                    (
                        t.tunnel_to_tcp,
                        t.tcp_to_tunnel,
                        format!("{:?}", t.end),
                        labels,
                    )
                }
                Err(error) => {
                    let labels = record.count_failed(labels, error.response_flag());
                    hbone::copy::reset_tcp(&downstream);
                    (0, 0, error.to_string(), labels)
                }
            }
        }
        Err(target) => {
            match proxy
                .sockets
                .connect(target, None, proxy.connect_timeout)
                .await
            {
                Ok(mut upstream) => {
                    let t = super::plain::splice(&mut downstream, &mut upstream, &drain).await;
                    (t.b_to_a, t.a_to_b, format!("{:?}", t.end), labels)
                }
                Err(error) => {
                    let labels = record.count_failed(labels, "CONNECT");
                    hbone::copy::reset_tcp(&downstream);
                    (0, 0, format!("connect to {target}: {error}"), labels)
                }
            }
        }
    };
    record.closed(&labels, sent, received, &outcome);
}

fn request_headers(
    source: &WorkloadEntry,
    client: SocketAddr,
    service_host: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(name, v);
        }
    };
    put("forwarded", headers::forwarded(client, service_host));
    put("baggage", baggage(source).encode());
    put("traceparent", headers::traceparent());
    h
}

pub fn baggage(w: &WorkloadEntry) -> headers::Baggage {
    headers::Baggage {
        cluster: w.spec.cluster_id.clone(),
        namespace: w.spec.namespace.clone(),
        workload_type: w.spec.workload_type.as_str().into(),
        workload_name: w.workload_name().into(),
        service_name: w.canonical_service().into(),
        service_version: w.canonical_revision().into(),
        region: w.spec.locality.region.clone(),
        zone: w.spec.locality.zone.clone(),
    }
}
