//! Outbound policy route metrics, with linkerd2-proxy's names and labels:
//! `outbound_http_route_request_duration_seconds`,
//! `outbound_http_route_request_statuses_total` and the `retry_*` counters per
//! (parent, route); `outbound_http_route_backend_requests_total` and
//! `outbound_http_route_backend_response_statuses_total` per (parent, route,
//! backend). Label values come from the policy controller's metadata, never
//! from a client, and every family is bounded.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use weft_policy::outbound::Meta;

use super::family::{Family, Registrar, Series};
use super::{HistogramFamily, Metrics};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    http_status: String,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStatusLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    http_status: String,
    error: &'static str,
}

/// A label set that a status counter extends with `http_status` and `error`.
trait WithStatus: Clone {
    type Labels: Clone
        + std::hash::Hash
        + Eq
        + EncodeLabelSet
        + Send
        + Sync
        + std::fmt::Debug
        + 'static;
    fn with_status(&self, http_status: String, error: &'static str) -> Self::Labels;
}

impl WithStatus for RouteLabels {
    type Labels = RouteStatusLabels;
    fn with_status(&self, http_status: String, error: &'static str) -> RouteStatusLabels {
        RouteStatusLabels {
            route: self.clone(),
            http_status,
            error,
        }
    }
}

impl WithStatus for BackendLabels {
    type Labels = BackendStatusLabels;
    fn with_status(&self, http_status: String, error: &'static str) -> BackendStatusLabels {
        BackendStatusLabels {
            backend: self.clone(),
            http_status,
            error,
        }
    }
}

#[derive(Debug)]
pub(super) struct PolicyRouteFamilies {
    request_duration: HistogramFamily<RouteLabels>,
    request_statuses: Family<RouteStatusLabels, Counter>,
    retry_requests: Family<RouteLabels, Counter>,
    retry_successes: Family<RouteLabels, Counter>,
    retry_limit_exceeded: Family<RouteLabels, Counter>,
    retry_overflow: Family<RouteLabels, Counter>,
    backend_requests: Family<BackendLabels, Counter>,
    backend_response_duration: HistogramFamily<BackendLabels>,
    backend_response_statuses: Family<BackendStatusLabels, Counter>,
}

impl PolicyRouteFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        PolicyRouteFamilies {
            request_duration: r.family(
                "outbound_http_route_request_duration_seconds",
                "Time from a request's start to its response headers, retries included, per policy route",
                seconds_histogram,
            ),
            request_statuses: r.counter(
                "outbound_http_route_request_statuses",
                "Completed requests per policy route, by status or error, as the client saw them",
            ),
            retry_requests: r.counter(
                "outbound_http_route_retry_requests",
                "Retries sent per policy route",
            ),
            retry_successes: r.counter(
                "outbound_http_route_retry_successes",
                "Requests per policy route that succeeded after a retry",
            ),
            retry_limit_exceeded: r.counter(
                "outbound_http_route_retry_limit_exceeded",
                "Requests per policy route that failed retryably with no retries left",
            ),
            retry_overflow: r.counter(
                "outbound_http_route_retry_overflow",
                "Retries per policy route not sent: the budget was spent or the body too large",
            ),
            backend_requests: r.counter(
                "outbound_http_route_backend_requests",
                "Requests dispatched to a policy route's backend, each attempt counted",
            ),
            backend_response_duration: r.family(
                "outbound_http_route_backend_response_duration_seconds",
                "Time from an attempt's dispatch to its response headers, per route backend",
                seconds_histogram,
            ),
            backend_response_statuses: r.counter(
                "outbound_http_route_backend_response_statuses",
                "Attempts per route backend, by response status or error",
            ),
        }
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

/// A response's `http_status` and `error` labels.
fn status_of(result: Result<u16, &ProxyError>) -> (String, &'static str) {
    match result {
        Ok(code) => (code.to_string(), ""),
        Err(e) => (String::new(), error_label(e)),
    }
}

/// Status counters resolved on first use of each (status, error).
#[derive(Debug)]
struct Statuses<L> {
    labels: L,
    seen: Mutex<Vec<(String, &'static str, Series<Counter>)>>,
}

impl<L: WithStatus> Statuses<L> {
    fn new(labels: L) -> Self {
        Statuses {
            labels,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn inc(&self, family: &Family<L::Labels, Counter>, result: Result<u16, &ProxyError>) {
        let (http_status, error) = status_of(result);
        let mut seen = self.seen.lock();
        if let Some((_, _, c)) = seen
            .iter()
            .find(|(s, e, _)| *s == http_status && *e == error)
        {
            c.inc();
            return;
        }
        let c = family.get_or_create(&self.labels.with_status(http_status.clone(), error));
        c.inc();
        seen.push((http_status, error, c));
    }
}

/// Handles for one policy route, resolved once per route and policy version.
#[derive(Debug)]
pub struct PolicyRouteMetrics {
    labels: RouteLabels,
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
    pub requests: Series<Counter>,
    duration: Series<Histogram>,
    statuses: Statuses<BackendLabels>,
    metrics: Arc<Metrics>,
}

impl Metrics {
    /// The metrics of route `route` of parent `parent`.
    pub fn policy_route(self: &Arc<Self>, parent: &Meta, route: &Meta) -> PolicyRouteMetrics {
        let labels = RouteLabels {
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
        };
        let f = &self.policy_route;
        PolicyRouteMetrics {
            duration: f.request_duration.get_or_create(&labels),
            statuses: Statuses::new(labels.clone()),
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
    pub fn response(&self, result: Result<u16, &ProxyError>, seconds: f64) {
        self.duration.observe(seconds);
        self.statuses
            .inc(&self.metrics.policy_route.request_statuses, result);
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
        let f = &self.metrics.policy_route;
        PolicyBackendMetrics {
            requests: f.backend_requests.get_or_create(&labels),
            duration: f.backend_response_duration.get_or_create(&labels),
            statuses: Statuses::new(labels),
            metrics: self.metrics.clone(),
        }
    }
}

impl PolicyBackendMetrics {
    /// How one attempt ended, `seconds` after it was dispatched.
    pub fn response(&self, result: Result<u16, &ProxyError>, seconds: f64) {
        self.duration.observe(seconds);
        self.statuses
            .inc(&self.metrics.policy_route.backend_response_statuses, result);
    }
}
