//! Metrics with Linkerd's names and labels, exposed in Prometheus text format.
//!
//! Label sets are resolved once per connection ([`TcpConn`]) and once per
//! authority on a connection ([`AuthorityMetrics`]); the request path then only
//! clones handles and bumps atomics. Families hash label sets only on those
//! first look-ups. Every family is bounded ([`family`]): a cap on label sets
//! with an overflow series, and idle series dropped. Inbound HTTP metrics carry
//! no client-chosen authority unless asked for.
//!
//! One module per concern, each registering its own families: [`labels`]
//! (shared label sets), `tcp`, `http`, `route` (profile routes),
//! `policy_route` (outbound policy routes and backends), `control`, `identity`,
//! `process`, and the error counters here. A new metric is a field and a
//! `register` line in its module.

mod authz;
pub mod classify;
mod control;
pub mod family;
mod http;
mod identity;
pub mod labels;
mod policy_route;
mod process;
mod route;
mod tcp;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::authz::Decision;
pub use self::classify::{Class, Eos};
pub use self::control::ActiveStream;
pub use self::family::SeriesLimits;
use self::family::{Family, Registrar};
pub use self::http::{AuthorityMetrics, HttpConnMetrics, StatusMetrics};
pub use self::labels::{Direction, DstLabels, Peer, ServerLabel, TargetAddr, TcpLabels, Tls};
pub use self::policy_route::{
    Outcome, PolicyBackendMetrics, PolicyRouteMetrics, RouteEnd, TcpRouteMetrics,
};
pub use self::route::{RouteMetrics, RouteStatus};
pub use self::tcp::TcpConn;

/// Linkerd's latency buckets (milliseconds), so its dashboards' quantiles line up.
const LATENCY_MS_BUCKETS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];
const DURATION_MS_BUCKETS: [f64; 7] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0];

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

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Whether inbound HTTP metrics carry the client's authority.
    inbound_authority: bool,
    tcp: tcp::TcpFamilies,
    http: http::HttpFamilies,
    inbound_http_errors_total: Family<ErrorLabels, Counter>,
    outbound_http_errors_total: Family<ErrorLabels, Counter>,
    inbound_tcp_accept_errors_total: Family<ErrorLabels, Counter>,
    outbound_tcp_accept_errors_total: Family<ErrorLabels, Counter>,
    identity: identity::IdentityFamilies,
    route: route::RouteFamilies,
    policy_route: policy_route::PolicyRouteFamilies,
    policy_grpc_route: policy_route::PolicyRouteFamilies,
    tcp_route: policy_route::TcpRouteFamilies,
    control: control::ControlFamilies,
    authz: authz::AuthzFamilies,
    /// Access-log lines dropped because the writer was behind.
    pub access_log_dropped: Counter,
}

impl Metrics {
    /// Every family bounded by `limits`; `inbound_authority` labels inbound
    /// HTTP metrics with the client's authority (unsafe: the client picks it).
    pub fn new(limits: SeriesLimits, inbound_authority: bool) -> Arc<Self> {
        let mut registry = Registry::default();
        let identity = identity::IdentityFamilies::register(&mut registry, limits);
        let mut r = Registrar {
            registry: &mut registry,
            limits,
        };
        let tcp = tcp::TcpFamilies::register(&mut r);
        let http = http::HttpFamilies::register(&mut r);
        let route = route::RouteFamilies::register(&mut r);
        let policy_route = policy_route::PolicyRouteFamilies::register(&mut r, "http");
        let policy_grpc_route = policy_route::PolicyRouteFamilies::register(&mut r, "grpc");
        let tcp_route = policy_route::TcpRouteFamilies::register(&mut r);
        let control = control::ControlFamilies::register(&mut r);
        let authz = authz::AuthzFamilies::register(&mut r);
        let mut errors = |name: &str, help: &str| r.counter(name, help);
        let inbound_http_errors_total = errors(
            "inbound_http_errors",
            "Inbound HTTP requests the proxy answered with an error of its own",
        );
        let outbound_http_errors_total = errors(
            "outbound_http_errors",
            "Outbound HTTP requests the proxy answered with an error of its own",
        );
        let inbound_tcp_accept_errors_total = errors(
            "inbound_tcp_accept_errors",
            "Inbound connections closed before they were served, by reason",
        );
        let outbound_tcp_accept_errors_total = errors(
            "outbound_tcp_accept_errors",
            "Outbound connections closed before they were served, by reason",
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped rather than delaying requests",
            access_log_dropped.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Arc::new(Metrics {
            registry,
            inbound_authority,
            tcp,
            http,
            inbound_http_errors_total,
            outbound_http_errors_total,
            inbound_tcp_accept_errors_total,
            outbound_tcp_accept_errors_total,
            identity,
            route,
            policy_route,
            policy_grpc_route,
            tcp_route,
            control,
            authz,
            access_log_dropped,
        })
    }

    /// The whole registry in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_linkerd_names_and_labels() {
        let m = Metrics::new(SeriesLimits::default(), false);
        let target: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let server = ServerLabel {
            server: weft_policy::Ref {
                group: "policy.linkerd.io".into(),
                kind: "server".into(),
                name: "web-http".into(),
            },
            port: 80,
        };
        let conn = m.tcp_open(
            TcpLabels::new(
                Direction::Inbound,
                Peer::Src,
                target,
                Tls::NotProvidedByRemote,
            )
            .with_server(server.clone()),
        );
        conn.add_read(10);
        let http = HttpConnMetrics::new(m.clone(), Direction::Inbound, Tls::NotProvidedByRemote)
            .with_server(server);
        let a = http.for_request("web:80", target, || (None, DstLabels::default()));
        a.request_total.inc();
        let s = a.status(200);
        s.count(Class::Http { failure: false });
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
            ("deployment".to_string(), "web".to_string()),
        ]);
        outbound
            .for_request("web:80", target, || (None, DstLabels::new(&discovered)))
            .request_total
            .inc();
        let _app = m.tcp_open(TcpLabels::new(
            Direction::Outbound,
            Peer::Src,
            target,
            Tls::Loopback,
        ));
        let _endpoint = m.tcp_open(
            TcpLabels::new(
                Direction::Outbound,
                Peer::Dst,
                target,
                Tls::ToServer("web.demo.serviceaccount.identity.weft.cluster.local".into()),
            )
            .with_endpoint(
                "web.demo.svc.cluster.local:80".into(),
                DstLabels::new(&discovered),
            ),
        );

        let text = m.encode();
        let target = r#"target_addr="10.0.0.1:80",target_ip="10.0.0.1",target_port="80""#;
        let plain = r#"tls="no_identity",no_tls_reason="not_provided_by_remote""#;
        let srv =
            r#"srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-http",srv_port="80""#;
        for needle in [
            format!(r#"request_total{{direction="inbound",{target},{plain},{srv}}} 1"#),
            format!(
                r#"response_total{{direction="inbound",{target},{plain},{srv},status_code="200",classification="success"}} 1"#
            ),
            format!(
                r#"response_latency_ms_bucket{{direction="inbound",{target},{plain},{srv},status_code="200",le="3"}} 1"#
            ),
            format!(
                r#"tcp_read_bytes_total{{direction="inbound",peer="src",{target},{plain},{srv}}} 10"#
            ),
            format!(
                r#"tcp_open_connections{{direction="inbound",peer="src",{target},{plain},{srv}}} 0"#
            ),
            format!(
                r#"tcp_close_total{{direction="inbound",peer="src",{target},{plain},{srv},errno=""}} 1"#
            ),
            format!(
                r#"request_total{{direction="outbound",authority="web:80",{target},tls="no_identity",no_tls_reason="not_provided_by_service_discovery",dst_deployment="web",dst_namespace="demo"}} 1"#
            ),
            format!(
                r#"tcp_open_total{{direction="outbound",peer="src",{target},tls="no_identity",no_tls_reason="loopback"}} 1"#
            ),
            format!(
                r#"tcp_open_total{{direction="outbound",peer="dst",authority="web.demo.svc.cluster.local:80",{target},tls="true",server_id="web.demo.serviceaccount.identity.weft.cluster.local",dst_deployment="web",dst_namespace="demo"}} 1"#
            ),
            "process_cpu_seconds_total ".into(),
            "process_resident_memory_bytes ".into(),
            concat!(
                r#"proxy_build_info{date="","#,
                r#"git_sha="",profile="debug",vendor="weft",version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            )
            .into(),
        ] {
            assert!(text.contains(&needle), "missing {needle}\n{text}");
        }
        // A response that never happened has no series.
        assert!(!text.contains(r#"classification="failure""#), "{text}");
    }
}
