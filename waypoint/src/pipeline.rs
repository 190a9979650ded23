//! One request through the waypoint, as named phases in order: trace
//! context, normalize, authorize, route, request headers, pick an endpoint,
//! forward, response headers, respond; the access-log line and metrics are
//! recorded when the response body ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::{CountedBody, Finish, ResponseBody};
use crate::discovery::{Endpoint, Service};
use crate::errors::LocalReply;
use crate::headers::{self, TraceContext};
use crate::listener::{Destination, Protocol, StreamContext};
use crate::metrics::{Parties, Rejection, RequestLabels};
use crate::proxy::Proxy;
use crate::upstream::UpstreamBody;

/// What the route phase chose: where the request goes and with what limits.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Option<Arc<Service>>,
    /// The endpoints to choose from.
    pub endpoint: Endpoint,
    pub timeout: Option<Duration>,
    pub route: Option<String>,
    /// Speak HTTP/2 to the endpoint.
    pub h2: bool,
}

/// What is known of a request when it ends, for its log line and metrics.
struct Record {
    ctx: Arc<StreamContext>,
    started: SystemTime,
    start: Instant,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    version: Version,
    grpc: bool,
    status: u16,
    flags: &'static str,
    request_bytes: Arc<AtomicU64>,
    target: Option<Target>,
    decision: &'static str,
    trace: TraceContext,
}

/// Serves one request. Never fails: every error becomes a local reply.
pub async fn handle(req: Request<Incoming>, ctx: Arc<StreamContext>) -> Response<ResponseBody> {
    let trace = TraceContext::continue_or_start(req.headers(), &mut rand::rng());
    let span = tracing::debug_span!(
        "request",
        trace_id = %headers::hex(&trace.trace_id),
        route = tracing::field::Empty,
        upstream = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    run(req, ctx, trace).instrument(span).await
}

async fn run(
    mut req: Request<Incoming>,
    ctx: Arc<StreamContext>,
    trace: TraceContext,
) -> Response<ResponseBody> {
    let grpc = headers::is_grpc(req.headers());
    let mut record = Record {
        ctx: ctx.clone(),
        started: SystemTime::now(),
        start: Instant::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        host: req.headers().get(header::HOST).cloned(),
        version: req.version(),
        grpc,
        status: 0,
        flags: "-",
        request_bytes: Arc::new(AtomicU64::new(0)),
        target: None,
        decision: "-",
        trace,
    };
    if let Err(reply) = normalize(&mut req) {
        ctx.proxy.metrics.reject(Rejection::bad_path);
        return local(record, reply);
    }
    let target = match route(&ctx, &req) {
        Ok(t) => t,
        Err(reply) => return local(record, reply),
    };
    let span = tracing::Span::current();
    if let Some(r) = &target.route {
        span.record("route", r.as_str());
    }
    span.record("upstream", tracing::field::display(target.endpoint.addr));
    record.target = Some(target.clone());
    let upstream_req = prepare_request(req, &ctx, &target, &record);
    match forward(&ctx.proxy, &target, upstream_req).await {
        Ok(resp) => respond(resp, &ctx, record),
        Err(reply) => local(record, reply),
    }
}

/// Checks the request path. Full normalization (dot segments, percent
/// encoding, merged slashes) belongs to the authorization module once L7
/// policy is applied; here a path that is not origin-form is refused.
fn normalize(req: &mut Request<Incoming>) -> Result<(), LocalReply> {
    let path = req.uri().path();
    if req.method() == Method::CONNECT || path.starts_with('/') {
        Ok(())
    } else {
        Err(LocalReply::BadRequest)
    }
}

/// Picks where the request goes: for workload traffic that pod; for service
/// traffic one of the service port's healthy endpoints.
fn route(ctx: &StreamContext, req: &Request<Incoming>) -> Result<Target, LocalReply> {
    let h2 = ctx.downstream == Protocol::Http2 || headers::is_grpc(req.headers());
    let timeout = ctx.proxy.limits.default_request_timeout;
    match &ctx.destination {
        Destination::Workload(w, addr) => Ok(Target {
            service: None,
            endpoint: Endpoint {
                workload: w.clone(),
                addr: *addr,
            },
            timeout,
            route: None,
            h2,
        }),
        Destination::Service(service, port) => {
            let endpoint = pick_endpoint(&ctx.proxy, service, *port)?;
            Ok(Target {
                service: Some(service.clone()),
                endpoint,
                timeout,
                route: None,
                h2,
            })
        }
    }
}

/// One healthy endpoint of the service port, chosen at random.
fn pick_endpoint(proxy: &Proxy, service: &Service, port: u16) -> Result<Endpoint, LocalReply> {
    let discovery = proxy.discovery.load();
    let endpoints = discovery.endpoints(service, port);
    if endpoints.is_empty() {
        proxy.metrics.reject(Rejection::no_healthy_upstream);
        return Err(LocalReply::NoHealthyUpstream);
    }
    let i = rand::random_range(0..endpoints.len());
    Ok(endpoints[i].clone())
}

/// The protocol a service port declares in the waypoint's config, if any.
pub fn port_protocol(proxy: &Proxy, service: &Service, port: u16) -> Option<Protocol> {
    use mesh_api::ambit::waypoint::v1::Protocol as P;
    let config = proxy.config.load();
    let s = config
        .as_ref()?
        .services
        .iter()
        .find(|s| s.hostname == service.hostname)?;
    let p = s.ports.iter().find(|p| p.port == u32::from(port))?;
    match P::try_from(p.protocol).ok()? {
        P::Detect => None,
        P::Http1 => Some(Protocol::Http1),
        P::Http2 | P::Grpc => Some(Protocol::Http2),
        P::Tcp => Some(Protocol::Tcp),
    }
}

/// The request as the endpoint gets it: hop-by-hop headers gone, XFCC set
/// from the caller's certificate (a forged one removed), `x-forwarded-proto`,
/// a request id, and the trace continued with the waypoint's span.
fn prepare_request(
    req: Request<Incoming>,
    ctx: &StreamContext,
    target: &Target,
    record: &Record,
) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    h.remove(headers::XFCC);
    if let Some(xfcc) = &ctx.caller.xfcc {
        h.insert(headers::XFCC, xfcc.clone());
    }
    h.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if !h.contains_key(headers::X_REQUEST_ID) {
        h.insert(
            headers::X_REQUEST_ID,
            headers::new_request_id(&mut rand::rng()),
        );
    }
    h.insert(headers::TRACEPARENT, record.trace.header_value());
    // The authority the app sees: the caller's, else the service's name.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            h.get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| target.service.as_ref().map(|s| s.hostname.clone()))
        .unwrap_or_else(|| target.endpoint.addr.to_string());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if target.h2 {
        parts.version = Version::HTTP_2;
        h.remove(header::HOST);
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| parts.uri.clone());
    } else {
        parts.version = Version::HTTP_11;
        if !h.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&authority)
        {
            h.insert(header::HOST, v);
        }
        parts.uri = Uri::from(path);
    }
    let body = CountedBody::new(body, record.request_bytes.clone()).boxed_unsync();
    Request::from_parts(parts, body)
}

/// Sends the request to the chosen endpoint within the route's timeout.
async fn forward(
    proxy: &Proxy,
    target: &Target,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, LocalReply> {
    let send = proxy.upstream.send(&target.endpoint, target.h2, req);
    let result = match target.timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => return Err(LocalReply::Timeout),
        },
        None => send.await,
    };
    result.map_err(|error| {
        tracing::debug!(%error, "upstream request failed");
        LocalReply::UpstreamFailed
    })
}

/// The endpoint's response as the caller gets it.
fn respond(
    resp: Response<Incoming>,
    ctx: &StreamContext,
    mut record: Record,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if ctx.drain.is_draining() && ctx.downstream == Protocol::Http1 {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    record.status = parts.status.as_u16();
    tracing::Span::current().record("status", record.status);
    let grpc_status = parts.headers.get("grpc-status").cloned();
    let mut body = ResponseBody::upstream(body);
    body.on_finish(Box::new(record), grpc_status);
    Response::from_parts(parts, body)
}

/// A reply the waypoint makes itself, recorded like any other.
fn local(mut record: Record, reply: LocalReply) -> Response<ResponseBody> {
    let mut resp = reply.response(record.grpc);
    record.status = resp.status().as_u16();
    record.flags = reply.response_flag();
    tracing::Span::current().record("status", record.status);
    if record.ctx.drain.is_draining() && record.ctx.downstream == Protocol::Http1 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let grpc_status = resp.headers().get("grpc-status").cloned();
    let (parts, mut body) = resp.into_parts();
    body.on_finish(Box::new(record), grpc_status);
    Response::from_parts(parts, body)
}

impl Finish for Record {
    fn finish(self: Box<Self>, response_bytes: u64, grpc_status: Option<&HeaderValue>) {
        let r = *self;
        let ctx = &r.ctx;
        let duration = r.start.elapsed();
        let grpc_status = grpc_status.and_then(|v| v.to_str().ok());
        let request_bytes = r.request_bytes.load(Ordering::Relaxed);
        let endpoint = r.target.as_ref().map(|t| &t.endpoint);
        let service =
            r.target
                .as_ref()
                .and_then(|t| t.service.as_deref())
                .or(match &ctx.destination {
                    Destination::Service(s, _) => Some(&**s),
                    Destination::Workload(..) => None,
                });
        let parties = Parties {
            source: ctx.source.as_deref(),
            source_principal: &ctx.caller.uri,
            destination: endpoint.map(|e| &*e.workload),
            service,
        };
        let labels = RequestLabels::new(
            &parties,
            if r.grpc { "grpc" } else { "http" },
            r.status,
            grpc_status,
            r.flags,
        );
        let m = &ctx.proxy.metrics;
        m.requests.get_or_create(&labels).inc();
        m.duration_ms
            .get_or_create(&labels)
            .observe(duration.as_secs_f64() * 1000.0);
        m.request_bytes
            .get_or_create(&labels)
            .observe(request_bytes as f64);
        m.response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
        crate::access_log::line(&crate::access_log::Entry {
            start: r.started,
            method: r.method.as_str(),
            authority: r
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| r.host.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or(""),
            path: r.uri.path(),
            protocol: protocol_name(r.version, r.grpc),
            status: r.status,
            grpc_status,
            flags: r.flags,
            request_bytes,
            response_bytes,
            duration,
            upstream: endpoint.map(|e| e.addr),
            source_principal: &ctx.caller.uri,
            destination_principal: endpoint.map(|e| e.workload.identity.to_string()),
            route: r.target.as_ref().and_then(|t| t.route.as_deref()),
            decision: r.decision,
            trace_id: &r.trace.trace_id,
            client: ctx.client,
        });
    }
}

fn protocol_name(v: Version, grpc: bool) -> &'static str {
    match (grpc, v) {
        (true, _) => "gRPC",
        (false, Version::HTTP_2) => "HTTP/2",
        (false, Version::HTTP_10) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}
