//! Metrics with Linkerd's names and labels, exposed in Prometheus text format.
//!
//! Label sets are resolved once per connection ([`TcpConn`]) and once per
//! authority on a connection ([`AuthorityMetrics`]); the request path then only
//! clones handles and bumps atomics. Families hash label sets only on those
//! first look-ups. Every family is bounded ([`family`]): a cap on label sets
//! with an overflow series, and idle series dropped. Inbound HTTP metrics carry
//! no client-chosen authority unless asked for.

pub mod family;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::family::SeriesLimits;
use self::family::{Family, Series};

/// Linkerd's latency buckets (milliseconds), so its dashboards' quantiles line up.
const LATENCY_MS_BUCKETS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];
const DURATION_MS_BUCKETS: [f64; 7] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Which side of the proxy a TCP connection is on: `src` was accepted from a
/// client, `dst` was opened to a server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    Src,
    Dst,
}

impl EncodeLabelValue for Peer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        let s = match self {
            Peer::Src => "src",
            Peer::Dst => "dst",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

/// The TLS state of a connection, as Linkerd labels it: `tls`, and
/// `no_tls_reason`, `client_id` or `server_id` where they apply (absent ones
/// are left out, not written empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    /// The peer did not offer mesh TLS (inbound plaintext).
    NotProvidedByRemote,
    /// Discovery gave no identity for the endpoint (outbound plaintext).
    NotProvidedByServiceDiscovery,
    /// Inbound mesh TLS, with the client's verified identity.
    FromClient(Option<Arc<str>>),
    /// Outbound mesh TLS to an endpoint that proved this identity.
    ToServer(Arc<str>),
}

impl EncodeLabelSet for Tls {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        let (tls, reason, peer) = match self {
            Tls::NotProvidedByRemote => ("no_identity", Some("not_provided_by_remote"), None),
            Tls::NotProvidedByServiceDiscovery => (
                "no_identity",
                Some("not_provided_by_service_discovery"),
                None,
            ),
            Tls::FromClient(id) => ("true", None, id.as_deref().map(|id| ("client_id", id))),
            Tls::ToServer(id) => ("true", None, Some(("server_id", id.as_ref()))),
        };
        ("tls", tls).encode(encoder.encode_label())?;
        if let Some(reason) = reason {
            ("no_tls_reason", reason).encode(encoder.encode_label())?;
        }
        if let Some(peer) = peer {
            peer.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    direction: Direction,
    peer: Peer,
    target_addr: String,
    #[prometheus(flatten)]
    tls: Tls,
}

impl TcpLabels {
    pub fn new(direction: Direction, peer: Peer, target_addr: String, tls: Tls) -> Self {
        TcpLabels {
            direction,
            peer,
            target_addr,
            tls,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpCloseLabels {
    #[prometheus(flatten)]
    conn: TcpLabels,
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    #[prometheus(flatten)]
    authority: AuthorityLabel,
    target_addr: String,
    #[prometheus(flatten)]
    tls: Tls,
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

/// What discovery says about an endpoint (`namespace`, `service`,
/// `external_workload`, ...), exported as `dst_<name>` labels, as Linkerd
/// does, so a query can group by service or workload instead of address.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DstLabels(Option<Arc<[(String, String)]>>);

impl DstLabels {
    /// Label names are made Prometheus-safe (`[a-zA-Z0-9_]`).
    pub fn new<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let labels: Arc<[(String, String)]> = labels
            .into_iter()
            .map(|(name, value)| {
                let name: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                (format!("dst_{name}"), value.clone())
            })
            .collect();
        DstLabels((!labels.is_empty()).then_some(labels))
    }
}

impl EncodeLabelSet for DstLabels {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        for (name, value) in self.0.iter().flat_map(|labels| labels.iter()) {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: u16,
    classification: &'static str,
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_MS_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_MS_BUCKETS)
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tcp_open_total: Family<TcpLabels, Counter>,
    tcp_close_total: Family<TcpCloseLabels, Counter>,
    tcp_open_connections: Family<TcpLabels, Gauge>,
    tcp_read_bytes_total: Family<TcpLabels, Counter>,
    tcp_write_bytes_total: Family<TcpLabels, Counter>,
    tcp_connection_duration_ms: HistogramFamily<TcpCloseLabels>,
    request_total: Family<RequestLabels, Counter>,
    response_total: Family<ResponseLabels, Counter>,
    response_latency_ms: HistogramFamily<LatencyLabels>,
    inbound_http_errors_total: Family<ErrorLabels, Counter>,
    outbound_http_errors_total: Family<ErrorLabels, Counter>,
    inbound_tcp_accept_errors_total: Family<ErrorLabels, Counter>,
    outbound_tcp_accept_errors_total: Family<ErrorLabels, Counter>,
    /// Whether inbound HTTP metrics carry the client's authority.
    inbound_authority: bool,
    identity_cert_expiration_timestamp_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    identity_cert_refresh_total: Family<RefreshLabels, Counter>,
    route_request_total: Family<RouteLabels, Counter>,
    route_response_total: Family<RouteResponseLabels, Counter>,
    route_response_latency_ms: HistogramFamily<RouteLatencyLabels>,
    route_actual_request_total: Family<RouteLabels, Counter>,
    route_actual_response_total: Family<RouteResponseLabels, Counter>,
    control_request_total: Family<ControlLabels, Counter>,
    control_stream_failures_total: Family<ControlLabels, Counter>,
    control_updates_total: Family<ControlLabels, Counter>,
    control_streams_active: Family<ControlLabels, Gauge>,
}

/// The control-plane address a client talks to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControlLabels {
    addr: String,
}

/// An open control-plane stream; dropping it ends the count.
pub struct ActiveStream(Series<Gauge>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    result: &'static str,
}

impl Metrics {
    /// Every family bounded by `limits`; `inbound_authority` labels inbound
    /// HTTP metrics with the client's authority (unsafe: the client picks it).
    pub fn new(limits: SeriesLimits, inbound_authority: bool) -> Arc<Self> {
        fn counters<L: Clone + std::hash::Hash + Eq>(limits: SeriesLimits) -> Family<L, Counter> {
            Family::new(limits, Counter::default)
        }
        fn gauges<L: Clone + std::hash::Hash + Eq>(limits: SeriesLimits) -> Family<L, Gauge> {
            Family::new(limits, Gauge::default)
        }
        let mut m = Metrics {
            inbound_authority,
            tcp_open_total: counters(limits),
            tcp_close_total: counters(limits),
            tcp_open_connections: gauges(limits),
            tcp_read_bytes_total: counters(limits),
            tcp_write_bytes_total: counters(limits),
            tcp_connection_duration_ms: Family::new(limits, duration_histogram),
            request_total: counters(limits),
            response_total: counters(limits),
            response_latency_ms: Family::new(limits, latency_histogram),
            inbound_http_errors_total: counters(limits),
            outbound_http_errors_total: counters(limits),
            inbound_tcp_accept_errors_total: counters(limits),
            outbound_tcp_accept_errors_total: counters(limits),
            identity_cert_expiration_timestamp_seconds: Gauge::default(),
            identity_cert_refresh_total: counters(limits),
            route_request_total: counters(limits),
            route_response_total: counters(limits),
            route_response_latency_ms: Family::new(limits, latency_histogram),
            route_actual_request_total: counters(limits),
            route_actual_response_total: counters(limits),
            control_request_total: counters(limits),
            control_stream_failures_total: counters(limits),
            control_updates_total: counters(limits),
            control_streams_active: gauges(limits),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters.
        m.registry.register(
            "tcp_open",
            "Total TCP connections opened",
            m.tcp_open_total.clone(),
        );
        m.registry.register(
            "tcp_close",
            "Total TCP connections closed",
            m.tcp_close_total.clone(),
        );
        m.registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.tcp_open_connections.clone(),
        );
        m.registry.register(
            "tcp_read_bytes",
            "Bytes read from the peer",
            m.tcp_read_bytes_total.clone(),
        );
        m.registry.register(
            "tcp_write_bytes",
            "Bytes written to the peer",
            m.tcp_write_bytes_total.clone(),
        );
        m.registry.register(
            "tcp_connection_duration_ms",
            "Lifetime of closed TCP connections in milliseconds",
            m.tcp_connection_duration_ms.clone(),
        );
        m.registry
            .register("request", "Total HTTP requests", m.request_total.clone());
        m.registry
            .register("response", "Total HTTP responses", m.response_total.clone());
        m.registry.register(
            "response_latency_ms",
            "Time from request to response headers in milliseconds",
            m.response_latency_ms.clone(),
        );
        m.registry.register(
            "inbound_http_errors",
            "Inbound HTTP requests the proxy answered with an error of its own",
            m.inbound_http_errors_total.clone(),
        );
        m.registry.register(
            "outbound_http_errors",
            "Outbound HTTP requests the proxy answered with an error of its own",
            m.outbound_http_errors_total.clone(),
        );
        m.registry.register(
            "inbound_tcp_accept_errors",
            "Inbound connections closed before they were served, by reason",
            m.inbound_tcp_accept_errors_total.clone(),
        );
        m.registry.register(
            "outbound_tcp_accept_errors",
            "Outbound connections closed before they were served, by reason",
            m.outbound_tcp_accept_errors_total.clone(),
        );
        m.registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When this proxy's certificate expires, seconds since the Unix epoch",
            m.identity_cert_expiration_timestamp_seconds.clone(),
        );
        m.registry.register(
            "identity_cert_refresh",
            "Certify attempts by result",
            m.identity_cert_refresh_total.clone(),
        );
        m.registry.register(
            "route_request",
            "Requests matching a profile route (each counted once, however often retried)",
            m.route_request_total.clone(),
        );
        m.registry.register(
            "route_response",
            "Responses to requests matching a profile route, as the client saw them",
            m.route_response_total.clone(),
        );
        m.registry.register(
            "route_response_latency_ms",
            "Time to response headers for a profile route, retries included",
            m.route_response_latency_ms.clone(),
        );
        m.registry.register(
            "route_actual_request",
            "Requests sent for a profile route, retries included",
            m.route_actual_request_total.clone(),
        );
        m.registry.register(
            "route_actual_response",
            "Responses received for a profile route, retries included",
            m.route_actual_response_total.clone(),
        );
        m.registry.register(
            "control_request",
            "Discovery streams opened to the control plane",
            m.control_request_total.clone(),
        );
        m.registry.register(
            "control_stream_failures",
            "Discovery streams that failed or ended (each is retried with back-off)",
            m.control_stream_failures_total.clone(),
        );
        m.registry.register(
            "control_updates",
            "Discovery updates received",
            m.control_updates_total.clone(),
        );
        m.registry.register(
            "control_streams_active",
            "Discovery streams open now",
            m.control_streams_active.clone(),
        );
        m.registry
            .register_collector(Box::new(ProcessCollector::new()));
        Arc::new(m)
    }

    /// The whole registry in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Opens the per-connection accounting for one TCP connection; dropping the
    /// last clone of the returned handle records the close.
    pub fn tcp_open(self: &Arc<Self>, labels: TcpLabels) -> Arc<TcpConn> {
        let conn = self.tcp_accepted(labels.clone());
        conn.label(labels);
        conn
    }

    /// Accounting for an accepted connection whose labels are not known yet
    /// (its TLS identity and real target come from the handshake and the
    /// transport header): bytes are counted from the start and attributed at
    /// [`TcpConn::label`]. A connection that ends before that is recorded
    /// under `fallback`.
    pub fn tcp_accepted(self: &Arc<Self>, fallback: TcpLabels) -> Arc<TcpConn> {
        Arc::new(TcpConn {
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            errno: AtomicI32::new(0),
            opened_at: Instant::now(),
            labelled: OnceLock::new(),
            fallback,
            metrics: self.clone(),
        })
    }

    pub fn control_request(&self, addr: &str) {
        self.control_request_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_failure(&self, addr: &str) {
        self.control_stream_failures_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_update(&self, addr: &str) {
        self.control_updates_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_stream_active(&self, addr: &str) -> ActiveStream {
        let gauge = self
            .control_streams_active
            .get_or_create(&ControlLabels { addr: addr.into() })
            .clone();
        gauge.inc();
        ActiveStream(gauge)
    }

    /// Records a Certify attempt; on success, the new certificate's expiry.
    /// A Certify outcome: `Some(valid_until)` when it succeeded.
    pub fn identity_refreshed(&self, outcome: Option<SystemTime>) {
        let result = if outcome.is_some() { "ok" } else { "failure" };
        self.identity_cert_refresh_total
            .get_or_create(&RefreshLabels { result })
            .inc();
        if let Some(valid_until) = outcome {
            let secs = valid_until
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.identity_cert_expiration_timestamp_seconds.set(secs);
        }
    }

    /// Counts a connection closed before it was served.
    pub fn tcp_accept_error(&self, direction: Direction, error: &'static str) {
        count_error(
            direction,
            &self.inbound_tcp_accept_errors_total,
            &self.outbound_tcp_accept_errors_total,
            error,
        );
    }

    /// Counts an error response the proxy produced itself.
    pub fn http_error(&self, direction: Direction, error: &'static str) {
        count_error(
            direction,
            &self.inbound_http_errors_total,
            &self.outbound_http_errors_total,
            error,
        );
    }
}

/// Bumps `error` in the family of `direction`.
fn count_error(
    direction: Direction,
    inbound: &Family<ErrorLabels, Counter>,
    outbound: &Family<ErrorLabels, Counter>,
    error: &'static str,
) {
    let family = match direction {
        Direction::Inbound => inbound,
        Direction::Outbound => outbound,
    };
    family.get_or_create(&ErrorLabels { error }).inc();
}

/// Byte counts and lifetime of one TCP connection.
#[derive(Debug)]
pub struct TcpConn {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errno: AtomicI32,
    opened_at: Instant,
    labelled: OnceLock<LabelledConn>,
    fallback: TcpLabels,
    metrics: Arc<Metrics>,
}

/// A connection's series, resolved once its labels are known.
#[derive(Debug)]
struct LabelledConn {
    labels: TcpLabels,
    read: Series<Counter>,
    written: Series<Counter>,
    open: Series<Gauge>,
}

impl TcpConn {
    /// Attributes the connection (and the bytes it has moved so far) to
    /// `labels`. Only the first call counts.
    pub fn label(&self, labels: TcpLabels) {
        let m = &self.metrics;
        let mut fresh = false;
        let labelled = self.labelled.get_or_init(|| {
            fresh = true;
            m.tcp_open_total.get_or_create(&labels).inc();
            let open = m.tcp_open_connections.get_or_create(&labels);
            open.inc();
            LabelledConn {
                read: m.tcp_read_bytes_total.get_or_create(&labels),
                written: m.tcp_write_bytes_total.get_or_create(&labels),
                open,
                labels,
            }
        });
        if fresh {
            // Until now only the raw totals moved; one task drives the
            // connection at this point, so nothing is counted twice.
            labelled.read.inc_by(self.bytes_read());
            labelled.written.inc_by(self.bytes_written());
        }
    }

    pub fn add_read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(l) = self.labelled.get() {
            l.read.inc_by(n as u64);
        }
    }

    pub fn add_written(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(l) = self.labelled.get() {
            l.written.inc_by(n as u64);
        }
    }

    /// Total bytes moved either way; idle detection compares successive values.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_read() + self.bytes_written()
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Marks the connection as ended by an I/O error (the `errno` label on close).
    pub fn set_error(&self, err: &std::io::Error) {
        if let Some(code) = err.raw_os_error() {
            self.errno.store(code, Ordering::Relaxed);
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        if self.labelled.get().is_none() {
            self.label(self.fallback.clone());
        }
        let Some(labelled) = self.labelled.get() else {
            return;
        };
        labelled.open.dec();
        let errno = match self.errno.load(Ordering::Relaxed) {
            0 => String::new(),
            code => errno_name(code),
        };
        let labels = TcpCloseLabels {
            conn: labelled.labels.clone(),
            errno,
        };
        self.metrics.tcp_close_total.get_or_create(&labels).inc();
        let ms = self.opened_at.elapsed().as_secs_f64() * 1e3;
        self.metrics
            .tcp_connection_duration_ms
            .get_or_create(&labels)
            .observe(ms);
    }
}

fn errno_name(code: i32) -> String {
    match code {
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        other => other.to_string(),
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
            recent: Mutex::new(Vec::new()),
        }
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
        let mut recent = crate::lock(&self.recent);
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
            target_addr: target_addr.to_string(),
            tls: match server_id {
                Some(id) => Tls::ToServer(id.as_str().into()),
                None => self.tls.clone(),
            },
            dst,
        };
        let m = Arc::new(AuthorityMetrics {
            target: target_addr,
            request_total: self.metrics.request_total.get_or_create(&labels),
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
/// classification (decided only at the end of the stream for gRPC).
#[derive(Clone, Debug)]
pub struct StatusMetrics {
    code: u16,
    pub latency_ms: Series<Histogram>,
    pub success: Series<Counter>,
    pub failure: Series<Counter>,
}

impl AuthorityMetrics {
    pub fn status(&self, code: u16) -> StatusMetrics {
        let mut statuses = crate::lock(&self.statuses);
        if let Some(s) = statuses.iter().find(|s| s.code == code) {
            return s.clone();
        }
        let response = |classification| ResponseLabels {
            request: self.labels.clone(),
            status_code: code,
            classification,
        };
        let latency = LatencyLabels {
            request: self.labels.clone(),
            status_code: code,
        };
        let s = StatusMetrics {
            code,
            latency_ms: self.metrics.response_latency_ms.get_or_create(&latency),
            success: self
                .metrics
                .response_total
                .get_or_create(&response("success")),
            failure: self
                .metrics
                .response_total
                .get_or_create(&response("failure")),
        };
        statuses.push(s.clone());
        s
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
            request_total: self.route_request_total.get_or_create(&labels),
            actual_request_total: self.route_actual_request_total.get_or_create(&labels),
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
        let mut statuses = crate::lock(&self.statuses);
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
        let s = RouteStatus {
            latency_ms: self
                .metrics
                .route_response_latency_ms
                .get_or_create(&RouteLatencyLabels {
                    route: self.labels.clone(),
                    status_code: code,
                }),
            response: self.metrics.route_response_total.get_or_create(&response),
            actual_response: self
                .metrics
                .route_actual_response_total
                .get_or_create(&response),
        };
        statuses.push((code, failure, s.clone()));
        s
    }
}

/// `process_*` metrics read from /proc at scrape time.
#[derive(Debug)]
struct ProcessCollector {
    start_time: f64,
    clock_ticks: f64,
    page_size: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ProcessCollector {
            start_time,
            clock_ticks: ticks.max(1) as f64,
            page_size: page.max(1) as f64,
        }
    }
}

/// Fields of /proc/self/stat after the command name: utime, stime, vsize, rss.
fn proc_stat() -> Option<(f64, f64, f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15, vsize 23, rss 24.
    let get = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some((get(14)?, get(15)?, get(23)?, get(24)?))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut gauge = |name: &str, help: &str, value: f64| -> fmt::Result {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time,
        )?;
        if let Some((_, _, vsize, rss)) = proc_stat() {
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                vsize,
            )?;
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss * self.page_size,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                limit.rlim_cur as f64,
            )?;
        }
        if let Some((utime, stime, _, _)) = proc_stat() {
            let c = ConstCounter::new((utime + stime) / self.clock_ticks);
            let desc = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(desc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_linkerd_names_and_labels() {
        let m = Metrics::new(SeriesLimits::default(), false);
        let conn = m.tcp_open(TcpLabels::new(
            Direction::Inbound,
            Peer::Src,
            "10.0.0.1:80".into(),
            Tls::NotProvidedByRemote,
        ));
        conn.add_read(10);
        let http = HttpConnMetrics::new(m.clone(), Direction::Inbound, Tls::NotProvidedByRemote);
        let target = "10.0.0.1:80".parse().unwrap();
        let a = http.for_request("web:80", target, || (None, DstLabels::default()));
        a.request_total.inc();
        let s = a.status(200);
        s.success.inc();
        s.latency_ms.observe(3.0);
        assert!(Arc::ptr_eq(
            &a,
            &http.for_request("web:80", target, || (None, DstLabels::default()))
        ));
        drop(conn);
        let outbound = HttpConnMetrics::new(
            m.clone(),
            Direction::Outbound,
            Tls::NotProvidedByServiceDiscovery,
        );
        let discovered = std::collections::BTreeMap::from([
            ("namespace".to_string(), "demo".to_string()),
            ("external-workload".to_string(), "web-0".to_string()),
        ]);
        outbound
            .for_request("web:80", target, || (None, DstLabels::new(&discovered)))
            .request_total
            .inc();

        let text = m.encode();
        for needle in [
            r#"request_total{direction="inbound",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote"} 1"#,
            r#"response_total{direction="inbound",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote",status_code="200",classification="success"} 1"#,
            r#"response_latency_ms_bucket{direction="inbound",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote",status_code="200",le="3"} 1"#,
            r#"tcp_read_bytes_total{direction="inbound",peer="src",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote"} 10"#,
            r#"tcp_open_connections{direction="inbound",peer="src",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote"} 0"#,
            r#"tcp_close_total{direction="inbound",peer="src",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_remote",errno=""} 1"#,
            r#"request_total{direction="outbound",authority="web:80",target_addr="10.0.0.1:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery",dst_external_workload="web-0",dst_namespace="demo"} 1"#,
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }
}
