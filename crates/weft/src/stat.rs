//! `weft stat`: per workload (or service) of a running local mesh, what its proxies'
//! metrics say. Success rate, requests per second and latency come from
//! inbound requests (what the workload served), or from outbound ones for a
//! workload that serves nothing (a client such as the vote bot). All are
//! computed over a window between two scrapes. The mTLS share counts every
//! connection the proxies opened or accepted. DENIED/S counts what the
//! workload's proxies refused by policy (authorization or rate limit). The data comes from the
//! proxies directly; the Prometheus-backed viz stack can take this over
//! behind the same output.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::mesh::{MeshPod, get};
use crate::output::{OutputArgs, Table};
use crate::target::{Kind, Target};
use weft_control::metrics_text::{Sample, parse};

#[derive(Args)]
pub struct StatArgs {
    /// What to show: `deploy` (every Deployment), `deploy/web`, `deploy web`,
    /// `po/web-0`, `svc/web-svc`, `ns/demo`; or a Deployment's name.
    #[arg(default_value = "deploy")]
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

/// The counters `weft stat` reads, summed over a workload's proxies.
#[derive(Clone, Debug, Default)]
struct Totals {
    /// By direction: success, failure.
    responses: BTreeMap<String, (f64, f64)>,
    /// By direction: latency histogram buckets (upper bound, count).
    latency: BTreeMap<String, BTreeMap<u64, f64>>,
    tcp_open: f64,
    tcp_tls: f64,
    tcp_open_now: f64,
    /// Inbound requests and connections refused by authorization policy or
    /// a rate limit.
    denied: f64,
}

fn mesh_facing(s: &Sample) -> bool {
    matches!(
        (s.label("direction"), s.label("peer")),
        (Some("inbound"), Some("src")) | (Some("outbound"), Some("dst"))
    )
}

fn bucket_key(le: &str) -> u64 {
    if le == "+Inf" {
        u64::MAX
    } else {
        (le.parse::<f64>().unwrap_or(f64::MAX) * 1000.0) as u64
    }
}

impl Totals {
    fn add(&mut self, samples: &[Sample]) {
        for s in samples {
            let direction = s.label("direction").unwrap_or_default().to_string();
            match s.name.as_str() {
                "response_total" => {
                    let entry = self.responses.entry(direction).or_default();
                    match s.label("classification") {
                        Some("success") => entry.0 += s.value,
                        Some("failure") => entry.1 += s.value,
                        _ => {}
                    }
                }
                "response_latency_ms_bucket" => {
                    if let Some(le) = s.label("le") {
                        *self
                            .latency
                            .entry(direction)
                            .or_default()
                            .entry(bucket_key(le))
                            .or_default() += s.value;
                    }
                }
                // Only the mesh-facing side of each connection: what it
                // accepted from the network (inbound) and what it opened to
                // the network (outbound); the legs to and from the local
                // program are never mesh traffic.
                "tcp_open_total" if mesh_facing(s) => {
                    self.tcp_open += s.value;
                    if s.label("tls") == Some("true") {
                        self.tcp_tls += s.value;
                    }
                }
                "tcp_open_connections" if mesh_facing(s) => self.tcp_open_now += s.value,
                "inbound_http_authz_deny_total"
                | "inbound_tcp_authz_deny_total"
                | "inbound_http_local_ratelimit_rejected_total" => self.denied += s.value,
                _ => {}
            }
        }
    }
}

/// The `q` quantile (0..1) of a cumulative histogram keyed by upper bounds
/// in microseconds, in milliseconds, interpolated within its bucket.
pub(crate) fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = buckets
        .get(&u64::MAX)
        .copied()
        .or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (&le, &count) in buckets {
        let upper = if le == u64::MAX {
            lower
        } else {
            le as f64 / 1000.0
        };
        if count >= rank {
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * fraction);
        }
        (lower, below) = (upper, count);
    }
    Some(lower)
}

#[derive(Debug, Serialize)]
struct WorkloadStat {
    name: String,
    namespace: String,
    pods: usize,
    ready: usize,
    /// Pods whose proxy answered both scrapes (Linkerd's MESHED column).
    meshed_pods: usize,
    /// Every pod is meshed.
    meshed: bool,
    /// Whose requests the rates describe: `inbound`, or `outbound` for a
    /// workload that serves nothing.
    direction: String,
    success_rate: Option<f64>,
    rps: f64,
    /// Inbound requests (and opaque connections) per second that its
    /// proxies refused: authorization policy or a rate limit.
    denied_rps: f64,
    latency_ms_p50: Option<f64>,
    latency_ms_p95: Option<f64>,
    latency_ms_p99: Option<f64>,
    tcp_connections: f64,
    tls_percent: Option<f64>,
}

/// A group's pods: all, ready (`/ready` answers 200), meshed (the proxy
/// answered both scrapes).
#[derive(Debug, Default)]
struct PodCounts {
    pods: usize,
    ready: usize,
    meshed: usize,
}

fn workload_stat(
    name: &str,
    namespace: &str,
    counts: &PodCounts,
    before: &Totals,
    after: &Totals,
    window: Duration,
) -> WorkloadStat {
    let delta = |dir: &str| {
        let (s1, f1) = after.responses.get(dir).copied().unwrap_or_default();
        let (s0, f0) = before.responses.get(dir).copied().unwrap_or_default();
        (s1 - s0, f1 - f0)
    };
    let direction = if delta("inbound").0 + delta("inbound").1 > 0.0 {
        "inbound"
    } else {
        "outbound"
    };
    let (ok, failed) = delta(direction);
    let total = ok + failed;
    let mut latency = after.latency.get(direction).cloned().unwrap_or_default();
    if let Some(earlier) = before.latency.get(direction) {
        for (le, count) in latency.iter_mut() {
            *count -= earlier.get(le).copied().unwrap_or_default();
        }
    }
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    WorkloadStat {
        name: name.into(),
        namespace: namespace.into(),
        pods: counts.pods,
        ready: counts.ready,
        meshed_pods: counts.meshed,
        meshed: counts.pods > 0 && counts.meshed == counts.pods,
        direction: direction.into(),
        success_rate: (total > 0.0).then(|| round(ok / total)),
        rps: round(total / window.as_secs_f64()),
        denied_rps: round((after.denied - before.denied).max(0.0) / window.as_secs_f64()),
        latency_ms_p50: quantile(&latency, 0.5).map(round),
        latency_ms_p95: quantile(&latency, 0.95).map(round),
        latency_ms_p99: quantile(&latency, 0.99).map(round),
        tcp_connections: after.tcp_open_now,
        tls_percent: (after.tcp_open > 0.0).then(|| round(100.0 * after.tcp_tls / after.tcp_open)),
    }
}

pub fn run(args: StatArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target, args.name.as_deref(), &args.namespaces)
        .map_err(anyhow::Error::msg)?;
    // `ns/demo` shows demo's Deployments.
    let kind = match target.kind {
        Kind::Namespace => Kind::Deployment,
        kind => kind,
    };
    // A pod counts once per group it is in: its Deployment, itself, or each
    // service that selects it.
    let pods: Vec<(String, MeshPod)> = crate::mesh::running_pods(&args.mesh.running()?)?
        .into_iter()
        .flat_map(|p| {
            let groups = match kind {
                Kind::Service => p.services.clone(),
                Kind::Pod => vec![p.name.clone()],
                Kind::Deployment | Kind::Namespace => vec![p.workload.clone()],
            };
            groups.into_iter().map(move |g| (g, p.clone()))
        })
        .filter(|(group, pod)| target.matches(&pod.namespace, group))
        .collect();
    if pods.is_empty() {
        bail!("no {} in mesh {:?}", target.describe(), args.mesh.mesh);
    }
    let kind = kind.name();
    let scrape = |pod: &MeshPod| -> Option<Vec<Sample>> {
        get(pod.admin, "/metrics")
            .ok()
            .map(|(_, body)| parse(&body))
    };
    let first: Vec<Option<Vec<Sample>>> = pods.iter().map(|(_, p)| scrape(p)).collect();
    std::thread::sleep(args.window);
    let mut groups: BTreeMap<(String, String), (PodCounts, Totals, Totals)> = BTreeMap::new();
    for ((group, pod), before) in pods.iter().zip(first) {
        let ready = get(pod.admin, "/ready").is_ok_and(|(code, _)| code == 200);
        let after = scrape(pod);
        let (counts, totals_before, totals_after) = groups
            .entry((pod.namespace.clone(), group.clone()))
            .or_default();
        counts.pods += 1;
        counts.ready += usize::from(ready);
        if let (Some(before), Some(after)) = (before, after) {
            counts.meshed += 1;
            totals_before.add(&before);
            totals_after.add(&after);
        }
    }
    let stats: Vec<WorkloadStat> = groups
        .iter()
        .map(|((ns, name), (counts, before, after))| {
            workload_stat(name, ns, counts, before, after, args.window)
        })
        .collect();
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                format!("{}/{}", s.namespace, s.name),
                format!("{}/{}", s.ready, s.pods),
                format!("{}/{}", s.meshed_pods, s.pods),
                s.success_rate
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                format!("{:.1}", s.rps),
                format!("{:.1}", s.denied_rps),
                opt(s.latency_ms_p50, "ms"),
                opt(s.latency_ms_p95, "ms"),
                opt(s.latency_ms_p99, "ms"),
                format!("{}", s.tcp_connections),
                opt(s.tls_percent, "%"),
                s.direction.clone(),
            ]
        })
        .collect();
    let first_column = kind.to_uppercase();
    let table = Table::new(&[
        &first_column,
        "READY",
        "MESHED",
        "SUCCESS",
        "RPS",
        "DENIED/S",
        "P50",
        "P95",
        "P99",
        "TCP",
        "MTLS",
    ])
    .wide(&["DIRECTION"])
    .rows(rows);
    args.output.emit(&stats, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_format() {
        let text = "# HELP x\nrequest_total{direction=\"inbound\",authority=\"a,b\",tls=\"true\"} 7\nprocess_open_fds 12\nbroken line\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].label("authority"), Some("a,b"));
        assert_eq!(samples[0].label("tls"), Some("true"));
        assert_eq!(samples[0].value, 7.0);
        assert_eq!(samples[1].name, "process_open_fds");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = BTreeMap::from([
            (1000, 50.0),
            (10_000, 90.0),
            (100_000, 100.0),
            (u64::MAX, 100.0),
        ]);
        assert_eq!(quantile(&buckets, 0.5), Some(1.0));
        let p95 = quantile(&buckets, 0.95).unwrap();
        assert!((p95 - 55.0).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&BTreeMap::new(), 0.5), None);
    }
}
