//! Opaque TCP through the waypoint: a stream that is not HTTP is copied
//! byte for byte to one endpoint over HBONE, with Istio's TCP metrics.

use std::sync::Arc;

use crate::authz::{self, Decision, RequestAttrs};
use crate::discovery::Endpoint;
use std::net::IpAddr;

use crate::listener::{Caller, Destination, StreamContext};
use crate::metrics::{DenialLabels, Parties, Rejection, TcpLabels};
use crate::proxy::Proxy;
use crate::stream_io::StreamIo;

/// L4 authorization of an opaque stream: the Gateway's policies and the
/// service's, with no request attributes. `Err` names the deciding policy.
pub fn authorize(
    proxy: &Proxy,
    caller: &Caller,
    destination: &Destination,
    client_ip: IpAddr,
) -> Result<(), String> {
    let snapshot = proxy.config.load();
    let Some(snapshot) = snapshot.as_ref() else {
        return Ok(());
    };
    let service = match destination {
        Destination::Service(s, _) => snapshot.service_by_host(&s.hostname),
        Destination::Workload(..) => None,
    };
    let (destination_ip, destination_port) = destination.addr();
    let attrs = RequestAttrs {
        source_principal: caller.identity.as_ref().map(|_| caller.uri.as_str()),
        source_ip: client_ip,
        destination_ip,
        destination_port,
        request: None,
    };
    match authz::decide(
        snapshot.gateway_policies(),
        service.map(|s| &s.policies),
        &attrs,
    ) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { policy, .. } => {
            let policy = policy.to_string();
            proxy.metrics.reject(Rejection::authz_denied);
            proxy
                .metrics
                .denied
                .get_or_create(&DenialLabels {
                    policy: policy.clone(),
                })
                .inc();
            tracing::debug!(%policy, caller = %caller.uri, "opaque TCP stream denied");
            Err(policy)
        }
    }
}

pub async fn serve(mut downstream: StreamIo, ctx: Arc<StreamContext>) {
    let proxy = &ctx.proxy;
    // A detected stream was accepted before its protocol was known: a
    // denial resets it (CONNECT_ERROR, not REFUSED_STREAM: it was seen).
    if authorize(proxy, &ctx.caller, &ctx.destination, ctx.client_ip()).is_err() {
        downstream.reset(h2::Reason::CONNECT_ERROR);
        return;
    }
    let (endpoint, service) = match &ctx.destination {
        Destination::Workload(w, addr) => (
            Some(Endpoint {
                workload: w.clone(),
                addr: *addr,
            }),
            None,
        ),
        Destination::Service(s, port) => {
            let d = proxy.discovery.load();
            let eps = d.endpoints(s, *port);
            let ep = (!eps.is_empty()).then(|| eps[rand::random_range(0..eps.len())].clone());
            (ep, Some(s.clone()))
        }
    };
    let Some(endpoint) = endpoint else {
        proxy.metrics.reject(Rejection::no_healthy_upstream);
        downstream.reset(h2::Reason::CONNECT_ERROR);
        return;
    };
    let parties = Parties {
        source: ctx.source.as_deref(),
        source_principal: &ctx.caller.uri,
        destination: Some(&endpoint.workload),
        service: service.as_deref(),
    };
    let upstream = match proxy.upstream.tunnel(&endpoint).await {
        Ok(t) => t,
        Err(error) => {
            tracing::debug!(%error, "opaque TCP: cannot reach the endpoint");
            let labels = TcpLabels::new(&parties, "UF");
            proxy.metrics.tcp_opened.get_or_create(&labels).inc();
            proxy.metrics.tcp_closed.get_or_create(&labels).inc();
            downstream.reset(h2::Reason::CONNECT_ERROR);
            return;
        }
    };
    let labels = TcpLabels::new(&parties, "-");
    proxy.metrics.tcp_opened.get_or_create(&labels).inc();
    let mut upstream = StreamIo::from_tunnel(upstream);
    let copied = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => r,
        _ = ctx.drain.forced() => Err(std::io::Error::other("drain deadline passed")),
    };
    match copied {
        Ok((received, sent)) => {
            proxy
                .metrics
                .tcp_received
                .get_or_create(&labels)
                .inc_by(received);
            proxy.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
        }
        Err(error) => {
            tracing::debug!(%error, "opaque TCP stream ended abruptly");
            downstream.reset(h2::Reason::CONNECT_ERROR);
            upstream.reset(h2::Reason::CANCEL);
        }
    }
    proxy.metrics.tcp_closed.get_or_create(&labels).inc();
}
