//! HTTP mechanics both sides share: the hyper server for a client
//! connection, the request path's common ends (metrics per request, errors
//! answered by the proxy, response classification, upgrades), one
//! `Attempt` for every request sent, and the connection pools. What a
//! request needs on its way in or out is the side's: `inbound::http`
//! (restoring `l5d-orig-proto`, `l5d-client-id`) and `outbound::http`
//! (target choice, routes, balancing, retries).
//!
//! A request keeps its protocol end to end, except between two meshed
//! proxies ([`orig_proto`]). Bodies stream in both directions without being
//! held back (a retryable request keeps a copy of up to 64 KiB while it
//! streams); hyper's flow control bounds what is held in memory.

pub mod body;
pub mod error;
pub mod headers;
pub mod orig_proto;
pub mod pool;
pub mod retry;
pub mod strict;

use std::convert::Infallible;
use std::net::SocketAddr;
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

use self::body::{ProxyBody, RequestBody, ResponseEnd};
use self::error::ProxyError;
use self::orig_proto::L5D_ORIG_PROTO;
use self::pool::{Lease, Pool};
use crate::access_log::{AccessLog, Record, RequestFields};
use crate::drain::Watch;
use crate::metrics::Eos;
use crate::metrics::{AuthorityMetrics, Direction, HttpConnMetrics};
use crate::proxy::Shared;
use crate::{inbound, outbound};

/// One client connection being served as HTTP.
pub struct HttpConn {
    /// What the connection's side adds to each request.
    pub side: Side,
    pub http2: bool,
    pub shared: Arc<Shared>,
    pub metrics: HttpConnMetrics,
    pub watch: Watch,
    /// The HTTP/1 connection this client connection is using upstream.
    lease: Lease,
    /// HTTP/1 clients: what the strict request reader found.
    strict: Option<Arc<strict::Shared>>,
}

/// The side a client connection was accepted on, with what it knows.
pub enum Side {
    Inbound(inbound::http::Conn),
    Outbound(outbound::http::Conn),
}

impl Side {
    pub fn direction(&self) -> Direction {
        match self {
            Side::Inbound(_) => Direction::Inbound,
            Side::Outbound(_) => Direction::Outbound,
        }
    }
}

impl HttpConn {
    pub fn new(
        side: Side,
        http2: bool,
        shared: Arc<Shared>,
        metrics: HttpConnMetrics,
        watch: Watch,
    ) -> Self {
        let strict =
            (!http2).then(|| strict::Shared::new(side.direction(), shared.metrics.clone()));
        HttpConn {
            side,
            http2,
            shared,
            metrics,
            watch,
            lease: Lease::default(),
            strict,
        }
    }
}

/// What a side is told about each request it forwards.
pub struct Exchange {
    /// From the absolute URI or the Host header.
    pub authority: Option<Authority>,
    pub started: Instant,
    pub grpc: bool,
}

impl Exchange {
    pub fn authority(&self) -> &str {
        self.authority.as_ref().map_or("", Authority::as_str)
    }
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

/// Serves a client connection, logging how it ended.
pub async fn serve_logged<I>(io: I, conn: HttpConn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match serve(io, Arc::new(conn)).await {
        Err(e) if e.is_parse() || e.is_timeout() => {
            info!(error = %e, "closed HTTP connection: client sent a malformed or incomplete request")
        }
        Err(e) => debug!(error = %e, "HTTP connection ended with an error"),
        Ok(()) => {}
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
    let exchange = Exchange {
        authority: request_authority(&req),
        started: Instant::now(),
        grpc: is_grpc(req.headers()),
    };
    // The strict reader holds the connection after a protocol-switch request
    // until it learns how the request ended.
    let switch = conn.strict.clone().filter(|_| headers::is_upgrade(&req));
    let is_connect = req.method() == Method::CONNECT;
    // Kept for the error log; cloning shares the URI's buffers.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let logged = access_logged(&conn, &req);
    let (metrics, result) = match &conn.side {
        Side::Inbound(side) => side.forward(&conn, req, &exchange).await,
        Side::Outbound(side) => side.forward(&conn, req, &exchange).await,
    };
    if let Some(strict) = switch {
        let switched = result.as_ref().is_ok_and(|resp| {
            resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (is_connect && resp.status().is_success())
        });
        strict.upgraded(switched);
    }
    let result = match result {
        Ok(resp) => Ok(resp),
        Err(err) => {
            info!(%method, path = uri.path(), error = %err, "request failed");
            conn.shared
                .metrics
                .http_error(conn.side.direction(), err.kind());
            let resp = err.to_response(exchange.grpc);
            let status = metrics.status(resp.status().as_u16());
            status.latency_ms.observe(elapsed_ms(exchange.started));
            // The proxy's own answer is classified like any other: a 502
            // fails, a 403 is the mesh answering, a gRPC error by its code.
            status.count(
                Eos::start(resp.status().as_u16(), resp.headers(), exchange.grpc, None).end(None),
            );
            Ok(resp)
        }
    };
    if let (Some((log, record)), Ok(resp)) = (logged, &result) {
        log.log(record.finish(resp, exchange.started.elapsed()));
    }
    result
}

/// An inbound request's access-log record so far, when logging is on.
fn access_logged(
    conn: &HttpConn,
    req: &Request<Incoming>,
) -> Option<(Arc<AccessLog>, PendingRecord)> {
    let log = conn.shared.access_log.clone()?;
    let Side::Inbound(side) = &conn.side else {
        return None;
    };
    let (client_addr, client_id) = side.client();
    Some((
        log,
        PendingRecord {
            at: std::time::SystemTime::now(),
            client_addr,
            client_id: client_id.map(|id| id.as_str().into()),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            fields: RequestFields::of(req.headers()),
        },
    ))
}

/// What a record knows before the response.
struct PendingRecord {
    at: std::time::SystemTime,
    client_addr: SocketAddr,
    client_id: Option<Arc<str>>,
    method: Method,
    uri: http::Uri,
    version: http::Version,
    fields: RequestFields,
}

impl PendingRecord {
    fn finish<B>(self, resp: &Response<B>, total: std::time::Duration) -> Record {
        Record {
            at: self.at,
            client_addr: self.client_addr,
            client_id: self.client_id,
            method: self.method,
            uri: self.uri,
            version: self.version,
            host: self.fields.host,
            user_agent: self.fields.user_agent,
            trace_id: self.fields.trace_id,
            request_bytes: self.fields.request_bytes,
            status: resp.status().as_u16(),
            response_bytes: resp.headers().get(http::header::CONTENT_LENGTH).cloned(),
            total,
        }
    }
}

/// Puts the request target in the form the upstream connection takes:
/// absolute for HTTP/2, origin form for HTTP/1 (a CONNECT keeps its own).
pub(crate) fn request_target<B>(
    req: &mut Request<B>,
    absolute: bool,
    authority: Option<Authority>,
    addr: SocketAddr,
) -> Result<(), ProxyError> {
    if absolute {
        *req.uri_mut() = absolute_uri(req.uri(), authority, addr)?;
    } else if req.method() != Method::CONNECT {
        origin_form(req)?;
    }
    Ok(())
}

/// The end both sides share once an upstream answered: a switched protocol
/// spliced, hop-by-hop headers dropped, the response counted, and its body
/// classified when it ends.
pub(crate) fn respond(
    conn: &HttpConn,
    mut resp: Response<Incoming>,
    on_client_upgrade: Option<OnUpgrade>,
    is_connect: bool,
    metrics: &AuthorityMetrics,
    exchange: &Exchange,
    profile: Option<ProfileEnd>,
) -> Response<ProxyBody> {
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

    let code = resp.status().as_u16();
    let status = metrics.status(code);
    status.latency_ms.observe(elapsed_ms(exchange.started));
    let profile_class = profile.as_ref().and_then(|p| p.route.classify(code));
    let end = ResponseEnd {
        status,
        eos: Eos::start(code, resp.headers(), exchange.grpc, profile_class),
        profile_route: profile.map(|p| Box::new(p.metrics.status(code))),
        route: None,
    };
    resp.map(|body| ProxyBody::upstream(body, end))
}

/// A profile route's part in a response: its classes and its series.
pub(crate) struct ProfileEnd<'a> {
    pub route: &'a crate::profile::Route,
    pub metrics: &'a crate::metrics::RouteMetrics,
}

/// What every attempt of one request shares.
pub(crate) struct Attempt<'a> {
    pub conn: &'a HttpConn,
    pub route: Option<&'a crate::profile::Route>,
    pub route_metrics: Option<&'a crate::metrics::RouteMetrics>,
    pub may_upgrade: bool,
    pub deadline: Option<(Instant, std::time::Duration)>,
}

impl Attempt<'_> {
    /// One attempt, the same whether it may be retried or not: sent within
    /// the deadline, its outcome told to the balancer and counted on the
    /// route. Also returns whether it failed by the route's classes.
    pub async fn send(
        &self,
        pool: &Arc<Pool>,
        req: Request<RequestBody>,
        pick: Option<crate::balance::Pick>,
    ) -> (Result<Response<Incoming>, ProxyError>, bool) {
        if let Some(m) = self.route_metrics {
            m.actual_request_total.inc();
        }
        let result = send(self.conn, pool, req, self.may_upgrade, self.deadline).await;
        if let Some(pick) = pick {
            pick.done(endpoint_failed(&result));
        }
        let failed = is_failure(self.route, &result);
        (result, failed)
    }
}

/// Whether a result is a failure as its headers tell: by the route's
/// response classes, else a trailers-only `grpc-status` or a 5xx; an error
/// always is.
pub(crate) fn is_failure(
    route: Option<&crate::profile::Route>,
    result: &Result<Response<Incoming>, ProxyError>,
) -> bool {
    match result {
        Ok(resp) => header_class(route, resp).is_failure(),
        Err(_) => true,
    }
}

/// A response's class as far as its headers decide it (an open stream
/// counts as a success so far).
pub(crate) fn header_class<B>(
    route: Option<&crate::profile::Route>,
    resp: &Response<B>,
) -> crate::metrics::Class {
    let code = resp.status().as_u16();
    let profile = route.and_then(|r| r.classify(code));
    Eos::start(code, resp.headers(), false, profile).end(None)
}

/// Sends one attempt, within the request's deadline: HTTP/2 on the
/// endpoint's shared connection, HTTP/1 on the client connection's lease,
/// or (downgraded from a peer's HTTP/2) on any idle connection. With
/// `may_upgrade`, an HTTP/1 request to a peer proxy that takes HTTP/2 goes
/// as HTTP/2.
async fn send(
    conn: &HttpConn,
    pool: &Arc<Pool>,
    req: Request<RequestBody>,
    may_upgrade: bool,
    deadline: Option<(Instant, std::time::Duration)>,
) -> Result<Response<Incoming>, ProxyError> {
    let addr = pool.addr;
    let response = async {
        if req.version() == http::Version::HTTP_2 {
            pool.send_http2(req).await
        } else if conn.http2 {
            pool.send_http1(req).await
        } else if may_upgrade && conn.shared.pools.dialer.http2_upgrade(addr) {
            let version = req.version();
            let mut resp = pool.send_http2(orig_proto::upgrade(req, addr)?).await?;
            *resp.version_mut() = version;
            resp.headers_mut().remove(L5D_ORIG_PROTO);
            Ok(resp)
        } else {
            conn.lease.send_http1(pool, req).await
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

/// Whether an attempt's outcome counts against the endpoint (for failure
/// accrual): it failed, timed out or answered 5xx.
pub(crate) fn endpoint_failed(result: &Result<Response<Incoming>, ProxyError>) -> bool {
    match result {
        Ok(resp) => resp.status().is_server_error(),
        Err(e) => e.is_endpoint_failure() || matches!(e, ProxyError::ResponseTimeout { .. }),
    }
}

/// After a 101 (or a successful CONNECT), the connection belongs to the new
/// protocol: copy bytes between the two upgraded halves.
pub(crate) fn splice_upgraded(on_client: OnUpgrade, on_server: OnUpgrade, watch: Watch) {
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

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's authority: from an absolute URI (HTTP/2, explicit proxy) or
/// the Host header (origin-form HTTP/1).
pub(crate) fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(http::header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// The pooled client wants an absolute URI; the authority stays the client's.
pub(crate) fn absolute_uri(
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
pub(crate) fn origin_form<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
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

pub(crate) fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
