//! Outbound requests routed by an outbound policy: the route (matches), its
//! filters, a backend by weight, the backend's balanced endpoint; the
//! rule's timeouts and retries around the attempts; Linkerd's route and
//! backend metrics.
//!
//! ```text
//! request ─▶ route (hosts, matches: Gateway API precedence; none: 404)
//!         ─▶ the target's outbound rate limit (429 past it)
//!         ─▶ rule filters (failure injector, redirect, request headers)
//!         ─▶ backend by weight among available ones ─▶ its filters
//!         ─▶ endpoint (the backend's balancer) ─▶ attempts:
//!              each within min(request deadline, response or retry timeout),
//!              retried on the rule's statuses and on retryable errors while
//!              retries, the replay buffer and the budget allow
//!         ─▶ response headers filters ─▶ client
//! ```

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use weft_policy::outbound::{Filter, HeaderModifier, Protocol, RouteBackend, Routed};

use super::policy::{BackendState, Compiled, RouteState};
use super::{Endpoint, pick};
use crate::http::body::{ProxyBody, RequestBody, grpc_status};
use crate::http::error::ProxyError;
use crate::http::retry;
use crate::http::{Attempt, Exchange, HttpConn, headers, request_target, respond};
use crate::metrics::{
    AuthorityMetrics, Outcome, PolicyBackendMetrics, PolicyRouteMetrics, RouteEnd,
};

/// What a request's rule and backend filters decided.
enum Filtered<'p> {
    /// Forward, then change the response's headers with these.
    Forward(Vec<&'p HeaderModifier>),
    /// Answered by a filter: a redirect.
    Answered(Response<ProxyBody>),
}

/// Forwards one request as the target's outbound policy says.
pub(super) async fn forward(
    conn: &HttpConn,
    mut req: Request<Incoming>,
    compiled: &Compiled,
    exchange: &Exchange,
    listen_addr: std::net::SocketAddr,
) -> (
    Arc<AuthorityMetrics>,
    Result<Response<ProxyBody>, ProxyError>,
) {
    let shared = &conn.shared;
    let policy = &compiled.policy;
    // A request the proxy answers itself is counted against its own listener.
    let answered = || {
        let metrics = conn
            .metrics
            .for_request(exchange.authority(), listen_addr, Default::default);
        metrics.request_total.inc();
        metrics
    };
    let unrouted = |e: ProxyError| (answered(), Err(e));
    let Some(routed) = policy.route(&req, conn.http2) else {
        return unrouted(ProxyError::NoRoute {
            parent: policy.parent.to_string(),
        });
    };
    let grpc = policy.protocol == Protocol::Grpc;
    let route_metrics = routed.route.state.metrics.get_or_init(|| {
        Arc::new(
            shared
                .metrics
                .policy_route(&policy.parent, &routed.route.meta, grpc),
        )
    });
    let since_start = || exchange.started.elapsed().as_secs_f64();
    if let Some(limiter) = &compiled.limiter
        && !limiter.admit()
    {
        let e = ProxyError::OutboundRateLimited {
            parent: policy.parent.to_string(),
            requests_per_second: limiter.requests_per_second,
        };
        route_metrics.response(Outcome::failed(&e, grpc), since_start());
        return unrouted(e);
    }
    let decided = decide(conn, &mut req, &routed).await;
    let (backend, response_filters, endpoint) = match decided {
        Ok(Decided::Forward(backend, filters, endpoint)) => (backend, filters, endpoint),
        Ok(Decided::Answered(resp)) => {
            route_metrics.response(
                Outcome::Status(u32::from(resp.status().as_u16())),
                since_start(),
            );
            return (answered(), Ok(resp));
        }
        Err(e) => {
            route_metrics.response(Outcome::failed(&e, grpc), since_start());
            return unrouted(e);
        }
    };
    let addr = endpoint.addr;
    let dialer = &shared.pools.dialer;
    let resolution = backend.state.resolution.as_ref();
    let metrics = conn.metrics.for_request(exchange.authority(), addr, || {
        (
            dialer.identity(addr),
            resolution.map(|r| r.labels(addr)).unwrap_or_default(),
        )
    });
    metrics.request_total.inc();
    let backend_metrics = backend
        .state
        .metrics
        .get_or_init(|| Arc::new(route_metrics.backend(&backend.meta)));
    let sent = Sent {
        conn,
        compiled,
        rule: routed.rule,
        backend,
        route_metrics,
        backend_metrics,
        exchange,
    };
    let result = sent.send(req, endpoint).await;
    let result = match result {
        Err(e) => {
            route_metrics.response(Outcome::failed(&e, grpc), since_start());
            Err(e)
        }
        Ok(((mut resp, on_client_upgrade, is_connect), attempt_started)) => {
            for f in &response_filters {
                f.apply(resp.headers_mut());
            }
            let end = RouteEnd {
                route: route_metrics.clone(),
                backend: backend_metrics.clone(),
                request_started: exchange.started,
                attempt_started,
                http_status: resp.status().as_u16(),
                header_grpc_status: grpc_status(resp.headers()),
            };
            let mut resp = respond(
                conn,
                resp,
                on_client_upgrade,
                is_connect,
                &metrics,
                exchange,
                None,
            );
            resp.body_mut().on_route_end(end);
            Ok(resp)
        }
    };
    (metrics, result)
}

enum Decided<'p> {
    Forward(
        &'p RouteBackend<BackendState>,
        Vec<&'p HeaderModifier>,
        Endpoint,
    ),
    Answered(Response<ProxyBody>),
}

/// The rule's filters, the backend and its filters, and the endpoint.
async fn decide<'p>(
    conn: &HttpConn,
    req: &mut Request<Incoming>,
    routed: &Routed<'p, RouteState, BackendState>,
) -> Result<Decided<'p>, ProxyError> {
    let mut response_filters = match apply_filters(&routed.rule.filters, routed, req)? {
        Filtered::Forward(f) => f,
        Filtered::Answered(resp) => return Ok(Decided::Answered(resp)),
    };
    let backend = routed
        .rule
        .backends
        .choose(fastrand::u32(..), BackendState::available)
        .ok_or_else(|| ProxyError::Injected {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            grpc: None,
            message: format!("route {} has no backends", routed.route.meta),
        })?;
    match apply_filters(&backend.filters, routed, req)? {
        Filtered::Forward(f) => response_filters.extend(f),
        Filtered::Answered(resp) => return Ok(Decided::Answered(resp)),
    }
    let endpoint =
        super::policy_backend_endpoint(backend, conn.shared.config.discovery_timeout).await?;
    Ok(Decided::Forward(backend, response_filters, endpoint))
}

/// Applies filters in order: request headers changed in place, a failure
/// injector or redirect answering instead of the backend.
fn apply_filters<'p>(
    filters: &'p [Filter],
    routed: &Routed<'p, RouteState, BackendState>,
    req: &mut Request<Incoming>,
) -> Result<Filtered<'p>, ProxyError> {
    let mut response = Vec::new();
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaders(m) => response.push(m),
            Filter::Fail {
                status,
                grpc,
                message,
                numerator,
                denominator,
            } => {
                if fastrand::u32(..*denominator) < *numerator {
                    return Err(ProxyError::Injected {
                        status: *status,
                        grpc: *grpc,
                        message: message.clone(),
                    });
                }
            }
            Filter::Redirect(r) => {
                let location = routed
                    .redirect_location(r, req)
                    .map_err(ProxyError::BadRequest)?;
                let mut resp = Response::new(ProxyBody::empty());
                *resp.status_mut() = r.status;
                resp.headers_mut().insert(http::header::LOCATION, location);
                return Ok(Filtered::Answered(resp));
            }
        }
    }
    Ok(Filtered::Forward(response))
}

/// Everything the attempts of one routed request share.
struct Sent<'a> {
    conn: &'a HttpConn,
    compiled: &'a Compiled,
    rule: &'a weft_policy::outbound::Rule<BackendState>,
    backend: &'a RouteBackend<BackendState>,
    route_metrics: &'a Arc<PolicyRouteMetrics>,
    backend_metrics: &'a Arc<PolicyBackendMetrics>,
    exchange: &'a Exchange,
}

type Sending = (Response<Incoming>, Option<hyper::upgrade::OnUpgrade>, bool);

impl Sent<'_> {
    /// Sends the request's attempts: the rule's timeouts around each, and
    /// retries to another endpoint of the same backend.
    async fn send(
        &self,
        mut req: Request<Incoming>,
        endpoint: Endpoint,
    ) -> Result<(Sending, Instant), ProxyError> {
        let conn = self.conn;
        let exchange = self.exchange;
        let Endpoint {
            addr,
            pick: first_pick,
        } = endpoint;
        let upgrade = headers::is_upgrade(&req);
        let is_connect = req.method() == Method::CONNECT;
        let version = req.version();
        headers::strip_hop_by_hop(req.headers_mut(), version, upgrade);
        request_target(&mut req, conn.http2, exchange.authority.clone(), addr)?;
        let may_upgrade = !conn.http2 && !upgrade && !is_connect;
        let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let timeouts = self.rule.timeouts;
        let request_deadline = timeouts
            .request
            .or(conn.shared.config.response_timeout)
            .map(|t| (exchange.started + t, t));
        let retry = self
            .rule
            .retry
            .as_ref()
            .filter(|r| r.max_retries > 0 && !upgrade && !is_connect);
        let per_attempt = retry.and_then(|r| r.timeout).or(timeouts.response);
        let attempt_deadline = || {
            let own = per_attempt.map(|t| (Instant::now() + t, t));
            match (own, request_deadline) {
                (Some(a), Some(r)) => Some(if a.0 <= r.0 { a } else { r }),
                (a, r) => a.or(r),
            }
        };
        let attempt_of = |deadline| Attempt {
            conn,
            route: None,
            route_metrics: None,
            may_upgrade,
            deadline,
        };
        let pools = &conn.shared.pools;
        let request_expired = || request_deadline.is_some_and(|(at, _)| Instant::now() >= at);
        let as_request_timeout = |e: ProxyError| match (e, request_deadline) {
            (ProxyError::ResponseTimeout { .. }, Some((at, timeout))) if Instant::now() >= at => {
                ProxyError::RequestTimeout { timeout }
            }
            (e, _) => e,
        };
        let resolution = self.backend.state.resolution.as_ref();
        let (Some(retry), Some(resolution)) = (retry, resolution) else {
            let req = req.map(RequestBody::Streaming);
            let result = self
                .attempt(
                    &attempt_of(attempt_deadline()),
                    &pools.outbound(addr),
                    req,
                    first_pick,
                )
                .await;
            return result
                .map(|(resp, started)| ((resp, on_client_upgrade, is_connect), started))
                .map_err(as_request_timeout);
        };
        self.compiled.budget.deposit();
        let limit = retry.max_request_bytes.clamp(1, retry::MAX_REPLAY_BODY);
        let (head, mut body) = retry::replayable(req, limit);
        let (mut pool, mut picked, mut retries) = (pools.outbound(addr), first_pick, 0u32);
        let result = loop {
            let replay = body.handle();
            let req = head.request(RequestBody::Replay(body));
            let result = self
                .attempt(&attempt_of(attempt_deadline()), &pool, req, picked.take())
                .await;
            let retryable = match &result {
                Ok((resp, _)) => retry.retries(resp.status(), grpc_status(resp.headers())),
                Err(ProxyError::ResponseTimeout { .. }) => !request_expired(),
                Err(e) => e.is_retryable(),
            };
            if !retryable {
                break result;
            }
            if retries >= retry.max_retries {
                self.route_metrics.retry_limit_exceeded.inc();
                break result;
            }
            // This attempt's answer is dropped for another: counted now.
            if let Ok((resp, started)) = &result {
                self.backend_metrics
                    .response(self.outcome(resp), started.elapsed().as_secs_f64());
            }
            let Some(again) = replay.again() else {
                self.route_metrics.retry_overflow.inc();
                break result;
            };
            if !self.compiled.budget.withdraw() {
                self.route_metrics.retry_overflow.inc();
                break result;
            }
            retries += 1;
            let delay = retry.backoff.delay(retries, fastrand::f32());
            let until = request_deadline.map_or(Instant::now() + delay, |(at, _)| {
                at.min(Instant::now() + delay)
            });
            tokio::time::sleep_until(until.into()).await;
            if request_expired() {
                break result;
            }
            body = again;
            // Another endpoint of the same backend, chosen afresh.
            match pick(resolution, Some(pool.addr)) {
                Ok(next) => {
                    pool = pools.outbound(next.addr());
                    picked = Some(next);
                }
                Err(_) => break result,
            }
            self.route_metrics.retry_requests.inc();
            tracing::debug!(retries, addr = %pool.addr, "retrying on the route's policy");
        };
        if retries > 0
            && result
                .as_ref()
                .is_ok_and(|(r, _)| !retry.retries(r.status(), grpc_status(r.headers())))
        {
            self.route_metrics.retry_successes.inc();
        }
        result
            .map(|(resp, started)| ((resp, on_client_upgrade, is_connect), started))
            .map_err(as_request_timeout)
    }

    /// An attempt's answer as its status label says it (HTTP status, or a
    /// trailers-only gRPC answer's `grpc-status`).
    fn outcome(&self, resp: &Response<Incoming>) -> Outcome {
        if self.route_metrics.grpc {
            Outcome::grpc(grpc_status(resp.headers()))
        } else {
            Outcome::Status(u32::from(resp.status().as_u16()))
        }
    }

    /// One attempt, counted on the backend; a failed one is counted now,
    /// an answer when it is dropped for a retry or when its body ends.
    async fn attempt(
        &self,
        attempt: &Attempt<'_>,
        pool: &Arc<crate::http::pool::Pool>,
        req: Request<RequestBody>,
        pick: Option<crate::balance::Pick>,
    ) -> Result<(Response<Incoming>, Instant), ProxyError> {
        self.backend_metrics.requests.inc();
        let started = Instant::now();
        let (result, _) = attempt.send(pool, req, pick).await;
        match result {
            Ok(resp) => Ok((resp, started)),
            Err(e) => {
                self.backend_metrics.response(
                    Outcome::failed(&e, self.route_metrics.grpc),
                    started.elapsed().as_secs_f64(),
                );
                Err(e)
            }
        }
    }
}
