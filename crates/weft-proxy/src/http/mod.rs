//! HTTP proxying: serve the client's connection with hyper, forward each
//! request to its endpoint over a kept connection, stream the response back.
//!
//! A request keeps its protocol end to end, except between two meshed
//! proxies: the outbound proxy sends HTTP/1 requests to a peer whose
//! discovery entry carries the `h2` hint as HTTP/2 on one multiplexed
//! connection, marked with `l5d-orig-proto`, and the inbound proxy turns
//! them back into HTTP/1 for the application (Linkerd's wire format, so
//! either side may be linkerd2-proxy). Bodies stream in both directions
//! without being held back (a retryable request keeps a copy of up to
//! 64 KiB while it streams); hyper's flow control bounds what is held in
//! memory.

pub mod body;
pub mod client;
pub mod error;
pub mod headers;
pub mod retry;
pub mod strict;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use self::body::{ProxyBody, RequestBody, ResponseEnd, grpc_status};
use self::client::{Endpoint, Lease};
use self::error::ProxyError;
use self::retry::RetryPolicy;
use crate::balance::{NoEndpoint, Pick};
use crate::discovery::{Answer, Resolution};
use crate::drain::Watch;
use crate::metrics::{AuthorityMetrics, Direction, HttpConnMetrics};
use crate::proxy::Shared;
use crate::tcp;

pub const L5D_CLIENT_ID: &str = "l5d-client-id";
/// Marks an HTTP/1 request carried over HTTP/2 between two proxies; the
/// value is its original version (`HTTP/1.1`, `HTTP/1.0`).
pub const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// One client connection being served as HTTP.
pub struct HttpConn {
    pub direction: Direction,
    pub http2: bool,
    /// The listener's own address, to refuse requests that would loop.
    pub listen_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub metrics: HttpConnMetrics,
    pub watch: Watch,
    /// Inbound: the `l5d-client-id` the application sees, from the client's
    /// verified mesh certificate.
    client_id: Option<http::HeaderValue>,
    /// Where a redirected connection's requests go. `None` in explicit-proxy
    /// mode, where every request names its own target.
    dest: Option<Dest>,
    /// The HTTP/1 connection this client connection is using upstream.
    lease: Lease,
    /// HTTP/1 clients: what the strict request reader found.
    strict: Option<Arc<strict::Shared>>,
}

impl HttpConn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        direction: Direction,
        target: Option<SocketAddr>,
        http2: bool,
        listen_addr: SocketAddr,
        shared: Arc<Shared>,
        metrics: HttpConnMetrics,
        client_id: Option<weft_identity::Identity>,
        watch: Watch,
    ) -> Self {
        let dest = target.map(|addr| match (&shared.discovery, direction) {
            (Some(discovery), Direction::Outbound) => Dest::Resolved {
                resolution: discovery.resolve(&addr.to_string()),
                addr,
            },
            _ => Dest::Fixed(shared.clients.endpoint(direction, addr)),
        });
        let strict = (!http2).then(|| strict::Shared::new(direction, shared.metrics.clone()));
        HttpConn {
            direction,
            http2,
            listen_addr,
            shared,
            metrics,
            watch,
            client_id: client_id.and_then(|id| http::HeaderValue::from_str(id.as_str()).ok()),
            dest,
            lease: Lease::default(),
            strict,
        }
    }
}

/// A redirected connection's destination.
enum Dest {
    /// Inbound, or outbound without discovery: the original destination.
    Fixed(Arc<Endpoint>),
    /// Outbound with discovery: balanced over what the destination service
    /// answers for the original destination `addr`.
    Resolved {
        resolution: Arc<Resolution>,
        addr: SocketAddr,
    },
}

/// Drives a hyper connection until it ends; once draining starts, asks it to
/// finish in-flight requests and close.
macro_rules! until_drained {
    ($conn:expr, $watch:expr) => {{
        // A boxed connection (`Pin<Box<_>>`).
        let mut conn = $conn;
        tokio::select! {
            res = conn.as_mut() => res,
            _ = $watch.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// Serves one client connection whose protocol has been detected.
pub async fn serve<I>(io: I, conn: Arc<HttpConn>) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = conn.watch.clone();
    let config = &conn.shared.config;
    let limits = strict::Limits {
        max_head: config.http_max_head_size,
        head_timeout: config.http_header_read_timeout,
    };
    // The strict reader times a head from its first byte and answers 408;
    // hyper's timer runs from when it starts waiting, so with the same value
    // it could close the connection first, with no answer. It is the
    // backstop for connections that send nothing, at twice the value.
    let header_read_timeout = config.http_header_read_timeout.saturating_mul(2);
    let strict = conn.strict.clone();
    let svc = service_fn(move |req| handle(conn.clone(), req));
    match strict {
        // Each protocol's connection is boxed on its own, so an HTTP/1
        // connection does not carry room for HTTP/2's state, and back.
        None => {
            // Pings find peers that vanished without closing; a header
            // block is bounded like an HTTP/1 head.
            let c = Box::pin(
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
                    .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
                    .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
                    .max_concurrent_streams(HTTP2_MAX_STREAMS)
                    .serve_connection(TokioIo::new(io), svc),
            );
            until_drained!(c, watch)
        }
        Some(strict) => {
            let io = TokioIo::new(strict::StrictIo::new(io, limits, strict));
            // Heads reach hyper whole and checked; its own timer bounds idle
            // keep-alive connections (see above), and its buffer stays small.
            let c = Box::pin(
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .max_buf_size(HTTP1_READ_BUFFER)
                    .serve_connection(io, svc)
                    .with_upgrades(),
            );
            until_drained!(c, watch)
        }
    }
}

const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Concurrent streams per client HTTP/2 connection.
const HTTP2_MAX_STREAMS: u32 = 200;

/// hyper's read buffer per HTTP/1 client connection: room for a checked head
/// and some body, and a bound on what one connection holds.
const HTTP1_READ_BUFFER: usize = 64 * 1024;

async fn handle(
    conn: Arc<HttpConn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let grpc = is_grpc(req.headers());
    // The strict reader holds the connection after a protocol-switch request
    // until it learns how the request ended.
    let switch = conn.strict.clone().filter(|_| headers::is_upgrade(&req));
    let is_connect = req.method() == Method::CONNECT;
    let authority = request_authority(&req);
    let target = target(&conn, &req, authority.as_ref()).await;
    let target_addr = target.as_ref().map_or(conn.listen_addr, Target::addr);
    let dialer = &conn.shared.clients.dialer;
    let metrics = conn.metrics.for_request(
        authority.as_ref().map_or("", Authority::as_str),
        target_addr,
        || {
            let labels = match &target {
                Ok(Target::Pooled {
                    resolution: Some(r),
                    ..
                }) => r.labels(target_addr),
                _ => Default::default(),
            };
            (dialer.identity(conn.direction, target_addr), labels)
        },
    );
    metrics.request_total.inc();
    // Kept for the error log; cloning shares the URI's buffers.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let result = match target {
        Ok(target) => proxy(&conn, req, authority, target, &metrics, started, grpc).await,
        Err(e) => Err(e),
    };
    if let Some(strict) = switch {
        let switched = result.as_ref().is_ok_and(|resp| {
            resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (is_connect && resp.status().is_success())
        });
        strict.upgraded(switched);
    }
    match result {
        Ok(resp) => Ok(resp),
        Err(err) => {
            info!(%method, path = uri.path(), error = %err, "request failed");
            conn.shared.metrics.http_error(conn.direction, err.kind());
            let resp = err.to_response(grpc);
            let status = metrics.status(resp.status().as_u16());
            status.latency_ms.observe(elapsed_ms(started));
            status.failure.inc();
            Ok(resp)
        }
    }
}

/// Where a request goes: the connection's redirect target, or in explicit-proxy
/// mode the address its authority names; with discovery, an endpoint chosen
/// by the balancer.
enum Target {
    Pooled {
        endpoint: Arc<Endpoint>,
        /// The balancer's choice, told how the request went.
        pick: Option<Pick>,
        /// The target's discovery: its profile, and new picks for retries.
        resolution: Option<Arc<Resolution>>,
    },
    /// An explicit-proxy CONNECT: tunnelled, not pooled.
    Tunnel(SocketAddr),
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Pooled { endpoint, .. } => endpoint.addr,
            Target::Tunnel(addr) => *addr,
        }
    }
}

/// An endpoint for `resolution`, or `fallback` (the address as given) when the
/// destination service does not know the target.
async fn balanced(
    conn: &HttpConn,
    resolution: &Resolution,
    fallback: Option<SocketAddr>,
) -> Result<Result<Pick, SocketAddr>, ProxyError> {
    let config = &conn.shared.config;
    let timeout = config.discovery_timeout;
    let refused = || ProxyError::DiscoveryTimeout {
        target: resolution.target.clone(),
        timeout,
    };
    match choose(resolution, timeout).await? {
        Choice::Pick(pick) => Ok(Ok(pick)),
        Choice::Unknown => fallback.map(Err).ok_or_else(refused),
        Choice::NoAnswer => fallback
            .filter(|addr| may_guess(config, *addr))
            .map(Err)
            .ok_or_else(refused),
    }
}

/// Whether `addr` may be dialled as addressed when the destination service
/// has not answered: not when it is in the mesh's networks, where it may be
/// a meshed endpoint that must be reached over mTLS.
pub fn may_guess(config: &crate::config::Config, addr: SocketAddr) -> bool {
    !config
        .mesh_networks
        .iter()
        .any(|net| net.contains(addr.ip()))
}

async fn target(
    conn: &HttpConn,
    req: &Request<Incoming>,
    authority: Option<&Authority>,
) -> Result<Target, ProxyError> {
    match &conn.dest {
        Some(Dest::Fixed(endpoint)) => {
            return Ok(Target::Pooled {
                endpoint: endpoint.clone(),
                pick: None,
                resolution: None,
            });
        }
        Some(Dest::Resolved { resolution, addr }) => {
            let (addr, pick) = match balanced(conn, resolution, Some(*addr)).await? {
                Ok(pick) => (pick.addr(), Some(pick)),
                Err(addr) => (addr, None),
            };
            return Ok(Target::Pooled {
                endpoint: conn.shared.clients.endpoint(Direction::Outbound, addr),
                pick,
                resolution: Some(resolution.clone()),
            });
        }
        None => {}
    }
    let connect = req.method() == Method::CONNECT;
    let authority = match (connect, authority) {
        (true, _) => req.uri().authority(),
        (false, a) => a,
    }
    .ok_or_else(|| {
        ProxyError::BadRequest(if connect {
            "CONNECT needs a host:port target".into()
        } else {
            "an explicit-proxy request needs an absolute URI or a Host header".into()
        })
    })?;
    let resolution = discoverable(conn, authority);
    let (addr, pick) = match &resolution {
        Some(resolution) => match balanced(conn, resolution, literal_addr(authority)).await? {
            Ok(pick) => (pick.addr(), Some(pick)),
            Err(addr) => (addr, None),
        },
        None => (resolve(authority).await?, None),
    };
    if is_self(addr, conn.listen_addr) {
        return Err(ProxyError::Loop(addr));
    }
    Ok(if connect {
        Target::Tunnel(addr)
    } else {
        Target::Pooled {
            endpoint: conn.shared.clients.endpoint(Direction::Outbound, addr),
            pick,
            resolution,
        }
    })
}

/// With discovery on, the resolution of an explicit-proxy authority that the
/// destination service may know: an IP:port, or a name under one of the
/// configured suffixes.
fn discoverable(conn: &HttpConn, authority: &Authority) -> Option<Arc<Resolution>> {
    let discovery = conn.shared.discovery.as_ref()?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_end_matches('.');
    let known = literal_addr(authority).is_some()
        || conn
            .shared
            .config
            .destination_suffixes
            .iter()
            .any(|suffix| host.ends_with(suffix.trim_end_matches('.')));
    known.then(|| discovery.resolve(&format!("{host}:{port}")))
}

/// The authority as a socket address, when its host is an IP.
fn literal_addr(authority: &Authority) -> Option<SocketAddr> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip = host.parse::<IpAddr>().ok()?;
    Some(SocketAddr::new(ip, authority.port_u16().unwrap_or(80)))
}

/// What discovery says about a target, for one request or connection.
pub enum Choice {
    /// An endpoint the balancer chose.
    Pick(Pick),
    /// The destination service answered that it does not know the target.
    Unknown,
    /// No answer within the discovery timeout.
    NoAnswer,
}

/// The balancer's choice for a known service.
pub async fn choose(
    resolution: &Resolution,
    timeout: std::time::Duration,
) -> Result<Choice, ProxyError> {
    let Some(answer) = resolution.answer(timeout).await else {
        return Ok(Choice::NoAnswer);
    };
    match &*answer {
        Answer::Unknown => Ok(Choice::Unknown),
        Answer::Endpoints(_) => match resolution.balancer.pick() {
            Ok(pick) => Ok(Choice::Pick(pick)),
            Err(NoEndpoint::Empty) => Err(ProxyError::NoEndpoints {
                target: resolution.target.clone(),
            }),
            Err(NoEndpoint::AllEjected(count)) => Err(ProxyError::AllEjected {
                target: resolution.target.clone(),
                count,
            }),
        },
    }
}

async fn proxy(
    conn: &HttpConn,
    mut req: Request<Incoming>,
    authority: Option<Authority>,
    target: Target,
    metrics: &AuthorityMetrics,
    started: Instant,
    grpc: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (endpoint, pick, resolution) = match target {
        Target::Pooled {
            endpoint,
            pick,
            resolution,
        } => (endpoint, pick, resolution),
        Target::Tunnel(addr) => {
            let resp = tunnel(conn, req, addr).await?;
            let status = metrics.status(resp.status().as_u16());
            status.latency_ms.observe(elapsed_ms(started));
            status.success.inc();
            return Ok(resp);
        }
    };
    let addr = endpoint.addr;

    let upgrade = headers::is_upgrade(&req);
    let is_connect = req.method() == Method::CONNECT;
    let version = req.version();
    headers::strip_hop_by_hop(req.headers_mut(), version, upgrade);
    let downgraded = conn.direction == Direction::Inbound && conn.http2 && downgrade(&mut req)?;
    if conn.http2 && !downgraded {
        *req.uri_mut() = absolute_uri(req.uri(), authority, addr)?;
    } else if !is_connect {
        origin_form(&mut req)?;
    }
    if conn.direction == Direction::Inbound {
        // Only this proxy may say who the client is: whatever came from outside
        // is dropped, and the verified identity is set after every other
        // header change, so nothing the client sent (a `Connection` header
        // naming it, say) can remove it.
        let headers = req.headers_mut();
        headers.remove(L5D_CLIENT_ID);
        if let Some(id) = &conn.client_id {
            headers.insert(L5D_CLIENT_ID, id.clone());
        }
    }
    // An outbound HTTP/1 request may ride HTTP/2 to a meshed peer's proxy;
    // a connection that will be handed over (upgrade, CONNECT) may not.
    let may_upgrade =
        conn.direction == Direction::Outbound && !conn.http2 && !upgrade && !is_connect;
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The profile route decides the timeout, the classification and whether
    // a failed attempt may be retried.
    let profile = resolution
        .as_ref()
        .and_then(|r| r.profile())
        .filter(|p| !p.opaque);
    let route = profile
        .as_deref()
        .and_then(|p| p.route(req.method(), req.uri().path()));
    let timeout = route
        .and_then(|r| r.timeout)
        .or(conn.shared.config.response_timeout);
    let deadline = timeout.map(|t| (started + t, t));
    let route_metrics = route.map(|r| {
        r.metrics.get_or_init(|| {
            let dst = profile.as_deref().map_or("", |p| p.name.as_str());
            let dst = if dst.is_empty() {
                resolution.as_ref().map_or("", |r| r.target.as_str())
            } else {
                dst
            };
            conn.shared.metrics.route(conn.direction, dst, &r.name)
        })
    });
    if let Some(p) = &profile {
        p.budget.deposit();
    }
    if let Some(m) = route_metrics {
        m.request_total.inc();
    }
    let retryable = route.is_some_and(|r| r.retryable) && !upgrade && !is_connect;
    let retrying = match (retryable, resolution.as_ref(), profile.as_deref()) {
        (true, Some(resolution), Some(profile)) => Some((resolution, &profile.budget)),
        _ => None,
    };
    let attempt_of = Attempt {
        conn,
        route,
        route_metrics,
        may_upgrade,
        deadline,
    };
    let result = match retrying {
        None => {
            let req = req.map(RequestBody::Streaming);
            attempt_of.send(&endpoint, req, pick).await.0
        }
        Some((resolution, budget)) => {
            let policy = RetryPolicy { budget };
            let (head, mut body) = retry::replayable(req);
            let (mut endpoint, mut pick, mut attempt) = (endpoint, pick, 1);
            loop {
                let replay = body.handle();
                let req = head.request(RequestBody::Replay(body));
                let (result, failed) = attempt_of.send(&endpoint, req, pick.take()).await;
                let timed_out = deadline.is_some_and(|(at, _)| Instant::now() >= at);
                let Some(again) = policy.next(attempt, &result, failed, timed_out, &replay) else {
                    break result;
                };
                body = again;
                // Another endpoint, chosen afresh; the failed answer is dropped.
                match resolution.balancer.pick_avoiding(endpoint.addr) {
                    Ok(next) => {
                        endpoint = conn
                            .shared
                            .clients
                            .endpoint(Direction::Outbound, next.addr());
                        pick = Some(next);
                    }
                    Err(_) => break result,
                }
                attempt += 1;
                debug!(attempt, %addr, "retrying");
            }
        }
    };
    if let Some(m) = route_metrics {
        let (code, failed) = match &result {
            Ok(resp) => (resp.status().as_u16(), is_failure(route, &result)),
            Err(e) => (e.status().as_u16(), true),
        };
        let status = m.status(code, failed);
        status.response.inc();
        status.latency_ms.observe(elapsed_ms(started));
    }
    let mut resp = result?;

    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && resp.status().is_success());
    if let Some(on_client) = on_client_upgrade
        && switched
    {
        let on_server = hyper::upgrade::on(&mut resp);
        splice_upgraded(on_client, on_server, conn.watch.clone());
    }
    let resp_version = resp.version();
    headers::strip_hop_by_hop(resp.headers_mut(), resp_version, switched);

    let status = metrics.status(resp.status().as_u16());
    status.latency_ms.observe(elapsed_ms(started));
    let (classify_grpc, http_failed) = match grpc.then(|| grpc_status(resp.headers())) {
        // A trailers-only gRPC response carries its status in the headers.
        Some(Some(code)) => (false, code != 0),
        Some(None) => (true, false),
        None => (false, resp.status().is_server_error()),
    };
    let end = ResponseEnd {
        success: status.success,
        failure: status.failure,
        grpc: classify_grpc,
        http_failed,
    };
    Ok(resp.map(|body| ProxyBody::upstream(body, end)))
}

/// What every attempt of one request shares.
struct Attempt<'a> {
    conn: &'a HttpConn,
    route: Option<&'a crate::profile::Route>,
    route_metrics: Option<&'a crate::metrics::RouteMetrics>,
    may_upgrade: bool,
    deadline: Option<(Instant, std::time::Duration)>,
}

impl Attempt<'_> {
    /// One attempt, the same whether it may be retried or not: sent within
    /// the deadline, its outcome told to the balancer and counted on the
    /// route. Also returns whether it failed by the route's classes.
    async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        req: Request<RequestBody>,
        pick: Option<crate::balance::Pick>,
    ) -> (Result<Response<Incoming>, ProxyError>, bool) {
        if let Some(m) = self.route_metrics {
            m.actual_request_total.inc();
        }
        let result = send(self.conn, endpoint, req, self.may_upgrade, self.deadline).await;
        if let Some(pick) = pick {
            pick.done(endpoint_failed(&result));
        }
        let failed = is_failure(self.route, &result);
        if let (Some(m), Ok(resp)) = (self.route_metrics, &result) {
            m.status(resp.status().as_u16(), failed)
                .actual_response
                .inc();
        }
        (result, failed)
    }
}

/// Whether a result is a failure: by the route's response classes, else a
/// 5xx; an error always is.
fn is_failure(
    route: Option<&crate::profile::Route>,
    result: &Result<Response<Incoming>, ProxyError>,
) -> bool {
    match result {
        Ok(resp) => route.map_or(resp.status().is_server_error(), |r| {
            r.is_failure(resp.status().as_u16())
        }),
        Err(_) => true,
    }
}

/// Sends one attempt, within the request's deadline: HTTP/2 on the
/// endpoint's shared connection, HTTP/1 on the client connection's lease,
/// or (downgraded from a peer's HTTP/2) on any idle connection. With
/// `may_upgrade`, an HTTP/1 request to a peer proxy that takes HTTP/2 goes
/// as HTTP/2.
async fn send(
    conn: &HttpConn,
    endpoint: &Arc<Endpoint>,
    req: Request<RequestBody>,
    may_upgrade: bool,
    deadline: Option<(Instant, std::time::Duration)>,
) -> Result<Response<Incoming>, ProxyError> {
    let addr = endpoint.addr;
    let response = async {
        if req.version() == http::Version::HTTP_2 {
            endpoint.send_http2(req).await
        } else if conn.http2 {
            endpoint.send_http1(req).await
        } else if may_upgrade && conn.shared.clients.dialer.http2_upgrade(addr) {
            let version = req.version();
            let mut resp = endpoint.send_http2(upgrade(req, addr)?).await?;
            *resp.version_mut() = version;
            resp.headers_mut().remove(L5D_ORIG_PROTO);
            Ok(resp)
        } else {
            conn.lease.send_http1(endpoint, req).await
        }
    };
    let result = match deadline {
        Some((at, timeout)) => tokio::time::timeout_at(at.into(), response)
            .await
            .unwrap_or(Err(ProxyError::ResponseTimeout { addr, timeout })),
        None => response.await,
    };
    // A request whose client broke its framing failed because of the client
    // (asked only on failure: the success path takes no lock).
    match result {
        Err(e) => match conn.strict.as_ref().and_then(|s| s.violation()) {
            Some(violation) => Err(ProxyError::BadRequest(violation.reason)),
            None => Err(e),
        },
        ok => ok,
    }
}

/// Turns an origin-form HTTP/1 request into HTTP/2 for a peer proxy: the
/// Host header becomes the authority, and `l5d-orig-proto` keeps the
/// version so the peer can restore it.
fn upgrade<B>(mut req: Request<B>, addr: SocketAddr) -> Result<Request<B>, ProxyError> {
    let orig_proto = if req.version() == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let host = req.headers_mut().remove(http::header::HOST);
    let authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    *req.uri_mut() = absolute_uri(req.uri(), authority, addr)?;
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut()
        .insert(L5D_ORIG_PROTO, http::HeaderValue::from_static(orig_proto));
    Ok(req)
}

/// Restores an HTTP/1 request that a peer proxy carried over HTTP/2;
/// whether the request was one. Linkerd may append `; absolute-form`, which
/// changes nothing here: requests reach the application in origin form.
pub fn downgrade<B>(req: &mut Request<B>) -> Result<bool, ProxyError> {
    let Some(value) = req.headers_mut().remove(L5D_ORIG_PROTO) else {
        return Ok(false);
    };
    let version = value.to_str().ok().and_then(|v| v.split(';').next());
    *req.version_mut() = match version.map(str::trim) {
        Some("HTTP/1.1") => http::Version::HTTP_11,
        Some("HTTP/1.0") => http::Version::HTTP_10,
        _ => {
            return Err(ProxyError::BadRequest(format!(
                "{L5D_ORIG_PROTO} must be HTTP/1.1 or HTTP/1.0, not {value:?}"
            )));
        }
    };
    Ok(true)
}

/// Whether an attempt's outcome counts against the endpoint (for failure
/// accrual): it failed, timed out or answered 5xx.
fn endpoint_failed(result: &Result<Response<Incoming>, ProxyError>) -> bool {
    match result {
        Ok(resp) => resp.status().is_server_error(),
        Err(e) => e.is_endpoint_failure() || matches!(e, ProxyError::ResponseTimeout { .. }),
    }
}

/// Explicit-proxy `CONNECT host:port`: dial the target, answer 200, then splice
/// the client's connection to it.
async fn tunnel(
    conn: &HttpConn,
    mut req: Request<Incoming>,
    addr: SocketAddr,
) -> Result<Response<ProxyBody>, ProxyError> {
    let config = &conn.shared.config;
    let upstream = conn
        .shared
        .clients
        .dialer
        .connect_opaque(Direction::Outbound, addr)
        .await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = config.tcp_idle_timeout;
    let watch = conn.watch.clone();
    tokio::spawn(async move {
        let _watch = watch;
        let client = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                return debug!(error = %e, "CONNECT client went away before the tunnel opened");
            }
        };
        let upstream_conn = upstream.conn().clone();
        match tcp::copy_bidirectional(client, upstream, &upstream_conn, idle).await {
            Ok((sent, received)) => debug!(%addr, sent, received, "tunnel closed"),
            Err(e) => debug!(%addr, error = %e, "tunnel ended"),
        }
    });
    Ok(Response::new(ProxyBody::empty()))
}

/// After a 101 (or a successful CONNECT), the connection belongs to the new
/// protocol: copy bytes between the two upgraded halves.
fn splice_upgraded(on_client: OnUpgrade, on_server: OnUpgrade, watch: Watch) {
    tokio::spawn(async move {
        let _watch = watch;
        match tokio::try_join!(on_client, on_server) {
            Ok((client, server)) => {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's authority: from an absolute URI (HTTP/2, explicit proxy) or
/// the Host header (origin-form HTTP/1).
fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(http::header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// The pooled client wants an absolute URI; the authority stays the client's.
fn absolute_uri(
    uri: &Uri,
    authority: Option<Authority>,
    addr: SocketAddr,
) -> Result<Uri, ProxyError> {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(uri.clone());
    }
    let authority = match authority {
        Some(a) => a,
        None => Authority::try_from(addr.to_string().as_str())
            .map_err(|e| ProxyError::BadRequest(format!("no usable authority: {e}")))?,
    };
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("cannot rebuild the request URI: {e}")))
}

/// An HTTP/1 request goes upstream in origin form; an absolute-form request
/// (explicit proxy) has its authority moved to Host, as RFC 9112 3.2.2 asks.
fn origin_form<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    let host = http::HeaderValue::from_str(authority.as_str())
        .map_err(|e| ProxyError::BadRequest(format!("unusable authority: {e}")))?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    req.headers_mut().insert(http::header::HOST, host);
    *req.uri_mut() = Uri::from(path);
    Ok(())
}

async fn resolve(authority: &Authority) -> Result<SocketAddr, ProxyError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |reason: String| ProxyError::Resolve {
        authority: authority.to_string(),
        reason,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no addresses".into()))
}

/// Whether `addr` is the proxy's own listener (a request that would loop).
fn is_self(addr: SocketAddr, listen: SocketAddr) -> bool {
    let local_ip = listen.ip().is_loopback() || listen.ip().is_unspecified();
    addr.port() == listen.port()
        && (addr.ip() == listen.ip()
            || addr.ip().is_unspecified()
            || (local_ip && addr.ip().is_loopback()))
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_detection() {
        let listen: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        assert!(is_self("127.0.0.1:4140".parse().unwrap(), listen));
        assert!(is_self("127.0.0.2:4140".parse().unwrap(), listen));
        assert!(is_self("0.0.0.0:4140".parse().unwrap(), listen));
        assert!(!is_self("127.0.0.1:8080".parse().unwrap(), listen));
        assert!(!is_self("198.18.0.2:4140".parse().unwrap(), listen));
    }

    #[test]
    fn absolute_uri_keeps_the_authority() {
        let addr: SocketAddr = "10.1.1.1:8080".parse().unwrap();
        let uri: Uri = "/a?b=1".parse().unwrap();
        let auth = Authority::from_static("web.svc:80");
        assert_eq!(
            absolute_uri(&uri, Some(auth), addr).unwrap(),
            "http://web.svc:80/a?b=1"
        );
        assert_eq!(
            absolute_uri(&uri, None, addr).unwrap(),
            "http://10.1.1.1:8080/a?b=1"
        );
        let abs: Uri = "http://x:1/p".parse().unwrap();
        assert_eq!(absolute_uri(&abs, None, addr).unwrap(), abs);
    }

    #[test]
    fn http1_requests_upgrade_and_downgrade_with_their_version() {
        let addr: SocketAddr = "10.1.1.1:8080".parse().unwrap();
        let req = Request::builder()
            .version(http::Version::HTTP_10)
            .uri("/a?b=1")
            .header(http::header::HOST, "web.demo:80")
            .body(())
            .unwrap();
        let mut up = upgrade(req, addr).unwrap();
        assert_eq!(up.version(), http::Version::HTTP_2);
        assert_eq!(up.uri(), "http://web.demo:80/a?b=1");
        assert!(up.headers().get(http::header::HOST).is_none());
        assert_eq!(up.headers()[L5D_ORIG_PROTO], "HTTP/1.0");

        assert!(downgrade(&mut up).unwrap());
        assert_eq!(up.version(), http::Version::HTTP_10);
        assert!(up.headers().get(L5D_ORIG_PROTO).is_none());
        origin_form(&mut up).unwrap();
        assert_eq!(up.uri(), "/a?b=1");
        assert_eq!(up.headers()[http::header::HOST], "web.demo:80");

        // Linkerd marks absolute-form requests; plain HTTP/2 is left alone.
        let mut linkerd = Request::builder()
            .header(L5D_ORIG_PROTO, "HTTP/1.1; absolute-form")
            .body(())
            .unwrap();
        assert!(downgrade(&mut linkerd).unwrap());
        assert_eq!(linkerd.version(), http::Version::HTTP_11);
        let mut native = Request::builder()
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(!downgrade(&mut native).unwrap());
        assert_eq!(native.version(), http::Version::HTTP_2);
        let mut bad = Request::builder()
            .header(L5D_ORIG_PROTO, "HTTP/2")
            .body(())
            .unwrap();
        let err = downgrade(&mut bad).unwrap_err().to_string();
        assert!(err.contains("not \"HTTP/2\""), "{err}");
    }
}
