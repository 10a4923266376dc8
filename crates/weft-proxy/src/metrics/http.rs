//! HTTP metrics: `request_total`, `response_total` (by status and
//! [class](super::classify)), `response_latency_ms`. [`HttpConnMetrics`] keeps a
//! connection's last few label sets, so the request path only bumps atomics.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::classify::{ByClass, Class, Classified};
use super::family::{Family, Registrar, Series};
use super::labels::{Maybe, ServerLabel, TargetAddr};
use super::{Direction, DstLabels, HistogramFamily, Metrics, Tls, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    #[prometheus(flatten)]
    authority: AuthorityLabel,
    #[prometheus(flatten)]
    target: TargetAddr,
    #[prometheus(flatten)]
    tls: Tls,
    #[prometheus(flatten)]
    server: Maybe<ServerLabel>,
    #[prometheus(flatten)]
    dst: DstLabels,
}

/// The `authority` label, or none: inbound, the authority is the client's
/// choice, and is left out unless `WEFT_PROXY_INBOUND_METRICS_AUTHORITY_LABELS=unsafe`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct AuthorityLabel(Option<String>);

impl EncodeLabelSet for AuthorityLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        match &self.0 {
            Some(authority) => ("authority", authority.as_str()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: u16,
}

/// The HTTP families.
#[derive(Debug)]
pub(super) struct HttpFamilies {
    request_total: Family<RequestLabels, Counter>,
    response_total: Family<Classified<LatencyLabels>, Counter>,
    response_latency_ms: HistogramFamily<LatencyLabels>,
}

impl HttpFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        HttpFamilies {
            request_total: r.counter("request", "Total HTTP requests"),
            response_total: r.counter("response", "Total HTTP responses"),
            response_latency_ms: r.family(
                "response_latency_ms",
                "Time from request to response headers in milliseconds",
                latency_histogram,
            ),
        }
    }
}

/// HTTP metrics of one connection: the label set is fixed except for the
/// authority and the target (explicit proxy, or an endpoint chosen by the
/// balancer), which take few values on one connection: the last few label
/// sets are kept.
#[derive(Debug)]
pub struct HttpConnMetrics {
    metrics: Arc<Metrics>,
    direction: Direction,
    tls: Tls,
    server: Option<ServerLabel>,
    recent: Mutex<Vec<Arc<AuthorityMetrics>>>,
}

/// Label sets kept per connection (e.g. one per balanced endpoint).
const RECENT_LABEL_SETS: usize = 8;

impl HttpConnMetrics {
    pub fn new(metrics: Arc<Metrics>, direction: Direction, tls: Tls) -> Self {
        HttpConnMetrics {
            metrics,
            direction,
            tls,
            server: None,
            recent: Mutex::new(Vec::new()),
        }
    }

    /// An inbound connection's metrics carry the `Server` it reached.
    pub fn with_server(mut self, server: ServerLabel) -> Self {
        self.server = Some(server);
        self
    }

    /// Metrics for a request to `target_addr`; `endpoint` tells, for a new
    /// label set, the identity the endpoint proves over mesh TLS if it is
    /// meshed (outbound), and its discovery labels.
    pub fn for_request(
        &self,
        authority: &str,
        target_addr: SocketAddr,
        endpoint: impl FnOnce() -> (Option<weft_identity::Identity>, DstLabels),
    ) -> Arc<AuthorityMetrics> {
        let authority = (self.direction == Direction::Outbound || self.metrics.inbound_authority)
            .then_some(authority);
        let mut recent = self.recent.lock();
        if let Some(m) = recent
            .iter()
            .find(|m| m.target == target_addr && m.labels.authority.0.as_deref() == authority)
        {
            return m.clone();
        }
        let (server_id, dst) = endpoint();
        let labels = RequestLabels {
            direction: self.direction,
            authority: AuthorityLabel(authority.map(str::to_string)),
            target: TargetAddr(target_addr),
            tls: match server_id {
                Some(id) => Tls::ToServer(id.as_str().into()),
                None => self.tls.clone(),
            },
            server: Maybe(self.server.clone()),
            dst,
        };
        let m = Arc::new(AuthorityMetrics {
            target: target_addr,
            request_total: self.metrics.http.request_total.get_or_create(&labels),
            statuses: Mutex::new(Vec::new()),
            labels,
            metrics: self.metrics.clone(),
        });
        if recent.len() == RECENT_LABEL_SETS {
            recent.remove(0);
        }
        recent.push(m.clone());
        m
    }
}

/// Request and response metrics for one (connection, authority).
#[derive(Debug)]
pub struct AuthorityMetrics {
    target: SocketAddr,
    pub request_total: Series<Counter>,
    statuses: Mutex<Vec<StatusMetrics>>,
    labels: RequestLabels,
    metrics: Arc<Metrics>,
}

/// Handles for one status code: latency, and the response counters by
/// class (known only at the end of the stream for gRPC).
#[derive(Clone, Debug)]
pub struct StatusMetrics {
    code: u16,
    pub latency_ms: Series<Histogram>,
    responses: Arc<ByClass<LatencyLabels>>,
}

impl StatusMetrics {
    pub fn count(&self, class: Class) {
        self.responses.count(class);
    }
}

impl AuthorityMetrics {
    pub fn status(&self, code: u16) -> StatusMetrics {
        let mut statuses = self.statuses.lock();
        if let Some(s) = statuses.iter().find(|s| s.code == code) {
            return s.clone();
        }
        let latency = LatencyLabels {
            request: self.labels.clone(),
            status_code: code,
        };
        let s = StatusMetrics {
            code,
            latency_ms: self
                .metrics
                .http
                .response_latency_ms
                .get_or_create(&latency),
            responses: Arc::new(ByClass::new(&self.metrics.http.response_total, latency)),
        };
        statuses.push(s.clone());
        s
    }
}
