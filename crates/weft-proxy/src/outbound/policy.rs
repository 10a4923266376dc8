//! The outbound policy client: `OutboundPolicies/Watch` for each target the
//! application calls, compiled into [`Compiled`] once per update.
//!
//! A target's stream lives as long as its [`Resolution`]. Each backend of a
//! compiled policy holds the backend's own endpoint resolution (shared by
//! every policy and route that names the same Service and port), so a
//! policy update that keeps a backend keeps its balancer, its endpoints'
//! latency estimates and their failure records. The last good policy keeps
//! serving while the controller is away or sends something unusable;
//! `NotFound` (not a Service the controller knows) means requests are
//! routed as without a policy.

use std::sync::{Arc, OnceLock};

use linkerd2_proxy_api::outbound as api;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_policy::OutboundLimiter;
use weft_policy::outbound::{BackendTarget, ClientPolicy};
use weft_policy::wire;

use crate::discovery::{BACKOFF_MAX, BACKOFF_MIN, Discovery, Resolution};
use crate::http::retry::RetryBudget;
use crate::metrics::{PolicyBackendMetrics, PolicyRouteMetrics, TcpRouteMetrics};

/// A target's policy as the proxy follows it.
pub type ServicePolicy = ClientPolicy<RouteState, BackendState>;

/// The proxy's state beside each route of a policy.
#[derive(Debug, Default)]
pub struct RouteState {
    /// Resolved on first use: an HTTP route's, or an opaque route's.
    pub metrics: OnceLock<Arc<PolicyRouteMetrics>>,
    pub tcp: OnceLock<Arc<TcpRouteMetrics>>,
}

/// The proxy's state beside each backend of a route.
#[derive(Debug)]
pub struct BackendState {
    /// The backend's endpoints and balancer; `None` for a forward backend.
    pub resolution: Option<Arc<Resolution>>,
    pub metrics: OnceLock<Arc<PolicyBackendMetrics>>,
}

impl BackendState {
    /// Whether the backend can take a request now: a forward backend always,
    /// a balanced one while it has an endpoint that is not ejected.
    pub fn available(&self) -> bool {
        self.resolution
            .as_ref()
            .is_none_or(|r| r.balancer.has_available())
    }
}

/// One version of a target's policy, with what lasts across versions.
#[derive(Debug)]
pub struct Compiled {
    pub policy: ServicePolicy,
    /// The retry budget of the target's routes, kept across updates.
    pub budget: Arc<RetryBudget>,
    /// The target's outbound rate limit, kept across updates that keep its
    /// rate (so an update does not refill it).
    pub limiter: Option<Arc<OutboundLimiter>>,
}

impl Compiled {
    /// `policy`, with the budget and limiter of the `last` version.
    fn keeping(policy: ServicePolicy, last: Option<&Compiled>) -> Compiled {
        let budget = last.map_or_else(|| Arc::new(RetryBudget::default()), |l| l.budget.clone());
        let limiter = policy.rate_limit.map(|rps| {
            last.and_then(|l| l.limiter.clone())
                .filter(|l| l.requests_per_second == rps)
                .unwrap_or_else(|| Arc::new(OutboundLimiter::new(rps)))
        });
        Compiled {
            policy,
            budget,
            limiter,
        }
    }
}

/// What the controller says about a target.
#[derive(Debug)]
pub enum PolicyAnswer {
    /// Not a Service it knows (or a target it cannot serve): no policy.
    None,
    Policy(Arc<Compiled>),
}

/// The first wait before asking again about a target that is not a Service.
const NOT_FOUND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The outbound policy service and this workload's name there.
#[derive(Debug)]
pub struct OutboundClient {
    channel: Channel,
    addr: String,
    workload: String,
}

impl OutboundClient {
    pub fn new(channel: Channel, addr: String, workload: String) -> Self {
        OutboundClient {
            channel,
            addr,
            workload,
        }
    }

    async fn watch(
        &self,
        spec: api::TrafficSpec,
    ) -> Result<tonic::Streaming<wire::OutboundPolicy>, tonic::Status> {
        Ok(wire::watch(self.channel.clone(), spec).await?.into_inner())
    }
}

/// The `TrafficSpec` for a resolution's target: an address, or an authority.
fn traffic_spec(workload: &str, target: &str) -> api::TrafficSpec {
    use api::traffic_spec::Target;
    let target = match target.parse::<std::net::SocketAddr>() {
        Ok(addr) => Target::Addr(addr.into()),
        Err(_) => Target::Authority(target.to_string()),
    };
    api::TrafficSpec {
        source_workload: workload.to_string(),
        target: Some(target),
    }
}

/// Follows `Watch` for `target` until the resolution is dropped.
pub(crate) async fn follow(
    discovery: Arc<Discovery>,
    client: Arc<OutboundClient>,
    target: String,
    tx: watch::Sender<Option<Arc<PolicyAnswer>>>,
) {
    let metrics = discovery.metrics();
    let addr = &client.addr;
    let mut backoff = BACKOFF_MIN;
    loop {
        metrics.control_request(addr);
        let spec = traffic_spec(&client.workload, &target);
        let ended = match client.watch(spec).await {
            Err(status) => status,
            Ok(mut stream) => {
                let _active = metrics.control_stream_active(addr);
                loop {
                    match stream.message().await {
                        Ok(Some(policy)) => {
                            metrics.control_update(addr);
                            backoff = BACKOFF_MIN;
                            let last = match tx.borrow().as_deref() {
                                Some(PolicyAnswer::Policy(p)) => Some(p.clone()),
                                _ => None,
                            };
                            match compile(&discovery, policy) {
                                Ok(policy) => {
                                    debug!(%target, parent = %policy.parent, rate_limit = ?policy.rate_limit, "outbound policy");
                                    let compiled = Compiled::keeping(policy, last.as_deref());
                                    tx.send_replace(Some(Arc::new(PolicyAnswer::Policy(
                                        Arc::new(compiled),
                                    ))));
                                }
                                Err(reason) => {
                                    warn!(%target, %reason, "the policy controller sent an outbound policy that cannot be used; keeping the last one")
                                }
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("stream ended"),
                        Err(status) => break status,
                    }
                }
            }
        };
        metrics.control_failure(addr);
        let reason = weft_identity::control::status_reason(&ended);
        match ended.code() {
            tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                // Routed as without a policy; asked again in case it becomes
                // one (a Service created after its clients first called it):
                // after a second, then less and less often, up to the maximum.
                debug!(%target, error = reason, "no outbound policy for this target");
                tx.send_replace(Some(Arc::new(PolicyAnswer::None)));
                backoff = backoff.max(NOT_FOUND_RETRY);
            }
            _ if tx.borrow().is_some() => info!(
                %target,
                error = reason,
                ?backoff,
                "outbound policy stream lost; the last policy keeps serving"
            ),
            _ => {
                warn!(%target, error = reason, ?backoff, "no outbound policy from the policy controller yet")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Compiles one answer: each balanced backend subscribes to its endpoints
/// (the same resolution as before when it was already a backend) and takes
/// the policy's circuit breaker, or its route's.
fn compile(
    discovery: &Arc<Discovery>,
    policy: wire::OutboundPolicy,
) -> Result<ServicePolicy, String> {
    let compiled = ServicePolicy::from_wire(policy, |target| BackendState {
        resolution: match target {
            BackendTarget::Balanced { path } => Some(discovery.subscribe_endpoints(path)),
            BackendTarget::Forward(_) => None,
        },
        metrics: OnceLock::new(),
    })?;
    for backend in compiled.backends() {
        if let Some(r) = &backend.state.resolution {
            r.balancer.set_accrual(compiled.accrual);
        }
    }
    // A route's own circuit breaker (Weft's, beyond Linkerd) is its
    // backends'. A backend is one balancer however many routes name it, so
    // the breaker then holds for all of its traffic.
    let routes = compiled.http1.iter().chain(&compiled.http2);
    for route in routes.filter(|r| r.accrual.is_some()) {
        for (backend, _) in route.rules.iter().flat_map(|rule| &rule.backends.backends) {
            if let Some(r) = &backend.state.resolution {
                r.balancer.set_accrual(route.accrual);
            }
        }
    }
    Ok(compiled)
}
