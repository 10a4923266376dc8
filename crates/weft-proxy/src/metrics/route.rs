//! Profile route metrics: `route_request_total`, `route_response_total`,
//! `route_response_latency_ms`, the `route_actual_*` pair that counts
//! retries too, and `route_retryable_total` (with `skipped="no_budget"` for
//! the retries the budget refused). Responses are counted by
//! [class](super::classify) when their stream ends.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::classify::{ByClass, Classified};
use super::family::{Family, Registrar, Series};
use super::{Direction, HistogramFamily, Metrics, latency_histogram};

/// A profile route: the service it belongs to and the route's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    direction: Direction,
    dst: String,
    rt_route: String,
}

/// `route_retryable_total`'s labels: a route's, and `skipped="no_budget"`
/// on the series of retries the budget refused (absent on the other).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RetryableLabels {
    route: RouteLabels,
    no_budget: bool,
}

impl EncodeLabelSet for RetryableLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        self.route.encode(encoder)?;
        if self.no_budget {
            ("skipped", "no_budget").encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLatencyLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    status_code: u16,
}

/// The route families.
#[derive(Debug)]
pub(super) struct RouteFamilies {
    request_total: Family<RouteLabels, Counter>,
    response_total: Family<Classified<RouteLatencyLabels>, Counter>,
    response_latency_ms: HistogramFamily<RouteLatencyLabels>,
    actual_request_total: Family<RouteLabels, Counter>,
    actual_response_total: Family<Classified<RouteLatencyLabels>, Counter>,
    retryable_total: Family<RetryableLabels, Counter>,
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
            retryable_total: r.counter(
                "route_retryable",
                "Failed profile-route requests that could be retried",
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
            retryable: OnceLock::new(),
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
    statuses: Mutex<Vec<(u16, RouteStatus)>>,
    retryable: OnceLock<(Series<Counter>, Series<Counter>)>,
    labels: RouteLabels,
    metrics: Arc<Metrics>,
}

/// One status code's handles; responses are counted by class at the end.
#[derive(Clone, Debug)]
pub struct RouteStatus {
    pub latency_ms: Series<Histogram>,
    pub response: Arc<ByClass<RouteLatencyLabels>>,
    pub actual_response: Arc<ByClass<RouteLatencyLabels>>,
}

impl RouteMetrics {
    pub fn status(&self, code: u16) -> RouteStatus {
        let mut statuses = self.statuses.lock();
        if let Some((_, s)) = statuses.iter().find(|(c, _)| *c == code) {
            return s.clone();
        }
        let labels = RouteLatencyLabels {
            route: self.labels.clone(),
            status_code: code,
        };
        let families = &self.metrics.route;
        let s = RouteStatus {
            latency_ms: families.response_latency_ms.get_or_create(&labels),
            response: Arc::new(ByClass::new(&families.response_total, labels.clone())),
            actual_response: Arc::new(ByClass::new(&families.actual_response_total, labels)),
        };
        statuses.push((code, s.clone()));
        s
    }

    /// Counts a failed attempt that could be retried, and whether the retry
    /// budget refused it.
    pub fn retryable(&self, has_budget: bool) {
        let (retryable, no_budget) = self.retryable.get_or_init(|| {
            let family = &self.metrics.route.retryable_total;
            let labels = |no_budget| RetryableLabels {
                route: self.labels.clone(),
                no_budget,
            };
            (
                family.get_or_create(&labels(false)),
                family.get_or_create(&labels(true)),
            )
        });
        retryable.inc();
        if !has_budget {
            no_budget.inc();
        }
    }
}
