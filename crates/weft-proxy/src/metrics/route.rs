//! Profile route metrics: `route_request_total`, `route_response_total`,
//! `route_response_latency_ms`, and the `route_actual_*` pair that counts
//! retries too.

use std::sync::Arc;

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::family::{Family, Registrar, Series};
use super::{Direction, HistogramFamily, Metrics, latency_histogram};

/// A profile route: the service it belongs to and the route's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    direction: Direction,
    dst: String,
    rt_route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResponseLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    status_code: u16,
    classification: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLatencyLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    status_code: u16,
}

/// The route families.
#[derive(Debug)]
pub(super) struct RouteFamilies {
    request_total: Family<RouteLabels, Counter>,
    response_total: Family<RouteResponseLabels, Counter>,
    response_latency_ms: HistogramFamily<RouteLatencyLabels>,
    actual_request_total: Family<RouteLabels, Counter>,
    actual_response_total: Family<RouteResponseLabels, Counter>,
}

impl RouteFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        RouteFamilies {
            request_total: r.counter(
                "route_request",
                "Requests matching a profile route (each counted once, however often retried)",
            ),
            response_total: r.counter(
                "route_response",
                "Responses to requests matching a profile route, as the client saw them",
            ),
            response_latency_ms: r.family(
                "route_response_latency_ms",
                "Time to response headers for a profile route, retries included",
                latency_histogram,
            ),
            actual_request_total: r.counter(
                "route_actual_request",
                "Requests sent for a profile route, retries included",
            ),
            actual_response_total: r.counter(
                "route_actual_response",
                "Responses received for a profile route, retries included",
            ),
        }
    }
}

impl Metrics {
    /// The metrics of one profile route of service `dst`.
    pub fn route(self: &Arc<Self>, direction: Direction, dst: &str, route: &str) -> RouteMetrics {
        let labels = RouteLabels {
            direction,
            dst: dst.into(),
            rt_route: route.into(),
        };
        RouteMetrics {
            request_total: self.route.request_total.get_or_create(&labels),
            actual_request_total: self.route.actual_request_total.get_or_create(&labels),
            statuses: Mutex::new(Vec::new()),
            labels,
            metrics: self.clone(),
        }
    }
}

/// Handles for one route, resolved once per route and profile version.
#[derive(Debug)]
pub struct RouteMetrics {
    pub request_total: Series<Counter>,
    pub actual_request_total: Series<Counter>,
    statuses: Mutex<Vec<(u16, bool, RouteStatus)>>,
    labels: RouteLabels,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Debug)]
pub struct RouteStatus {
    pub latency_ms: Series<Histogram>,
    pub response: Series<Counter>,
    pub actual_response: Series<Counter>,
}

impl RouteMetrics {
    pub fn status(&self, code: u16, failure: bool) -> RouteStatus {
        let mut statuses = self.statuses.lock();
        if let Some((_, _, s)) = statuses
            .iter()
            .find(|(c, f, _)| *c == code && *f == failure)
        {
            return s.clone();
        }
        let response = RouteResponseLabels {
            route: self.labels.clone(),
            status_code: code,
            classification: if failure { "failure" } else { "success" },
        };
        let s =
            RouteStatus {
                latency_ms: self.metrics.route.response_latency_ms.get_or_create(
                    &RouteLatencyLabels {
                        route: self.labels.clone(),
                        status_code: code,
                    },
                ),
                response: self.metrics.route.response_total.get_or_create(&response),
                actual_response: self
                    .metrics
                    .route
                    .actual_response_total
                    .get_or_create(&response),
            };
        statuses.push((code, failure, s.clone()));
        s
    }
}
