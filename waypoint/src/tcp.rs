//! Opaque TCP through the waypoint: a stream that is not HTTP is copied
//! byte for byte to one endpoint over HBONE, with Istio's TCP metrics.

use std::sync::Arc;

use crate::discovery::Endpoint;
use crate::listener::{Destination, StreamContext};
use crate::metrics::{Parties, Rejection, TcpLabels};
use crate::stream_io::StreamIo;

pub async fn serve(mut downstream: StreamIo, ctx: Arc<StreamContext>) {
    let proxy = &ctx.proxy;
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
