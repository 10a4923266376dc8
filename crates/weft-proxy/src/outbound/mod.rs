//! The outbound side: connections from this proxy's application to the
//! services it calls.
//!
//! ```text
//! accepted ─▶ redirected? target = original destination; else explicit proxy (each request names one)
//!          ─▶ opaque port? else detect
//!          ─┬▶ HTTP/1, HTTP/2 ─▶ http::serve (outbound::http: route ─▶ backend ─▶ endpoint)
//!           ├▶ opaque, TLS, nothing ─▶ service ─▶ endpoint, copied (mesh TLS to a meshed one)
//!           └▶ explicit proxy, not HTTP ─▶ closed
//! ```
//!
//! A request or connection finds its endpoint in three steps: the
//! [`Service`] it addressed (with its profile's routes), the [`Backend`]
//! that serves it (today one per service; traffic splits give a route
//! several, each with its own resolution and balancer), and the
//! [`Endpoint`] the backend's balancer picks.

pub mod http;
pub mod policy;
mod routed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};
use weft_policy::outbound::{BackendTarget, Refusal, RouteBackend};

use crate::balance::{NoEndpoint, Pick};
use crate::config::Config;
use crate::detect::{PrefixedIo, Protocol};
use crate::discovery::{Answer, Resolution};
use crate::drain::Watch;
use crate::http::error::ProxyError;
use crate::http::{HttpConn, Side};
use crate::io::Metered;
use crate::metrics::{Direction, HttpConnMetrics, Peer, TcpConn, TcpLabels, Tls};
use crate::proxy::{Accepted, Shared, copy_opaque, detect_unless_opaque};

/// Serves one outbound connection to its end.
pub async fn serve(shared: Arc<Shared>, accepted: Accepted, watch: Watch) {
    let config = &shared.config;
    // Not redirected: an explicit-proxy client, whose requests name their targets.
    let target = accepted.redirected().then_some(accepted.orig);
    let labels = TcpLabels::new(
        Direction::Outbound,
        Peer::Src,
        target.unwrap_or(accepted.local),
        Tls::Loopback,
    );
    let client_conn = shared.metrics.tcp_accepted(labels.clone());
    let mut io = Metered::new(accepted.stream, client_conn.clone());
    let Some((protocol, prefix)) = detect_unless_opaque(
        &mut io,
        target,
        &config.outbound_opaque_ports,
        config.outbound_detect_timeout,
    )
    .await
    else {
        return;
    };
    debug!(?target, protocol = protocol.as_str(), "serving");
    client_conn.label(labels);
    let io = PrefixedIo::new(prefix, io);
    match (protocol, target) {
        (Protocol::Http1 | Protocol::Http2, _) => {
            let metrics = HttpConnMetrics::new(
                shared.metrics.clone(),
                Direction::Outbound,
                Tls::NotProvidedByServiceDiscovery,
            );
            let side = Side::Outbound(http::Conn::new(&shared, target, accepted.listen_addr));
            let conn = HttpConn::new(side, protocol == Protocol::Http2, shared, metrics, watch);
            Box::pin(crate::http::serve_logged(io, conn)).await
        }
        (Protocol::Tls | Protocol::Opaque | Protocol::Nothing, Some(target)) => {
            Box::pin(forward_opaque(&shared, io, client_conn, target)).await
        }
        (Protocol::Tls | Protocol::Opaque | Protocol::Nothing, None) => {
            info!(
                "explicit-proxy client did not speak HTTP; closing (set http_proxy only for HTTP clients)"
            )
        }
    }
}

/// An opaque connection to `target`: with discovery, balanced on its own
/// over the target service's endpoints.
async fn forward_opaque<I>(
    shared: &Shared,
    client: I,
    client_conn: Arc<TcpConn>,
    target: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let service = match &shared.discovery {
        Some(discovery) => {
            let resolution = discovery.subscribe(&target.to_string());
            Service::discovered(&shared.config, resolution, Some(target)).await
        }
        None => Ok(Service::addr(target)),
    };
    let route = service
        .as_ref()
        .ok()
        .and_then(|s| OpaqueRouteCount::open(shared, s));
    let endpoint = match service {
        Ok(s) => s.backend.endpoint(shared.config.discovery_timeout).await,
        Err(e) => Err(e),
    };
    let Endpoint { addr, pick } = match endpoint {
        Ok(endpoint) => endpoint,
        Err(e) => {
            OpaqueRouteCount::refused(route, &e);
            return info!(error = %e, "opaque connection refused");
        }
    };
    let connected = shared.pools.dialer.connect_opaque(addr).await;
    if let Some(pick) = pick {
        pick.done(connected.is_err());
    }
    let server = match connected {
        Ok(s) => s,
        Err(e) => {
            OpaqueRouteCount::close(route, "unexpected");
            return info!(error = %e, "opaque connection refused: endpoint unreachable");
        }
    };
    copy_opaque(shared, client, server, &client_conn, addr).await;
    OpaqueRouteCount::close(route, "");
}

/// A connection on a policy's opaque route, counted as linkerd2-proxy
/// counts them (`outbound_tcp_route_open_total`, `_close_total` by error):
/// transparent connections and explicit-proxy CONNECT tunnels alike.
pub(crate) struct OpaqueRouteCount(Arc<crate::metrics::TcpRouteMetrics>);

impl OpaqueRouteCount {
    /// Counts a connection opened to `service`, when a policy routes it.
    pub(crate) fn open(shared: &Shared, service: &Service) -> Option<Self> {
        let Backend::Policy(compiled) = &service.backend else {
            return None;
        };
        let route = compiled.policy.opaque.first()?;
        let metrics = route
            .state
            .tcp
            .get_or_init(|| {
                Arc::new(
                    shared
                        .metrics
                        .tcp_route(&compiled.policy.parent, &route.meta),
                )
            })
            .clone();
        metrics.opened();
        Some(OpaqueRouteCount(metrics))
    }

    /// The connection ended; `error` empty when it ran its course.
    pub(crate) fn close(count: Option<Self>, error: &'static str) {
        if let Some(OpaqueRouteCount(metrics)) = count {
            metrics.closed(error);
        }
    }

    /// The connection was refused with `e` before it reached an endpoint.
    pub(crate) fn refused(count: Option<Self>, e: &ProxyError) {
        let error = match e {
            ProxyError::Refused { error, .. } => error,
            _ => "unexpected",
        };
        Self::close(count, error);
    }
}

/// The service a request or connection addressed: the first of the three
/// steps to an endpoint.
pub struct Service {
    /// The destination service's view of the target, when discovery is on
    /// for it: its profile's routes apply even when it knows no endpoints.
    pub discovery: Option<Arc<Resolution>>,
    /// What serves its requests.
    pub backend: Backend,
}

/// What serves a service's requests, the second step.
pub enum Backend {
    /// Balanced over the endpoints the destination service answers.
    Balanced(Arc<Resolution>),
    /// An address as given: no discovery, or the destination service does
    /// not know it (or has not answered, and the address may be guessed).
    Addr(SocketAddr),
    /// The target's outbound policy: each request's route chooses among
    /// weighted backends (`routed.rs`), each connection's opaque route too.
    Policy(Arc<policy::Compiled>),
}

impl Service {
    /// A target without discovery.
    pub fn addr(addr: SocketAddr) -> Self {
        Service {
            discovery: None,
            backend: Backend::Addr(addr),
        }
    }

    /// What discovery makes of `resolution`, waiting for its first answer
    /// at most the discovery timeout; `fallback` is the address as given,
    /// dialled when the destination service does not know the target.
    pub async fn discovered(
        config: &Config,
        resolution: Arc<Resolution>,
        fallback: Option<SocketAddr>,
    ) -> Result<Service, ProxyError> {
        let timeout = config.discovery_timeout;
        let refused = || ProxyError::DiscoveryTimeout {
            target: resolution.target.clone(),
            timeout,
        };
        let (answer, policy) = tokio::join!(resolution.answer(timeout), resolution.policy(timeout));
        // A ServiceProfile with routes takes precedence over the policy's
        // routes, as in Linkerd.
        let profiled = resolution.profile().is_some_and(|p| !p.routes.is_empty());
        if let Some(policy) = policy.filter(|_| !profiled) {
            return Ok(Service {
                discovery: Some(resolution),
                backend: Backend::Policy(policy),
            });
        }
        let backend = match answer.as_deref() {
            Some(Answer::Endpoints(_)) => Backend::Balanced(resolution.clone()),
            Some(Answer::Unknown) => fallback.map(Backend::Addr).ok_or_else(refused)?,
            None => fallback
                .filter(|addr| may_guess(config, *addr))
                .map(Backend::Addr)
                .ok_or_else(refused)?,
        };
        Ok(Service {
            discovery: Some(resolution),
            backend,
        })
    }

    /// The routes requests are matched against (none for an opaque service).
    pub fn profile(&self) -> Option<Arc<crate::profile::Profile>> {
        self.discovery
            .as_ref()
            .and_then(|d| d.profile())
            .filter(|p| !p.opaque)
    }
}

impl Backend {
    /// The endpoint for one request or connection, the third step: the
    /// balancer's pick (to be told how it went), or the address as given;
    /// a policy's backend may wait up to `timeout` for its first endpoints.
    pub async fn endpoint(&self, timeout: Duration) -> Result<Endpoint, ProxyError> {
        match self {
            Backend::Addr(addr) => Ok(Endpoint {
                addr: *addr,
                pick: None,
            }),
            Backend::Balanced(resolution) => {
                let pick = pick(resolution, None)?;
                Ok(Endpoint {
                    addr: pick.addr(),
                    pick: Some(pick),
                })
            }
            Backend::Policy(compiled) => opaque_endpoint(compiled, timeout).await,
        }
    }
}

/// A connection's endpoint by the policy's opaque route: refused when the
/// route forbids it, else a backend by weight and its endpoint.
async fn opaque_endpoint(
    compiled: &policy::Compiled,
    timeout: Duration,
) -> Result<Endpoint, ProxyError> {
    let policy = &compiled.policy;
    let refused = |reason: String, error| ProxyError::Refused {
        parent: policy.parent.to_string(),
        reason,
        error,
    };
    let route = policy
        .opaque
        .first()
        .ok_or_else(|| refused("no opaque route".into(), "invalid_policy"))?;
    if let Some(refusal) = &route.refusal {
        let error = match refusal {
            Refusal::Forbidden => "forbidden",
            Refusal::Invalid(_) => "invalid_policy",
        };
        return Err(refused(refusal.to_string(), error));
    }
    let backend = route
        .backends
        .choose(fastrand::u32(..), policy::BackendState::available)
        .ok_or_else(|| refused("the opaque route has no backends".into(), "invalid_backend"))?;
    policy_backend_endpoint(backend, timeout).await
}

/// The endpoint of one of a policy's backends: a forward backend's address,
/// or a balanced backend's pick once its endpoints are known (waiting at
/// most `timeout` for the first answer).
async fn policy_backend_endpoint(
    backend: &RouteBackend<policy::BackendState>,
    timeout: Duration,
) -> Result<Endpoint, ProxyError> {
    let path = match &backend.target {
        BackendTarget::Forward(addr) => {
            return Ok(Endpoint {
                addr: *addr,
                pick: None,
            });
        }
        BackendTarget::Balanced { path } => path,
    };
    let no_endpoints = || ProxyError::NoEndpoints {
        target: path.clone(),
    };
    // Compiled with a resolution for every balanced backend.
    let resolution = backend.state.resolution.as_ref().ok_or_else(no_endpoints)?;
    match resolution.answer(timeout).await.as_deref() {
        Some(Answer::Endpoints(_)) => {}
        Some(Answer::Unknown) => return Err(no_endpoints()),
        None => {
            return Err(ProxyError::DiscoveryTimeout {
                target: path.clone(),
                timeout,
            });
        }
    }
    let picked = pick(resolution, None)?;
    Ok(Endpoint {
        addr: picked.addr(),
        pick: Some(picked),
    })
}

/// The endpoint chosen for one request or connection.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The balancer's choice, to be told how the request went.
    pub pick: Option<Pick>,
}

/// The backend balancer's choice, avoiding `avoid` (a retry's failed endpoint).
pub fn pick(backend: &Resolution, avoid: Option<SocketAddr>) -> Result<Pick, ProxyError> {
    let picked = match avoid {
        Some(avoid) => backend.balancer.pick_avoiding(avoid),
        None => backend.balancer.pick(),
    };
    picked.map_err(|e| match e {
        NoEndpoint::Empty => ProxyError::NoEndpoints {
            target: backend.target.clone(),
        },
        NoEndpoint::AllEjected(count) => ProxyError::AllEjected {
            target: backend.target.clone(),
            count,
        },
    })
}

/// Whether `addr` may be dialled as addressed when the destination service
/// has not answered: not when it is in the mesh's networks, where it may be
/// a meshed endpoint that must be reached over mTLS.
fn may_guess(config: &Config, addr: SocketAddr) -> bool {
    !config
        .mesh_networks
        .iter()
        .any(|net| net.contains(addr.ip()))
}
