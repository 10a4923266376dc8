//! Outbound requests: each finds its endpoint (service → route → backend →
//! endpoint, see the parent module), may ride HTTP/2 to a meshed peer's
//! proxy, and on a retryable route is replayed to another endpoint while
//! the budget allows.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{Backend, Endpoint, Service, pick};
use crate::discovery::Resolution;
use crate::http::body::{ProxyBody, RequestBody};
use crate::http::error::ProxyError;
use crate::http::retry::{self, RetryPolicy};
use crate::http::{
    Attempt, Exchange, HttpConn, ProfileEnd, elapsed_ms, headers, request_target, respond,
};
use crate::metrics::AuthorityMetrics;
use crate::proxy::Shared;

/// What an outbound HTTP connection knows.
pub struct Conn {
    /// Where a redirected connection's requests go. `None` in explicit-proxy
    /// mode, where every request names its own target.
    target: Option<ConnTarget>,
    /// The listener's own address, to refuse requests that would loop.
    listen_addr: SocketAddr,
}

/// A redirected connection's original destination.
enum ConnTarget {
    /// Discovery off: the address itself.
    Addr(SocketAddr),
    /// Discovery on: the address's service, as the destination service
    /// answers for it.
    Discovered {
        resolution: Arc<Resolution>,
        addr: SocketAddr,
    },
}

impl Conn {
    pub fn new(shared: &Shared, target: Option<SocketAddr>, listen_addr: SocketAddr) -> Self {
        let target = target.map(|addr| match &shared.discovery {
            Some(discovery) => ConnTarget::Discovered {
                resolution: discovery.subscribe(&addr.to_string()),
                addr,
            },
            None => ConnTarget::Addr(addr),
        });
        Conn {
            target,
            listen_addr,
        }
    }

    /// Forwards one request to the endpoint chosen for it.
    pub async fn forward(
        &self,
        conn: &HttpConn,
        req: Request<Incoming>,
        exchange: &Exchange,
    ) -> (
        Arc<AuthorityMetrics>,
        Result<Response<ProxyBody>, ProxyError>,
    ) {
        // An explicit-proxy CONNECT is tunnelled, not pooled.
        let tunnel = self.target.is_none() && req.method() == Method::CONNECT;
        let service = self.service(conn, &req, exchange.authority.as_ref()).await;
        if let Ok(Service {
            backend: super::Backend::Policy(compiled),
            ..
        }) = &service
            && !tunnel
        {
            return super::routed::forward(conn, req, compiled, exchange, self.listen_addr).await;
        }
        let counted = match &service {
            Ok(s) if tunnel => super::OpaqueRouteCount::open(&conn.shared, s),
            _ => None,
        };
        let chosen = match service {
            Ok(service) => match service
                .backend
                .endpoint(conn.shared.config.discovery_timeout)
                .await
            {
                Ok(endpoint)
                    if self.target.is_none() && is_self(endpoint.addr, self.listen_addr) =>
                {
                    Err(ProxyError::Loop(endpoint.addr))
                }
                Ok(endpoint) => Ok((service, endpoint)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let target_addr = chosen.as_ref().map_or(self.listen_addr, |(_, e)| e.addr);
        let dialer = &conn.shared.pools.dialer;
        let metrics = conn
            .metrics
            .for_request(exchange.authority(), target_addr, || {
                let labels = match &chosen {
                    Ok((
                        Service {
                            discovery: Some(d), ..
                        },
                        _,
                    )) if !tunnel => d.labels(target_addr),
                    _ => Default::default(),
                };
                (dialer.identity(target_addr), labels)
            });
        metrics.request_total.inc();
        let result = match chosen {
            Ok((_, endpoint)) if tunnel => tunnel_to(conn, req, endpoint.addr, counted)
                .await
                .inspect(|resp| {
                    let status = metrics.status(resp.status().as_u16());
                    status.latency_ms.observe(elapsed_ms(exchange.started));
                    status.count(crate::metrics::Class::Http { failure: false });
                }),
            Ok((service, endpoint)) => {
                proxy(conn, req, &service, endpoint, &metrics, exchange).await
            }
            Err(e) => {
                super::OpaqueRouteCount::refused(counted, &e);
                Err(e)
            }
        };
        (metrics, result)
    }

    /// The service a request addressed: the connection's original
    /// destination, or in explicit-proxy mode what its authority names.
    async fn service(
        &self,
        conn: &HttpConn,
        req: &Request<Incoming>,
        authority: Option<&Authority>,
    ) -> Result<Service, ProxyError> {
        let config = &conn.shared.config;
        match &self.target {
            Some(ConnTarget::Addr(addr)) => return Ok(Service::addr(*addr)),
            Some(ConnTarget::Discovered { resolution, addr }) => {
                return Service::discovered(config, resolution.clone(), Some(*addr)).await;
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
        match discoverable(&conn.shared, authority) {
            Some(resolution) => {
                Service::discovered(config, resolution, literal_addr(authority)).await
            }
            None => Ok(Service::addr(dns_lookup(authority).await?)),
        }
    }
}

/// Forwards a pooled request: the profile route decides the timeout, the
/// classification and whether a failed attempt may go to another endpoint.
async fn proxy(
    conn: &HttpConn,
    mut req: Request<Incoming>,
    service: &Service,
    endpoint: Endpoint,
    metrics: &AuthorityMetrics,
    exchange: &Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Endpoint { addr, pick } = endpoint;
    let upgrade = headers::is_upgrade(&req);
    let is_connect = req.method() == Method::CONNECT;
    let version = req.version();
    headers::strip_hop_by_hop(req.headers_mut(), version, upgrade);
    request_target(&mut req, conn.http2, exchange.authority.clone(), addr)?;
    // An HTTP/1 request may ride HTTP/2 to a meshed peer's proxy; a
    // connection that will be handed over (upgrade, CONNECT) may not.
    let may_upgrade = !conn.http2 && !upgrade && !is_connect;
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let profile = service.profile();
    let route = profile
        .as_deref()
        .and_then(|p| p.route(req.method(), req.uri().path()));
    let timeout = route
        .and_then(|r| r.timeout)
        .or(conn.shared.config.response_timeout);
    let deadline = timeout.map(|t| (exchange.started + t, t));
    let route_metrics = route.map(|r| {
        r.metrics.get_or_init(|| {
            let dst = profile.as_deref().map_or("", |p| p.name.as_str());
            let dst = if dst.is_empty() {
                service.discovery.as_ref().map_or("", |d| d.target.as_str())
            } else {
                dst
            };
            conn.shared
                .metrics
                .route(crate::metrics::Direction::Outbound, dst, &r.name)
        })
    });
    if let Some(p) = &profile {
        p.budget.deposit();
    }
    if let Some(m) = route_metrics {
        m.request_total.inc();
    }
    let retryable = route.is_some_and(|r| r.retryable) && !upgrade && !is_connect;
    let retrying = match (retryable, &service.backend, profile.as_deref()) {
        (true, Backend::Balanced(backend), Some(profile)) => Some((backend, &profile.budget)),
        _ => None,
    };
    let attempt_of = Attempt {
        conn,
        route,
        route_metrics,
        may_upgrade,
        deadline,
    };
    let pools = &conn.shared.pools;
    let result = match retrying {
        None => {
            let req = req.map(RequestBody::Streaming);
            attempt_of.send(&pools.outbound(addr), req, pick).await.0
        }
        Some((backend, budget)) => {
            let policy = RetryPolicy {
                budget,
                metrics: route_metrics,
            };
            let (head, mut body) = retry::replayable(req, retry::MAX_REPLAY_BODY);
            let (mut pool, mut pick, mut attempt) = (pools.outbound(addr), pick, 1);
            loop {
                let replay = body.handle();
                let req = head.request(RequestBody::Replay(body));
                let (result, failed) = attempt_of.send(&pool, req, pick.take()).await;
                let timed_out = deadline.is_some_and(|(at, _)| Instant::now() >= at);
                let Some(again) = policy.next(attempt, &result, failed, timed_out, &replay) else {
                    break result;
                };
                // The failed answer is dropped unread: its headers decided it.
                if let (Some(m), Ok(resp)) = (route_metrics, &result) {
                    m.status(resp.status().as_u16())
                        .actual_response
                        .count(crate::http::header_class(route, resp));
                }
                body = again;
                // Another endpoint of the same backend, chosen afresh; the
                // failed answer is dropped.
                match pick_again(backend, pool.addr) {
                    Some(next) => {
                        pool = pools.outbound(next.addr());
                        pick = Some(next);
                    }
                    None => break result,
                }
                attempt += 1;
                debug!(attempt, %addr, "retrying");
            }
        }
    };
    // The route's answer is counted when its body ends (`respond`), or
    // here when there is none.
    if let Some(m) = route_metrics {
        let code = match &result {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        let status = m.status(code);
        status.latency_ms.observe(elapsed_ms(exchange.started));
        if result.is_err() {
            status
                .response
                .count(crate::metrics::Class::Http { failure: true });
        }
    }
    let profile = route
        .zip(route_metrics)
        .map(|(route, metrics)| ProfileEnd { route, metrics });
    Ok(respond(
        conn,
        result?,
        on_client_upgrade,
        is_connect,
        metrics,
        exchange,
        profile,
    ))
}

/// A retry's endpoint: another of the backend's, if one is available.
fn pick_again(backend: &Resolution, failed: SocketAddr) -> Option<crate::balance::Pick> {
    pick(backend, Some(failed)).ok()
}

/// With discovery on, the resolution of an explicit-proxy authority that the
/// destination service may know: an IP:port, or a name under one of the
/// configured suffixes.
fn discoverable(shared: &Shared, authority: &Authority) -> Option<Arc<Resolution>> {
    let discovery = shared.discovery.as_ref()?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_end_matches('.');
    let known = literal_addr(authority).is_some()
        || shared
            .config
            .destination_suffixes
            .iter()
            .any(|suffix| host.ends_with(suffix.trim_end_matches('.')));
    known.then(|| discovery.subscribe(&format!("{host}:{port}")))
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

/// The authority's address from the system resolver (explicit proxy,
/// without discovery for it).
async fn dns_lookup(authority: &Authority) -> Result<SocketAddr, ProxyError> {
    if let Some(addr) = literal_addr(authority) {
        return Ok(addr);
    }
    let port = authority.port_u16().unwrap_or(80);
    let failed = |reason: String| ProxyError::Resolve {
        authority: authority.to_string(),
        reason,
    };
    tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no addresses".into()))
}

/// Explicit-proxy `CONNECT host:port`: dial the target, answer 200, then splice
/// the client's connection to it.
async fn tunnel_to(
    conn: &HttpConn,
    mut req: Request<Incoming>,
    addr: SocketAddr,
    counted: Option<super::OpaqueRouteCount>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = match conn.shared.pools.dialer.connect_opaque(addr).await {
        Ok(upstream) => upstream,
        Err(e) => {
            super::OpaqueRouteCount::close(counted, "unexpected");
            return Err(e.into());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = conn.shared.config.tcp_idle_timeout;
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
        match crate::io::copy_bidirectional(client, upstream, &upstream_conn, idle).await {
            Ok((sent, received)) => debug!(%addr, sent, received, "tunnel closed"),
            Err(e) => debug!(%addr, error = %e, "tunnel ended"),
        }
        super::OpaqueRouteCount::close(counted, "");
    });
    Ok(Response::new(ProxyBody::empty()))
}

/// Whether `addr` is the proxy's own listener (a request that would loop).
fn is_self(addr: SocketAddr, listen: SocketAddr) -> bool {
    let local_ip = listen.ip().is_loopback() || listen.ip().is_unspecified();
    addr.port() == listen.port()
        && (addr.ip() == listen.ip()
            || addr.ip().is_unspecified()
            || (local_ip && addr.ip().is_loopback()))
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
}
