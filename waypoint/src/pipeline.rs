//! One request through the waypoint, as named phases in order: trace
//! context, normalize, authenticate (JWT), authorize, route, request
//! headers, pick an endpoint, forward, response headers, respond; the
//! access-log line and metrics are recorded when the response body ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use http_body_util::Full;

use crate::Outcome;
use crate::authn;
use crate::authz::{self, Decision, HttpAttrs, RequestAttrs};
use crate::body::{CountedBody, Finish, ResponseBody};
use crate::config::{Protocol as ConfigProtocol, ServiceConfig, Snapshot};
use crate::discovery::{Endpoint, Service};
use crate::errors::LocalReply;
use crate::filters;
use crate::headers::{self, TraceContext};
use crate::jwt::Verified;
use crate::listener::{Destination, Protocol, StreamContext};
use crate::metrics::{DenialLabels, Parties, Rejection, RequestKey, RequestLabels};
use crate::proxy::Proxy;
use crate::retry;
use crate::route::{self, RequestHead, Rule, Selection};
use crate::upstream::{EndpointBody, UpstreamBody};

/// What the route phase chose: where the request goes and with what limits.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The service whose endpoints serve the request (the route's backend,
    /// or the destination service itself), `None` for workload traffic.
    pub service: Option<Arc<Service>>,
    /// The service port the endpoints are looked up by.
    pub port: u16,
    /// For workload traffic: that pod.
    pub workload: Option<Endpoint>,
    pub rule: Option<&'a Rule>,
    /// The backend's own filters.
    pub backend_filters: Option<&'a crate::filters::Filters>,
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
    route: Option<String>,
    service: Option<Arc<Service>>,
    endpoint: Option<Endpoint>,
    decision: String,
    /// `<iss>/<sub>` of a verified JWT.
    request_principal: Option<String>,
    trace: TraceContext,
}

/// The largest request body buffered so that it can be retried or mirrored.
const MAX_REPLAY_BODY: usize = 1 << 20;

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
        route: None,
        service: None,
        endpoint: None,
        decision: String::new(),
        request_principal: None,
        trace,
    };
    if let Err(reply) = normalize(&mut req) {
        ctx.proxy.metrics.reject(Rejection::bad_path);
        return local(record, reply);
    }
    let snapshot = ctx.proxy.config.load_full();
    let service_config = service_config(snapshot.as_deref(), &ctx.destination);
    let auth = match authenticate(&ctx, &mut req, snapshot.as_deref(), service_config) {
        Ok(auth) => auth,
        Err(reply) => return local(record, reply),
    };
    if let Some(a) = &auth {
        record.request_principal = Some(a.principal.clone());
    }
    if let Err(reply) = authorize(
        &ctx,
        &req,
        auth.as_ref(),
        snapshot.as_deref(),
        service_config,
        &mut record,
    ) {
        return local(record, reply);
    }
    let target = match route(&ctx, &mut req, service_config) {
        Ok(t) => t,
        Err(Routed::Reply(reply)) => return local(record, reply),
        Err(Routed::Redirect(status, location)) => return redirect(record, status, &location),
    };
    let span = tracing::Span::current();
    if let Some(r) = &target.route {
        span.record("route", r.as_str());
    }
    record.route = target.route.clone();
    record.service = target.service.clone();
    if let Some(reply) = fault(&target).await {
        return local(record, reply);
    }
    let upstream_req = prepare_request(req, &ctx, &target, &record);
    match forward(&ctx, &target, upstream_req, &mut record).await {
        Ok(resp) => respond(resp, &ctx, &target, record),
        Err(reply) => local(record, reply),
    }
}

/// Normalizes the path (dot segments, escapes, repeated slashes) before
/// routing and authorization see it; a path that cannot be normalized
/// (encoded slash, NUL, `..` above the root) is refused with 400.
fn normalize(req: &mut Request<Incoming>) -> Result<(), LocalReply> {
    if req.method() == Method::CONNECT {
        return Err(LocalReply::BadRequest);
    }
    let raw = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let normalized = authz::normalize_path(raw).map_err(|e| {
        tracing::debug!(error = %e, path = raw, "unnormalizable path");
        LocalReply::BadRequest
    })?;
    if normalized != raw {
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(normalized))
                .map_err(|_| LocalReply::BadRequest)?,
        );
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| LocalReply::BadRequest)?;
    }
    Ok(())
}

/// The compiled config of the destination service, if the waypoint has one.
fn service_config<'a>(
    snapshot: Option<&'a Snapshot>,
    destination: &Destination,
) -> Option<&'a ServiceConfig> {
    let snapshot = snapshot?;
    match destination {
        Destination::Service(s, port) => snapshot.service_by_host(&s.hostname).or_else(|| {
            s.vips
                .iter()
                .find_map(|ip| snapshot.service_for(*ip, *port))
        }),
        Destination::Workload(..) => None,
    }
}

/// The host the request names, without a port.
fn request_host(req: &Request<Incoming>) -> &str {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    filters::host_without_port(host)
}

/// RequestAuthentication: the JWT rules of the Gateway and of the
/// destination service (workload traffic: the Gateway's only). Skipped
/// outright, with nothing allocated, when there are none. A token no rule
/// validates is 401 (gRPC: UNAUTHENTICATED), counted as `jwt_invalid`; a
/// verified one is removed (unless forwarded) and its claims copied to the
/// configured headers.
fn authenticate(
    ctx: &StreamContext,
    req: &mut Request<Incoming>,
    snapshot: Option<&Snapshot>,
    service: Option<&ServiceConfig>,
) -> Result<Option<Verified>, LocalReply> {
    let Some(snapshot) = snapshot else {
        return Ok(None);
    };
    let gateway = snapshot.gateway_authentications();
    let service = service.map(|s| &s.authentications);
    if gateway.is_empty() && service.is_none_or(|s| s.is_empty()) {
        return Ok(None);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match authn::decide(gateway, service, req.headers(), req.uri().query(), now) {
        Ok(plan) => {
            authn::apply_headers(&plan, req.headers_mut());
            authn::apply_uri(&plan, req.uri_mut());
            Ok(plan.verified)
        }
        Err(reason) => {
            tracing::debug!(%reason, "JWT refused");
            ctx.proxy.metrics.reject(Rejection::jwt_invalid);
            Err(LocalReply::Unauthenticated(reason.reply_text()))
        }
    }
}

/// L7 authorization: the Gateway's policies, then the service's (workload
/// traffic: the Gateway's only). A denial is 403 `RBAC: access denied`
/// (gRPC: PERMISSION_DENIED), counted with the policy that decided.
fn authorize(
    ctx: &StreamContext,
    req: &Request<Incoming>,
    auth: Option<&Verified>,
    snapshot: Option<&Snapshot>,
    service: Option<&ServiceConfig>,
    record: &mut Record,
) -> Result<(), LocalReply> {
    let Some(snapshot) = snapshot else {
        return Ok(());
    };
    let gateway = snapshot.gateway_policies();
    let service_policies = service.map(|s| &s.policies);
    if gateway.is_empty() && service_policies.is_none_or(|p| p.is_empty()) {
        return Ok(());
    }
    let (destination_ip, destination_port) = ctx.destination.addr();
    let attrs = RequestAttrs {
        source_principal: ctx
            .caller
            .identity
            .as_ref()
            .map(|_| ctx.caller.uri.as_str()),
        source_ip: ctx.client_ip(),
        destination_ip,
        destination_port,
        request: Some(HttpAttrs {
            method: req.method(),
            path: req.uri().path(),
            host: request_host(req),
            headers: req.headers(),
            auth,
        }),
    };
    match authz::decide(gateway, service_policies, &attrs) {
        Decision::Allow { policy } => {
            if let Some(p) = policy {
                record.decision = format!("allow:{p}");
            }
            Ok(())
        }
        Decision::Deny { policy, .. } => {
            let name = policy.to_string();
            ctx.proxy.metrics.reject(Rejection::authz_denied);
            ctx.proxy
                .metrics
                .denied
                .get_or_create(&DenialLabels {
                    policy: name.clone(),
                })
                .inc();
            record.decision = format!("deny:{name}");
            Err(LocalReply::Denied)
        }
    }
}

/// Why the route phase answered instead of choosing a target.
enum Routed {
    Reply(LocalReply),
    Redirect(u16, String),
}

/// Chooses the rule (HTTPRoute/GRPCRoute precedence), applies its request
/// filters, and picks the backend service: the route's weighted choice, or
/// the service itself when no route applies. Workload traffic goes to that
/// pod.
fn route<'a>(
    ctx: &StreamContext,
    req: &mut Request<Incoming>,
    service_config: Option<&'a ServiceConfig>,
) -> Result<Target<'a>, Routed> {
    let h2 = ctx.downstream == Protocol::Http2 || headers::is_grpc(req.headers());
    let (service, port) = match &ctx.destination {
        Destination::Workload(w, addr) => {
            return Ok(Target {
                service: None,
                port: addr.port(),
                workload: Some(Endpoint {
                    workload: w.clone(),
                    addr: *addr,
                }),
                rule: None,
                backend_filters: None,
                route: None,
                h2,
            });
        }
        Destination::Service(s, port) => (s.clone(), *port),
    };
    let itself = Target {
        service: Some(service),
        port,
        workload: None,
        rule: None,
        backend_filters: None,
        route: None,
        h2,
    };
    let Some(config) = service_config else {
        return Ok(itself);
    };
    let host = request_host(req).to_string();
    let head = RequestHead {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        host: &host,
        port,
    };
    let selected = match config.routes.select(&head) {
        Selection::NoRoutes => return Ok(itself),
        Selection::NoMatch => return Err(Routed::Reply(LocalReply::NoRoute)),
        Selection::Matched(s) => s,
    };
    let rule = selected.rule;
    let route_name = format!("{}/{}", selected.route.namespace, selected.route.name);
    if let Some(r) = &rule.filters.redirect {
        let (status, location) = filters::redirect(r, &head, "http", selected.matched_prefix);
        return Err(Routed::Redirect(status.as_u16(), location));
    }
    let prefix = selected.matched_prefix.map(str::to_string);
    let backend = route::pick_backend(rule, &mut rand::rng());
    apply_request_filters(req, &rule.filters, prefix.as_deref(), &host);
    let Some(backend) = backend else {
        // A rule without usable backends: Gateway API says 500.
        return Err(Routed::Reply(LocalReply::NoHealthyUpstream));
    };
    apply_request_filters(req, &backend.filters, prefix.as_deref(), &host);
    let discovery = ctx.proxy.discovery.load();
    let backend_service = discovery.service_by_host(&backend.hostname).cloned();
    let Some(backend_service) = backend_service else {
        tracing::debug!(backend = %backend.hostname, "route backend not in discovery");
        return Err(Routed::Reply(LocalReply::NoHealthyUpstream));
    };
    Ok(Target {
        service: Some(backend_service),
        port: if backend.port == 0 {
            port
        } else {
            backend.port
        },
        workload: None,
        rule: Some(rule),
        backend_filters: Some(&backend.filters),
        route: Some(route_name),
        h2,
    })
}

fn apply_request_filters(
    req: &mut Request<Incoming>,
    f: &crate::filters::Filters,
    matched_prefix: Option<&str>,
    host: &str,
) {
    if let Some(m) = &f.request_headers {
        filters::modify_headers(m, req.headers_mut());
    }
    if let Some(r) = &f.rewrite {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let (path, new_host) = filters::rewrite(r, pq, host, matched_prefix);
        if let Ok(p) = PathAndQuery::from_maybe_shared(bytes::Bytes::from(path)) {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(p);
            if parts.authority.is_some() {
                parts.authority = new_host.parse().ok().or(parts.authority);
            }
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
        if new_host != host
            && let Ok(v) = HeaderValue::from_str(&new_host)
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}

/// Fault injection: the rule's delay, then its abort, by percentage.
async fn fault(target: &Target<'_>) -> Option<LocalReply> {
    let policy = target.rule?.fault.as_ref()?;
    let action = crate::fault::decide(policy, &mut rand::rng());
    if let Some(d) = action.delay {
        tokio::time::sleep(d).await;
    }
    action
        .abort
        .map(|a| LocalReply::Fault(a.http_status, u16::try_from(a.grpc_status).unwrap_or(2)))
}

/// One endpoint of the target, chosen by the balancer (least-request over
/// latency, ejected endpoints left out).
fn pick_endpoint(proxy: &Proxy, target: &Target<'_>) -> Result<Endpoint, LocalReply> {
    if let Some(e) = &target.workload {
        return Ok(e.clone());
    }
    let Some(service) = &target.service else {
        return Err(LocalReply::NoHealthyUpstream);
    };
    let discovery = proxy.discovery.load();
    let endpoints = discovery.endpoints(service, target.port);
    let keys: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
    let Some(key) = proxy.balancer.pick(&keys, &mut rand::rng()) else {
        proxy.metrics.reject(Rejection::no_healthy_upstream);
        return Err(LocalReply::NoHealthyUpstream);
    };
    endpoints
        .iter()
        .find(|e| e.addr == key)
        .cloned()
        .ok_or(LocalReply::NoHealthyUpstream)
}

/// The protocol a service port declares in the waypoint's config, if any.
pub fn port_protocol(proxy: &Proxy, service: &Service, port: u16) -> Option<Protocol> {
    let config = proxy.config.load();
    let s = config.as_ref()?.service_by_host(&service.hostname)?;
    match s.port(port)?.protocol {
        ConfigProtocol::Detect => None,
        ConfigProtocol::Http1 => Some(Protocol::Http1),
        ConfigProtocol::Http2 | ConfigProtocol::Grpc => Some(Protocol::Http2),
        ConfigProtocol::Tcp => Some(Protocol::Tcp),
    }
}

/// The request as the endpoint gets it: hop-by-hop headers gone, XFCC set
/// from the caller's certificate (a forged one removed), `x-forwarded-proto`,
/// a request id, and the trace continued with the waypoint's span.
fn prepare_request(
    req: Request<Incoming>,
    ctx: &StreamContext,
    target: &Target<'_>,
    record: &Record,
) -> Request<CountedBody<Incoming>> {
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
        .or_else(|| target.workload.as_ref().map(|w| w.addr.to_string()))
        .unwrap_or_default();
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
    let body = CountedBody::new(body, record.request_bytes.clone());
    Request::from_parts(parts, body)
}

/// A request that can be sent more than once (retries, mirrors): its head
/// and its buffered body.
struct Replayable {
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Replayable {
    fn request(&self) -> Request<UpstreamBody> {
        let mut r = Request::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Sends the request: to an endpoint the balancer picks, within the rule's
/// timeouts, retried on the rule's retryable outcomes while the retry budget
/// allows (with jittered back-off), mirrors fired and forgotten.
async fn forward(
    ctx: &StreamContext,
    target: &Target<'_>,
    req: Request<CountedBody<Incoming>>,
    record: &mut Record,
) -> Result<Response<EndpointBody>, LocalReply> {
    let proxy = &ctx.proxy;
    let rule = target.rule;
    let retry = rule.and_then(|r| r.retry.as_ref());
    let mirrors = rule.map(|r| r.mirrors.as_slice()).unwrap_or(&[]);
    let request_timeout = rule
        .and_then(|r| r.timeouts.request)
        .or(proxy.limits.default_request_timeout);
    let try_timeout = rule.and_then(|r| r.timeouts.backend_request);
    let _active = proxy.budget.start_request();
    let work = async {
        if retry.is_none() && mirrors.is_empty() {
            let endpoint = pick_endpoint(proxy, target)?;
            let (result, _) = attempt(
                proxy,
                target,
                &endpoint,
                req.map(|b| b.boxed_unsync()),
                try_timeout,
            )
            .await;
            record.endpoint = Some(endpoint);
            return result;
        }
        // Retries and mirrors replay the body: buffer it (bounded).
        let (parts, body) = req.into_parts();
        let body = http_body_util::Limited::new(body, MAX_REPLAY_BODY)
            .collect()
            .await
            .map_err(|_| LocalReply::BadRequest)?
            .to_bytes();
        let replay = Replayable {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
        };
        for m in mirrors {
            mirror(ctx, m, &replay, target);
        }
        let mut n = 1;
        let mut _permit = None;
        loop {
            let endpoint = pick_endpoint(proxy, target)?;
            let (result, outcome) =
                attempt(proxy, target, &endpoint, replay.request(), try_timeout).await;
            record.endpoint = Some(endpoint);
            let Some(policy) = retry else { return result };
            let replay_safe = matches!(outcome, Outcome::ConnectFailed)
                || matches!(
                    replay.method,
                    Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
                );
            if !retry::should_retry(policy, n, &outcome, replay_safe) {
                return result;
            }
            let Some(permit) = proxy.budget.try_retry() else {
                tracing::debug!("retry budget exhausted; returning the attempt's result");
                return result;
            };
            _permit = Some(permit);
            drop(result);
            let pause = retry::backoff(policy, n, &mut rand::rng());
            tokio::time::sleep(pause).await;
            n += 1;
        }
    };
    match request_timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(LocalReply::Timeout)),
        None => work.await,
    }
}

/// One try at one endpoint, reported to the balancer.
async fn attempt(
    proxy: &Proxy,
    target: &Target<'_>,
    endpoint: &Endpoint,
    req: Request<UpstreamBody>,
    timeout: Option<Duration>,
) -> (Result<Response<EndpointBody>, LocalReply>, Outcome) {
    let in_flight = proxy.balancer.start(endpoint.addr);
    let started = Instant::now();
    let send = proxy.upstream.send(endpoint, target.h2, req);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, send).await.ok(),
        None => Some(send.await),
    };
    let (result, outcome) = match result {
        None => (Err(LocalReply::Timeout), Outcome::Timeout),
        Some(Ok(resp)) => {
            let code = resp.status().as_u16();
            (Ok(resp), Outcome::Status(code))
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "upstream request failed");
            let outcome = if error.is_connect_failure() {
                Outcome::ConnectFailed
            } else {
                Outcome::Reset
            };
            (Err(LocalReply::UpstreamFailed), outcome)
        }
    };
    in_flight.finish(outcome, started.elapsed());
    (result, outcome)
}

/// Sends a copy to the mirror backend and forgets it: its own timeout, its
/// response discarded, never delaying or failing the request.
fn mirror(ctx: &StreamContext, m: &route::Mirror, replay: &Replayable, target: &Target<'_>) {
    if m.percent < 100.0 && rand::random::<f64>() * 100.0 >= m.percent {
        return;
    }
    let discovery = ctx.proxy.discovery.load();
    let Some(service) = discovery.service_by_host(&m.backend.hostname) else {
        return;
    };
    let port = if m.backend.port == 0 {
        target.port
    } else {
        m.backend.port
    };
    let endpoints = discovery.endpoints(service, port);
    if endpoints.is_empty() {
        return;
    }
    let endpoint = endpoints[rand::random_range(0..endpoints.len())].clone();
    let req = replay.request();
    let proxy = ctx.proxy.clone();
    let h2 = target.h2;
    tokio::spawn(async move {
        let send = proxy.upstream.send(&endpoint, h2, req);
        if let Ok(Ok(resp)) = tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            // Read and drop, so the connection can be reused.
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, resp.into_body().collect()).await;
        }
    });
}

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint's response as the caller gets it.
fn respond(
    resp: Response<EndpointBody>,
    ctx: &StreamContext,
    target: &Target<'_>,
    mut record: Record,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    for f in [target.rule.map(|r| &r.filters), target.backend_filters]
        .into_iter()
        .flatten()
    {
        if let Some(m) = &f.response_headers {
            filters::modify_headers(m, &mut parts.headers);
        }
    }
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

/// A redirect the route asked for.
fn redirect(mut record: Record, status: u16, location: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    record.status = resp.status().as_u16();
    let (parts, mut body) = resp.into_parts();
    body.on_finish(Box::new(record), None);
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
        let grpc_text = grpc_status.and_then(|v| v.to_str().ok());
        let request_bytes = r.request_bytes.load(Ordering::Relaxed);
        let endpoint = r.endpoint.as_ref();
        let service = r.service.clone().or_else(|| match &ctx.destination {
            Destination::Service(s, _) => Some(s.clone()),
            Destination::Workload(..) => None,
        });
        let make = || {
            let parties = Parties {
                source: ctx.source.as_deref(),
                source_principal: &ctx.caller.uri,
                destination: endpoint.map(|e| &*e.workload),
                service: service.as_deref(),
            };
            ctx.proxy.metrics.request_metrics(&RequestLabels::new(
                &parties,
                if r.grpc { "grpc" } else { "http" },
                r.status,
                grpc_text,
                r.flags,
            ))
        };
        let key = RequestKey {
            destination: endpoint.map(|e| e.workload.clone()),
            service: service.clone(),
            grpc: r.grpc,
            status: r.status,
            grpc_status: grpc_status.cloned(),
            flags: r.flags,
        };
        let metrics = ctx.request_metrics.get(key, make);
        metrics.record(
            duration.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes,
        );
        ctx.proxy.access_log.line(&crate::access_log::Entry {
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
            grpc_status: grpc_text,
            flags: r.flags,
            request_bytes,
            response_bytes,
            duration,
            upstream: endpoint.map(|e| e.addr),
            source_principal: &ctx.caller.uri,
            request_principal: r.request_principal.as_deref(),
            destination_principal: endpoint.map(|e| &e.workload.identity),
            route: r.route.as_deref(),
            decision: if r.decision.is_empty() {
                "-"
            } else {
                &r.decision
            },
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
