//! Outbound policy route metrics, with linkerd2-proxy's names and labels
//! (`outbound_grpc_route_*` with `grpc_status` for gRPC routes, the same
//! families otherwise): `outbound_http_route_request_duration_seconds`,
//! `outbound_http_route_request_statuses_total` and the `retry_*` counters per
//! (parent, route); `outbound_http_route_backend_requests_total` and
//! `outbound_http_route_backend_response_statuses_total` per (parent, route,
//! backend). Label values come from the policy controller's metadata, never
//! from a client, and every family is bounded.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use weft_policy::outbound::Meta;

use super::family::{Family, Registrar, Series};
use super::{HistogramFamily, Metrics};
use crate::http::body::grpc_status;
use crate::http::error::ProxyError;

/// Seconds, as linkerd2-proxy's route histograms.
const SECONDS_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    parent_group: String,
    parent_kind: String,
    parent_namespace: String,
    parent_name: String,
    parent_port: String,
    parent_section_name: String,
    route_group: String,
    route_kind: String,
    route_namespace: String,
    route_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    backend_group: String,
    backend_kind: String,
    backend_namespace: String,
    backend_name: String,
    backend_port: String,
    backend_section_name: String,
}

/// A route's or backend's labels with the outcome: `http_status` (HTTP
/// routes) or `grpc_status` (gRPC routes), and `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct StatusLabels<L> {
    inner: L,
    status_label: &'static str,
    status: String,
    error: &'static str,
}

impl<L: EncodeLabelSet> EncodeLabelSet for StatusLabels<L> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.inner.encode(encoder)?;
        (self.status_label, self.status.as_str()).encode(encoder.encode_label())?;
        ("error", self.error).encode(encoder.encode_label())
    }
}

#[derive(Debug)]
pub(super) struct PolicyRouteFamilies {
    request_duration: HistogramFamily<RouteLabels>,
    request_statuses: Family<StatusLabels<RouteLabels>, Counter>,
    retry_requests: Family<RouteLabels, Counter>,
    retry_successes: Family<RouteLabels, Counter>,
    retry_limit_exceeded: Family<RouteLabels, Counter>,
    retry_overflow: Family<RouteLabels, Counter>,
    backend_requests: Family<BackendLabels, Counter>,
    backend_response_duration: HistogramFamily<BackendLabels>,
    backend_response_statuses: Family<StatusLabels<BackendLabels>, Counter>,
    /// `http_status` or `grpc_status`.
    status_label: &'static str,
}

impl PolicyRouteFamilies {
    /// The families of `protocol` routes: `http` or `grpc`, as
    /// linkerd2-proxy names them (`outbound_{protocol}_route_*`).
    pub(super) fn register(r: &mut Registrar, protocol: &str) -> Self {
        let name = |what: &str| format!("outbound_{protocol}_route_{what}");
        PolicyRouteFamilies {
            request_duration: r.family(
                &name("request_duration_seconds"),
                "Time from a request's start to the end of its response, retries included, per policy route",
                seconds_histogram,
            ),
            request_statuses: r.counter(
                &name("request_statuses"),
                "Completed requests per policy route, by status or error, as the client saw them",
            ),
            retry_requests: r.counter(&name("retry_requests"), "Retries sent per policy route"),
            retry_successes: r.counter(
                &name("retry_successes"),
                "Requests per policy route that succeeded after a retry",
            ),
            retry_limit_exceeded: r.counter(
                &name("retry_limit_exceeded"),
                "Requests per policy route that failed retryably with no retries left",
            ),
            retry_overflow: r.counter(
                &name("retry_overflow"),
                "Retries per policy route not sent: the budget was spent or the body too large",
            ),
            backend_requests: r.counter(
                &name("backend_requests"),
                "Requests dispatched to a policy route's backend, each attempt counted",
            ),
            backend_response_duration: r.family(
                &name("backend_response_duration_seconds"),
                "Time from an attempt's dispatch to the end of its response (a retried attempt: to its headers), per route backend",
                seconds_histogram,
            ),
            backend_response_statuses: r.counter(
                &name("backend_response_statuses"),
                "Attempts per route backend, by response status or error",
            ),
            status_label: if protocol == "grpc" {
                "grpc_status"
            } else {
                "http_status"
            },
        }
    }
}

/// How a request or attempt ended, as its status labels say.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// The HTTP status (HTTP routes) or `grpc-status` (gRPC routes).
    Status(u32),
    /// A gRPC response that ended without a `grpc-status`.
    NoStatus,
    Error(&'static str),
}

impl Outcome {
    /// How a request the proxy failed ended: a policy's own answer (a
    /// failure filter: the missing backend's 500, denied egress's 403; the
    /// outbound rate limit's 429) is its status, as Linkerd counts a
    /// failure filter's; anything else an error.
    pub fn failed(e: &ProxyError, grpc: bool) -> Self {
        match e {
            ProxyError::Injected { .. } | ProxyError::OutboundRateLimited { .. } if grpc => {
                Outcome::Status(e.grpc_status())
            }
            ProxyError::Injected { .. } | ProxyError::OutboundRateLimited { .. } => {
                Outcome::Status(u32::from(e.status().as_u16()))
            }
            _ => Outcome::Error(error_label(e)),
        }
    }

    /// A gRPC answer's status. The server chooses it, so a code gRPC does
    /// not define (above 16) is UNKNOWN (2): the label stays bounded.
    pub fn grpc(code: Option<u32>) -> Self {
        const GRPC_UNKNOWN: u32 = 2;
        const GRPC_MAX_CODE: u32 = 16;
        code.map_or(Outcome::NoStatus, |c| {
            Outcome::Status(if c > GRPC_MAX_CODE { GRPC_UNKNOWN } else { c })
        })
    }

    fn labels(self) -> (String, &'static str) {
        match self {
            Outcome::Status(code) => (code.to_string(), ""),
            Outcome::NoStatus => (String::new(), ""),
            Outcome::Error(e) => (String::new(), e),
        }
    }
}

/// A route's labels with how a connection closed (`error`: empty, or
/// `forbidden`, `invalid_policy`, `invalid_backend`, `unexpected`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpCloseLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    error: &'static str,
}

/// linkerd2-proxy's opaque route families: connections opened and closed
/// per (parent, route).
#[derive(Debug)]
pub(super) struct TcpRouteFamilies {
    open: Family<RouteLabels, Counter>,
    close: Family<TcpCloseLabels, Counter>,
}

impl TcpRouteFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        TcpRouteFamilies {
            open: r.counter(
                "outbound_tcp_route_open",
                "Opaque connections opened per policy route",
            ),
            close: r.counter(
                "outbound_tcp_route_close",
                "Opaque connections closed per policy route, by error (refused: forbidden, invalid_policy, invalid_backend)",
            ),
        }
    }
}

/// Handles for one opaque policy route.
#[derive(Debug)]
pub struct TcpRouteMetrics {
    labels: RouteLabels,
    open: Series<Counter>,
    metrics: Arc<Metrics>,
}

impl TcpRouteMetrics {
    pub fn opened(&self) {
        self.open.inc();
    }

    /// `error` empty for a connection that ran its course.
    pub fn closed(&self, error: &'static str) {
        self.metrics
            .tcp_route
            .close
            .get_or_create(&TcpCloseLabels {
                route: self.labels.clone(),
                error,
            })
            .inc();
    }
}

/// linkerd2-proxy's `error` label of a failed request.
pub fn error_label(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::RequestTimeout { .. } => "REQUEST_TIMEOUT",
        ProxyError::ResponseTimeout { .. } => "RESPONSE_HEADERS_TIMEOUT",
        ProxyError::NoEndpoints { .. }
        | ProxyError::AllEjected { .. }
        | ProxyError::DiscoveryTimeout { .. } => "FAIL_FAST",
        _ => "UNEXPECTED",
    }
}

/// Status counters resolved on first use of each (status, error).
#[derive(Debug)]
struct Statuses<L> {
    labels: L,
    status_label: &'static str,
    seen: Mutex<Vec<(String, &'static str, Series<Counter>)>>,
}

impl<L> Statuses<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + std::fmt::Debug + 'static,
{
    fn new(labels: L, status_label: &'static str) -> Self {
        Statuses {
            labels,
            status_label,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn inc(&self, family: &Family<StatusLabels<L>, Counter>, outcome: Outcome) {
        let (status, error) = outcome.labels();
        let mut seen = self.seen.lock();
        if let Some((_, _, c)) = seen.iter().find(|(s, e, _)| *s == status && *e == error) {
            c.inc();
            return;
        }
        let c = family.get_or_create(&StatusLabels {
            inner: self.labels.clone(),
            status_label: self.status_label,
            status: status.clone(),
            error,
        });
        c.inc();
        seen.push((status, error, c));
    }
}

/// Handles for one policy route, resolved once per route and policy version.
#[derive(Debug)]
pub struct PolicyRouteMetrics {
    labels: RouteLabels,
    /// Whether it is a gRPC route (the `outbound_grpc_route_*` families).
    pub grpc: bool,
    duration: Series<Histogram>,
    statuses: Statuses<RouteLabels>,
    pub retry_requests: Series<Counter>,
    pub retry_successes: Series<Counter>,
    pub retry_limit_exceeded: Series<Counter>,
    pub retry_overflow: Series<Counter>,
    metrics: Arc<Metrics>,
}

/// Handles for one backend of a policy route.
#[derive(Debug)]
pub struct PolicyBackendMetrics {
    grpc: bool,
    pub requests: Series<Counter>,
    duration: Series<Histogram>,
    statuses: Statuses<BackendLabels>,
    metrics: Arc<Metrics>,
}

fn route_labels(parent: &Meta, route: &Meta) -> RouteLabels {
    RouteLabels {
        parent_group: parent.group.clone(),
        parent_kind: parent.kind.clone(),
        parent_namespace: parent.namespace.clone(),
        parent_name: parent.name.clone(),
        parent_port: parent.port.clone(),
        parent_section_name: parent.section.clone(),
        route_group: route.group.clone(),
        route_kind: route.kind.clone(),
        route_namespace: route.namespace.clone(),
        route_name: route.name.clone(),
    }
}

impl Metrics {
    fn route_families(&self, grpc: bool) -> &PolicyRouteFamilies {
        if grpc {
            &self.policy_grpc_route
        } else {
            &self.policy_route
        }
    }

    /// The metrics of opaque route `route` of parent `parent`.
    pub fn tcp_route(self: &Arc<Self>, parent: &Meta, route: &Meta) -> TcpRouteMetrics {
        let labels = route_labels(parent, route);
        TcpRouteMetrics {
            open: self.tcp_route.open.get_or_create(&labels),
            labels,
            metrics: self.clone(),
        }
    }

    /// The metrics of route `route` of parent `parent`; `grpc` for a
    /// GRPCRoute (or any route of a gRPC policy).
    pub fn policy_route(
        self: &Arc<Self>,
        parent: &Meta,
        route: &Meta,
        grpc: bool,
    ) -> PolicyRouteMetrics {
        let labels = route_labels(parent, route);
        let f = self.route_families(grpc);
        PolicyRouteMetrics {
            grpc,
            duration: f.request_duration.get_or_create(&labels),
            statuses: Statuses::new(labels.clone(), f.status_label),
            retry_requests: f.retry_requests.get_or_create(&labels),
            retry_successes: f.retry_successes.get_or_create(&labels),
            retry_limit_exceeded: f.retry_limit_exceeded.get_or_create(&labels),
            retry_overflow: f.retry_overflow.get_or_create(&labels),
            labels,
            metrics: self.clone(),
        }
    }
}

impl PolicyRouteMetrics {
    /// How the request ended for the client, `seconds` after it started.
    pub fn response(&self, outcome: Outcome, seconds: f64) {
        self.duration.observe(seconds);
        self.statuses.inc(
            &self.metrics.route_families(self.grpc).request_statuses,
            outcome,
        );
    }

    /// The metrics of one of the route's backends.
    pub fn backend(&self, backend: &Meta) -> PolicyBackendMetrics {
        let labels = BackendLabels {
            route: self.labels.clone(),
            backend_group: backend.group.clone(),
            backend_kind: backend.kind.clone(),
            backend_namespace: backend.namespace.clone(),
            backend_name: backend.name.clone(),
            backend_port: backend.port.clone(),
            backend_section_name: backend.section.clone(),
        };
        let f = self.metrics.route_families(self.grpc);
        PolicyBackendMetrics {
            grpc: self.grpc,
            requests: f.backend_requests.get_or_create(&labels),
            duration: f.backend_response_duration.get_or_create(&labels),
            statuses: Statuses::new(labels, f.status_label),
            metrics: self.metrics.clone(),
        }
    }
}

impl PolicyBackendMetrics {
    /// How one attempt ended, `seconds` after it was dispatched.
    pub fn response(&self, outcome: Outcome, seconds: f64) {
        self.duration.observe(seconds);
        self.statuses.inc(
            &self
                .metrics
                .route_families(self.grpc)
                .backend_response_statuses,
            outcome,
        );
    }
}

/// A routed request whose response is still streaming: its route and final
/// attempt are counted when the body ends, because only then is a gRPC
/// call's status known (its trailers) and the response complete.
#[derive(Debug)]
pub struct RouteEnd {
    pub route: Arc<PolicyRouteMetrics>,
    pub backend: Arc<PolicyBackendMetrics>,
    pub request_started: Instant,
    pub attempt_started: Instant,
    pub http_status: u16,
    /// A `grpc-status` in the response headers (a trailers-only answer).
    pub header_grpc_status: Option<u32>,
}

impl RouteEnd {
    pub fn finish(self, trailers: Option<&http::HeaderMap>, clean: bool) {
        let outcome = if !clean {
            Outcome::Error("UNEXPECTED")
        } else if self.route.grpc {
            Outcome::grpc(trailers.and_then(grpc_status).or(self.header_grpc_status))
        } else {
            Outcome::Status(u32::from(self.http_status))
        };
        self.backend
            .response(outcome, self.attempt_started.elapsed().as_secs_f64());
        self.route
            .response(outcome, self.request_started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_grpc_status_is_a_bounded_label() {
        let label = |code| Outcome::grpc(code).labels().0;
        assert_eq!(label(Some(0)), "0");
        assert_eq!(label(Some(16)), "16");
        // A hostile server's made-up codes all fold into UNKNOWN.
        assert_eq!(label(Some(17)), "2");
        assert_eq!(label(Some(u32::MAX)), "2");
        assert_eq!(label(None), "");
    }
}
