//! `weft routes`: per route a workload's proxies send on (or every client's,
//! for a Service), what their metrics say over a window: success rate,
//! requests per second, latency, retries, and for outbound policy routes
//! the backends with the split they actually received.
//!
//! Two kinds of route are shown side by side: outbound policy routes
//! (HTTPRoute, GRPCRoute, the controller's defaults; the
//! `outbound_{http,grpc}_route_*` families) and ServiceProfile routes (the
//! `route_*` families with `direction="outbound"`). Like `weft stat`, the
//! data comes from the proxies' admin servers directly.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::mesh::{MeshPod, get};
use crate::output::{OutputArgs, Table};
use crate::stat::quantile;
use crate::target::{Kind, Target};
use weft_control::metrics_text::{Sample, parse};

#[derive(Args)]
pub struct RoutesArgs {
    /// Whose routes: a Deployment's outbound routes (`deploy/web`, `web`,
    /// `po/web-0`), or every client's routes to a Service (`svc/emoji-svc`).
    target: String,
    /// One resource of the kind given first, by name.
    name: Option<String>,
    #[command(flatten)]
    namespaces: crate::target::NamespaceArgs,
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
    /// Time between the two scrapes that rates are computed over.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    window: Duration,
    #[command(flatten)]
    output: OutputArgs,
}

/// A route, as its metrics label it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RouteKey {
    /// `Service/demo/emoji-svc:8080`, `EgressNetwork/…`, or for a profile
    /// route the service's authority.
    parent: String,
    /// `HTTPRoute/demo/name`, `GRPCRoute/…`, `default/http`, or for a
    /// profile route `ServiceProfile/<route name>`.
    route: String,
}

/// One route's counters, summed over the proxies scraped.
#[derive(Clone, Debug, Default)]
struct RouteTotals {
    success: f64,
    failure: f64,
    retries: f64,
    /// Latency histogram: upper bound in microseconds → cumulative count.
    latency: BTreeMap<u64, f64>,
    /// Backend → attempts dispatched to it.
    backends: BTreeMap<String, f64>,
}

fn meta(s: &Sample, prefix: &str) -> String {
    let l = |n: &str| s.label(&format!("{prefix}_{n}")).unwrap_or_default();
    if l("kind") == "default" {
        return format!("default/{}", l("name"));
    }
    let port = l("port");
    let port = if port.is_empty() {
        String::new()
    } else {
        format!(":{port}")
    };
    format!("{}/{}/{}{port}", l("kind"), l("namespace"), l("name"))
}

/// An upper bound as microseconds, from a label in `unit` seconds.
fn bucket(le: &str, unit: f64) -> u64 {
    if le == "+Inf" {
        u64::MAX
    } else {
        (le.parse::<f64>().unwrap_or(f64::MAX) * unit * 1e6) as u64
    }
}

/// Which routes the scraped samples have, with their counters.
fn totals(samples: &[Sample]) -> BTreeMap<RouteKey, RouteTotals> {
    let mut out: BTreeMap<RouteKey, RouteTotals> = BTreeMap::new();
    for s in samples {
        let policy = |s: &Sample| RouteKey {
            parent: meta(s, "parent"),
            route: meta(s, "route"),
        };
        let profile = |s: &Sample| RouteKey {
            parent: s.label("dst").unwrap_or_default().to_string(),
            route: format!("ServiceProfile/{}", s.label("rt_route").unwrap_or_default()),
        };
        let outbound = s.label("direction") == Some("outbound");
        match s.name.as_str() {
            "outbound_http_route_request_statuses_total"
            | "outbound_grpc_route_request_statuses_total" => {
                let t = out.entry(policy(s)).or_default();
                // Linkerd's classification: a gRPC call succeeds with
                // status 0; an HTTP request unless it got a 5xx or failed.
                let ok = s.label("error").unwrap_or_default().is_empty()
                    && match s.label("grpc_status") {
                        Some(code) => code == "0",
                        None => s
                            .label("http_status")
                            .and_then(|c| c.parse::<u16>().ok())
                            .is_some_and(|c| c < 500),
                    };
                if ok {
                    t.success += s.value;
                } else {
                    t.failure += s.value;
                }
            }
            "outbound_http_route_request_duration_seconds_bucket"
            | "outbound_grpc_route_request_duration_seconds_bucket" => {
                if let Some(le) = s.label("le") {
                    *out.entry(policy(s))
                        .or_default()
                        .latency
                        .entry(bucket(le, 1.0))
                        .or_default() += s.value;
                }
            }
            "outbound_http_route_retry_requests_total"
            | "outbound_grpc_route_retry_requests_total" => {
                out.entry(policy(s)).or_default().retries += s.value;
            }
            "outbound_http_route_backend_requests_total"
            | "outbound_grpc_route_backend_requests_total" => {
                *out.entry(policy(s))
                    .or_default()
                    .backends
                    .entry(meta(s, "backend"))
                    .or_default() += s.value;
            }
            "route_response_total" if outbound => {
                let t = out.entry(profile(s)).or_default();
                match s.label("classification") {
                    Some("success") => t.success += s.value,
                    _ => t.failure += s.value,
                }
            }
            "route_response_latency_ms_bucket" if outbound => {
                if let Some(le) = s.label("le") {
                    *out.entry(profile(s))
                        .or_default()
                        .latency
                        .entry(bucket(le, 1e-3))
                        .or_default() += s.value;
                }
            }
            // A profile route's retries: attempts beyond its requests.
            "route_actual_request_total" if outbound => {
                out.entry(profile(s)).or_default().retries += s.value;
            }
            "route_request_total" if outbound => {
                out.entry(profile(s)).or_default().retries -= s.value;
            }
            _ => {}
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct Backend {
    backend: String,
    rps: f64,
    /// Its share of the route's attempts, in percent.
    percent: Option<f64>,
}

#[derive(Debug, Serialize)]
struct RouteStat {
    parent: String,
    route: String,
    success_rate: Option<f64>,
    rps: f64,
    retries_per_second: f64,
    latency_ms_p50: Option<f64>,
    latency_ms_p95: Option<f64>,
    latency_ms_p99: Option<f64>,
    backends: Vec<Backend>,
}

fn route_stat(key: &RouteKey, before: &RouteTotals, after: &RouteTotals, window: f64) -> RouteStat {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let ok = after.success - before.success;
    let failed = after.failure - before.failure;
    let total = ok + failed;
    let mut latency = after.latency.clone();
    for (le, count) in latency.iter_mut() {
        *count -= before.latency.get(le).copied().unwrap_or_default();
    }
    let attempts: f64 = after
        .backends
        .iter()
        .map(|(b, n)| n - before.backends.get(b).copied().unwrap_or_default())
        .sum();
    let backends = after
        .backends
        .iter()
        .map(|(b, n)| {
            let sent = n - before.backends.get(b).copied().unwrap_or_default();
            Backend {
                backend: b.clone(),
                rps: round(sent / window),
                percent: (attempts > 0.0).then(|| round(100.0 * sent / attempts)),
            }
        })
        .collect();
    RouteStat {
        parent: key.parent.clone(),
        route: key.route.clone(),
        success_rate: (total > 0.0).then(|| round(ok / total)),
        rps: round(total / window),
        retries_per_second: round(((after.retries - before.retries) / window).max(0.0)),
        latency_ms_p50: quantile(&latency, 0.5).map(round),
        latency_ms_p95: quantile(&latency, 0.95).map(round),
        latency_ms_p99: quantile(&latency, 0.99).map(round),
        backends,
    }
}

/// Whether a route's parent is Service `name` in `namespace`: a policy
/// route's `Service/ns/name:port`, or a profile route's authority.
fn parent_is(parent: &str, namespace: Option<&str>, name: &str) -> bool {
    if let Some(rest) = parent.strip_prefix("Service/") {
        let (ns, svc) = rest.split_once('/').unwrap_or(("", rest));
        let svc = svc.split(':').next().unwrap_or(svc);
        return svc == name && namespace.is_none_or(|n| n == ns);
    }
    let mut labels = parent.split(':').next().unwrap_or(parent).split('.');
    labels.next() == Some(name) && namespace.is_none_or(|n| labels.next() == Some(n))
}

pub fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target, args.name.as_deref(), &args.namespaces)
        .map_err(anyhow::Error::msg)?;
    let Some(name) = target.name.clone() else {
        bail!("say whose routes: deploy/NAME, po/NAME or svc/NAME");
    };
    let pods: Vec<MeshPod> = crate::mesh::running_pods(&args.mesh.running()?)?
        .into_iter()
        .filter(|p| match target.kind {
            Kind::Deployment => target.matches(&p.namespace, &p.workload),
            Kind::Pod => target.matches(&p.namespace, &p.name),
            // Every client of the Service.
            Kind::Service | Kind::Namespace => true,
        })
        .collect();
    if pods.is_empty() {
        bail!("no {} in mesh {:?}", target.describe(), args.mesh.mesh);
    }
    let scrape = |pod: &MeshPod| -> Vec<Sample> {
        get(pod.admin, "/metrics")
            .map(|(_, body)| parse(&body))
            .unwrap_or_default()
    };
    let sum = |all: Vec<Vec<Sample>>| -> Vec<Sample> { all.into_iter().flatten().collect() };
    let before = totals(&sum(pods.iter().map(scrape).collect()));
    std::thread::sleep(args.window);
    let after = totals(&sum(pods.iter().map(scrape).collect()));
    let window = args.window.as_secs_f64().max(1e-3);
    let stats: Vec<RouteStat> = after
        .iter()
        .filter(|(key, _)| {
            target.kind != Kind::Service
                || parent_is(&key.parent, target.namespace.as_deref(), &name)
        })
        .map(|(key, a)| {
            route_stat(
                key,
                &before.get(key).cloned().unwrap_or_default(),
                a,
                window,
            )
        })
        .collect();
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}ms"));
    let rows = stats
        .iter()
        .map(|s| {
            let split = s
                .backends
                .iter()
                .map(|b| match b.percent {
                    Some(p) => format!("{} {p:.1}%", b.backend),
                    None => b.backend.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                s.parent.clone(),
                s.route.clone(),
                s.success_rate
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                format!("{:.1}", s.rps),
                opt(s.latency_ms_p50),
                opt(s.latency_ms_p95),
                opt(s.latency_ms_p99),
                format!("{:.1}", s.retries_per_second),
                if split.is_empty() { "-".into() } else { split },
            ]
        })
        .collect();
    let table = Table::new(&[
        "PARENT",
        "ROUTE",
        "SUCCESS",
        "RPS",
        "P50",
        "P95",
        "P99",
        "RETRIES/S",
        "BACKENDS",
    ])
    .rows(rows);
    args.output.emit(&stats, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_profile_routes_are_read_with_their_backends() {
        let route = "parent_group=\"core\",parent_kind=\"Service\",parent_namespace=\"demo\",parent_name=\"emoji-svc\",parent_port=\"8080\",parent_section_name=\"\",route_group=\"gateway.networking.k8s.io\",route_kind=\"GRPCRoute\",route_namespace=\"demo\",route_name=\"emoji-reads\"";
        let text = format!(
            "outbound_grpc_route_request_statuses_total{{{route},grpc_status=\"0\",error=\"\"}} 90\n\
             outbound_grpc_route_request_statuses_total{{{route},grpc_status=\"14\",error=\"\"}} 10\n\
             outbound_grpc_route_backend_requests_total{{{route},backend_group=\"core\",backend_kind=\"Service\",backend_namespace=\"demo\",backend_name=\"emoji-v2-svc\",backend_port=\"8080\",backend_section_name=\"\"}} 12\n\
             outbound_grpc_route_request_duration_seconds_bucket{{{route},le=\"0.005\"}} 50\n\
             outbound_grpc_route_request_duration_seconds_bucket{{{route},le=\"+Inf\"}} 100\n\
             route_response_total{{direction=\"outbound\",dst=\"voting-svc.demo.svc.cluster.local:8080\",rt_route=\"Vote\",status_code=\"200\",classification=\"failure\"}} 3\n\
             route_response_total{{direction=\"inbound\",dst=\"voting-svc.demo.svc.cluster.local:8080\",rt_route=\"Vote\",status_code=\"200\",classification=\"success\"}} 7\n"
        );
        let t = totals(&parse(&text));
        let key = RouteKey {
            parent: "Service/demo/emoji-svc:8080".into(),
            route: "GRPCRoute/demo/emoji-reads".into(),
        };
        let r = &t[&key];
        assert_eq!((r.success, r.failure), (90.0, 10.0), "grpc-status decides");
        assert_eq!(r.backends["Service/demo/emoji-v2-svc:8080"], 12.0);
        assert_eq!(
            quantile(&r.latency, 0.5),
            Some(5.0),
            "seconds read as seconds"
        );
        let vote = &t[&RouteKey {
            parent: "voting-svc.demo.svc.cluster.local:8080".into(),
            route: "ServiceProfile/Vote".into(),
        }];
        assert_eq!((vote.success, vote.failure), (0.0, 3.0), "outbound only");
        assert!(parent_is(&key.parent, Some("demo"), "emoji-svc"));
        assert!(parent_is(
            "voting-svc.demo.svc.cluster.local:8080",
            Some("demo"),
            "voting-svc"
        ));
        assert!(!parent_is(&key.parent, Some("other"), "emoji-svc"));
    }
}
