//! The PromQL the metrics API asks: the questions `linkerd viz stat`,
//! `edges` and `routes` ask, over the labels Linkerd's proxies and its
//! Prometheus relabeling give (`namespace`, `deployment`, `pod` of the
//! scraped proxy; `dst_*` of the endpoint; `authority`). Everything here
//! is a pure function of the request, so the queries are tested as text.
//!
//! User input reaches a query only as a label value that was validated
//! first (a DNS label) and is quoted on the way in.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Kind, Resource};

/// A label matcher: `name="value"`, `name!=""` or `name=~"regex"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Matcher {
    Eq(String, String),
    NotEmpty(String),
    Regex(String, String),
}

impl Matcher {
    fn name(&self) -> &str {
        match self {
            Matcher::Eq(n, _) | Matcher::NotEmpty(n) | Matcher::Regex(n, _) => n,
        }
    }
}

/// A set of matchers, written sorted (so a query reads the same each time).
#[derive(Clone, Debug, Default)]
pub struct Selector(Vec<Matcher>);

impl Selector {
    fn eq(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.push(Matcher::Eq(name.into(), value.into()));
        self
    }

    fn not_empty(mut self, name: impl Into<String>) -> Self {
        self.0.push(Matcher::NotEmpty(name.into()));
        self
    }

    fn regex(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.push(Matcher::Regex(name.into(), value.into()));
        self
    }

    /// The scraped proxy's labels for `r` (Linkerd's `promQueryLabels`).
    fn source(mut self, r: &Resource) -> Self {
        if let (Some(name), Some(label)) = (&r.name, r.kind.label())
            && r.kind != Kind::Service
        {
            self = self.eq(label, name.clone());
        }
        if let Some(ns) = r.scoped_namespace() {
            self = self.eq("namespace", ns);
        }
        self
    }

    /// The endpoint's labels for `r` (Linkerd's `promDstQueryLabels`).
    fn destination(mut self, r: &Resource) -> Self {
        if let (Some(name), Some(label)) = (&r.name, r.kind.label()) {
            if r.kind == Kind::Authority {
                return self.eq(label, name.clone());
            }
            self = self.eq(format!("dst_{label}"), name.clone());
            if let Some(ns) = r.scoped_namespace() {
                self = self.eq("dst_namespace", ns);
            }
        }
        self
    }

    fn render(&self) -> String {
        let mut matchers = self.0.clone();
        matchers.sort_by(|a, b| (a.name(), a).cmp(&(b.name(), b)));
        matchers.dedup();
        let mut out = String::from("{");
        for (i, m) in matchers.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = match m {
                Matcher::Eq(n, v) => write!(out, "{n}=\"{}\"", quote(v)),
                Matcher::NotEmpty(n) => write!(out, "{n}!=\"\""),
                Matcher::Regex(n, v) => write!(out, "{n}=~\"{}\"", quote(v)),
            };
        }
        out.push('}');
        out
    }
}

/// Escapes a PromQL string literal's content.
fn quote(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A window as PromQL writes a range: whole seconds, at least one.
pub fn range(window: Duration) -> String {
    format!("{}s", window.as_secs().max(1))
}

/// What `stat` asks of Prometheus for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatQueries {
    /// The labels each row is keyed by, namespace first.
    pub group_by: Vec<String>,
    /// Responses by `classification` and `tls`, increased over the window.
    pub responses: String,
    /// `histogram_quantile` for p50, p95, p99.
    pub latency: [String; 3],
    /// Open TCP connections, and bytes read and written over the window
    /// (`None` for a service: Linkerd has no TCP row for one).
    pub tcp: Option<[String; 3]>,
}

/// `stat` with optional `--from` or `--to` (Linkerd's `buildRequestLabels`):
/// without them the rows are what each resource served (inbound); with
/// `--to R` what each sent to R, and with `--from R` what each received from
/// R, both from the client's outbound metrics.
pub fn stat(
    resource: &Resource,
    from: Option<&Resource>,
    to: Option<&Resource>,
    window: Duration,
) -> StatQueries {
    let window = range(window);
    if resource.kind == Kind::Service {
        return service_stat(resource, from, to, &window);
    }
    let label = |r: &Resource| r.kind.label().unwrap_or("namespace").to_string();
    let (selector, group_by, peer) = match (from, to) {
        (_, Some(to)) => (
            Selector::default()
                .destination(to)
                .source(resource)
                .eq("direction", "outbound"),
            group(resource, label(resource)),
            "dst",
        ),
        (Some(from), None) => (
            Selector::default()
                .source(from)
                .destination(resource)
                .eq("direction", "outbound"),
            if resource.kind == Kind::Namespace {
                vec!["dst_namespace".to_string()]
            } else {
                vec![
                    "dst_namespace".to_string(),
                    format!("dst_{}", label(resource)),
                ]
            },
            "dst",
        ),
        (None, None) => (
            Selector::default()
                .source(resource)
                .eq("direction", "inbound"),
            group(resource, label(resource)),
            "src",
        ),
    };
    let by = group_by.join(", ");
    let labels = selector.render();
    let tcp_labels = selector.clone().eq("peer", peer).render();
    StatQueries {
        responses: format!(
            "sum(increase(response_total{labels}[{window}])) by ({by}, classification, tls)"
        ),
        latency: quantiles(&labels, &window, &by),
        tcp: Some([
            format!("sum(tcp_open_connections{tcp_labels}) by ({by})"),
            format!("sum(increase(tcp_read_bytes_total{tcp_labels}[{window}])) by ({by})"),
            format!("sum(increase(tcp_write_bytes_total{tcp_labels}[{window}])) by ({by})"),
        ]),
        group_by,
    }
}

fn group(resource: &Resource, label: String) -> Vec<String> {
    if resource.kind == Kind::Namespace {
        vec!["namespace".into()]
    } else {
        vec!["namespace".into(), label]
    }
}

fn quantiles(labels: &str, window: &str, by: &str) -> [String; 3] {
    ["0.5", "0.95", "0.99"].map(|q| {
        format!(
            "histogram_quantile({q}, sum(irate(response_latency_ms_bucket{labels}[{window}])) by (le, {by}))"
        )
    })
}

/// A service's stat: what clients sent to its authority (Linkerd's
/// `buildServiceRequestLabels`), from their outbound metrics.
fn service_stat(
    resource: &Resource,
    from: Option<&Resource>,
    to: Option<&Resource>,
    window: &str,
) -> StatQueries {
    let mut selector = Selector::default().eq("direction", "outbound");
    if let Some(from) = from {
        selector = selector.source(from);
    }
    // `stat svc --to svc/x`: the rows are x's.
    let service = to.unwrap_or(resource);
    // Names are DNS labels (checked when parsed): no regex metacharacters.
    let authority = match (&service.name, service.scoped_namespace()) {
        (Some(name), Some(ns)) => format!("^{name}\\.{ns}\\.svc\\.cluster\\.local.+"),
        (Some(name), None) => format!("^{name}\\..+"),
        (None, Some(ns)) => format!("^[^.]+\\.{ns}\\.svc\\.cluster\\.local.+"),
        (None, None) => ".+".into(),
    };
    selector = selector.regex("authority", authority);
    let labels = selector.render();
    let group_by = vec!["dst_namespace".to_string(), "dst_service".to_string()];
    let by = group_by.join(", ");
    StatQueries {
        responses: format!(
            "sum(increase(response_total{labels}[{window}])) by ({by}, classification, tls)"
        ),
        latency: quantiles(&labels, window, &by),
        tcp: None,
        group_by,
    }
}

/// Meshed pods per resource: the proxies Prometheus scrapes, and those up,
/// grouped by the returned labels.
pub fn pods(resource: &Resource) -> Option<([String; 2], Vec<String>)> {
    let label = resource.kind.label()?;
    if matches!(resource.kind, Kind::Service | Kind::Authority) {
        return None;
    }
    let selector = Selector::default()
        .eq("job", "linkerd-proxy")
        .source(resource)
        .render();
    let group_by = group(resource, label.to_string());
    let by = group_by.join(", ");
    Some((
        [
            format!("count(up{selector}) by ({by})"),
            format!("count(up{selector} == 1) by ({by})"),
        ],
        group_by,
    ))
}

/// `edges`: open connections from each resource of a kind to each other,
/// with the identity the server proved and why there is none (Linkerd's
/// `edgesQuery`); and the client identities each destination's proxies
/// verified on their inbound side, to check the other end.
pub fn edges(kind: Kind) -> [String; 2] {
    let label = kind.label().unwrap_or("deployment");
    let outbound = Selector::default()
        .eq("direction", "outbound")
        .eq("peer", "dst")
        .not_empty(label)
        .not_empty(format!("dst_{label}"))
        .render();
    let inbound = Selector::default()
        .eq("direction", "inbound")
        .eq("peer", "src")
        .eq("tls", "true")
        .not_empty(label)
        .render();
    [
        format!(
            "sum(tcp_open_connections{outbound}) by ({label}, dst_{label}, namespace, dst_namespace, serviceaccount, server_id, no_tls_reason)"
        ),
        format!("sum(tcp_open_connections{inbound}) by ({label}, namespace, client_id)"),
    ]
}

/// `routes`: per route the resource's proxies sent on, responses by
/// class and latency quantiles. Profile routes (`route_*`) and policy
/// routes (`outbound_{http,grpc}_route_*`) are asked separately, as their
/// metrics differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteQueries {
    pub profile_responses: String,
    pub profile_latency: [String; 3],
    pub policy_statuses: [String; 2],
    pub policy_latency: [[String; 3]; 2],
}

pub fn routes(resource: &Resource, window: Duration) -> RouteQueries {
    let window = range(window);
    let selector = Selector::default().source(resource);
    let profile = selector.clone().eq("direction", "outbound").render();
    let policy = selector.render();
    let profile_by = "dst, rt_route";
    let policy_by = "parent_kind, parent_namespace, parent_name, parent_port, route_kind, route_namespace, route_name";
    let quantile = |metric: &str, labels: &str, by: &str| {
        ["0.5", "0.95", "0.99"].map(|q| {
            format!("histogram_quantile({q}, sum(rate({metric}{labels}[{window}])) by (le, {by}))")
        })
    };
    RouteQueries {
        profile_responses: format!(
            "sum(increase(route_response_total{profile}[{window}])) by ({profile_by}, classification)"
        ),
        profile_latency: quantile("route_response_latency_ms_bucket", &profile, profile_by),
        policy_statuses: ["http", "grpc"].map(|proto| {
            format!(
                "sum(increase(outbound_{proto}_route_request_statuses_total{policy}[{window}])) by ({policy_by}, {}, error)",
                if proto == "http" { "http_status" } else { "grpc_status" }
            )
        }),
        policy_latency: ["http", "grpc"].map(|proto| {
            quantile(
                &format!("outbound_{proto}_route_request_duration_seconds_bucket"),
                &policy,
                policy_by,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str, ns: Option<&str>) -> Resource {
        Resource::parse(text, ns).unwrap()
    }

    #[test]
    fn stat_asks_what_linkerd_asks() {
        let q = stat(
            &r("deploy/web", Some("demo")),
            None,
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            q.responses,
            r#"sum(increase(response_total{deployment="web", direction="inbound", namespace="demo"}[60s])) by (namespace, deployment, classification, tls)"#
        );
        assert_eq!(
            q.latency[2],
            r#"histogram_quantile(0.99, sum(irate(response_latency_ms_bucket{deployment="web", direction="inbound", namespace="demo"}[60s])) by (le, namespace, deployment))"#
        );
        assert_eq!(
            q.tcp.unwrap()[0],
            r#"sum(tcp_open_connections{deployment="web", direction="inbound", namespace="demo", peer="src"}) by (namespace, deployment)"#
        );
    }

    #[test]
    fn from_and_to_read_the_clients_outbound_metrics() {
        let to = stat(
            &r("deploy", Some("demo")),
            None,
            Some(&r("deploy/voting", Some("demo"))),
            Duration::from_secs(30),
        );
        assert!(
            to.responses.contains(
                r#"{direction="outbound", dst_deployment="voting", dst_namespace="demo", namespace="demo"}"#
            ),
            "{}",
            to.responses
        );
        assert_eq!(to.group_by, ["namespace", "deployment"]);
        let from = stat(
            &r("deploy", Some("demo")),
            Some(&r("deploy/vote-bot", Some("demo"))),
            None,
            Duration::from_secs(30),
        );
        assert!(
            from.responses
                .contains(r#"{deployment="vote-bot", direction="outbound", namespace="demo"}"#),
            "{}",
            from.responses
        );
        assert_eq!(from.group_by, ["dst_namespace", "dst_deployment"]);
    }

    #[test]
    fn a_service_is_its_authority() {
        let q = stat(
            &r("svc/voting-svc", Some("demo")),
            None,
            None,
            Duration::from_secs(60),
        );
        assert!(
            q.responses
                .contains(r#"authority=~"^voting-svc\\.demo\\.svc\\.cluster\\.local.+""#),
            "{}",
            q.responses
        );
        assert_eq!(q.group_by, ["dst_namespace", "dst_service"]);
        assert!(q.tcp.is_none());
    }

    #[test]
    fn edges_pair_clients_with_servers() {
        let [out, inbound] = edges(Kind::Deployment);
        assert_eq!(
            out,
            r#"sum(tcp_open_connections{deployment!="", direction="outbound", dst_deployment!="", peer="dst"}) by (deployment, dst_deployment, namespace, dst_namespace, serviceaccount, server_id, no_tls_reason)"#
        );
        assert!(inbound.contains(r#"tls="true""#), "{inbound}");
    }

    #[test]
    fn label_values_are_quoted() {
        let s = Selector::default().eq("x", "a\"b\\c").render();
        assert_eq!(s, r#"{x="a\"b\\c"}"#);
    }
}
