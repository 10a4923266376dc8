//! `weft viz stat|edges|routes`: Linkerd's `linkerd viz` views of a running
//! mesh, asked of its metrics API (`weft control viz`, which `weft up` runs
//! beside its Prometheus), so the PromQL lives in one place
//! (`weft_control::viz::promql`). `weft control viz` is here too.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use weft_control::viz::api::{Edge, RouteRow, StatRow};

use crate::output::{OutputArgs, Table};

/// Where a running mesh's metrics API is: `<state>/metrics-api-addr`.
pub const API_ADDR_FILE: &str = "metrics-api-addr";

#[derive(Subcommand)]
pub enum VizCmd {
    /// Per resource: success rate, requests per second, latency, TCP,
    /// meshed pods; from the mesh's Prometheus, as `linkerd viz stat`.
    Stat(StatArgs),
    /// Who talks to whom, with both identities and whether the edge is mTLS.
    Edges(EdgesArgs),
    /// Per route a resource sends on: success rate, requests per second,
    /// latency (ServiceProfile and policy routes alike).
    Routes(RoutesArgs),
}

#[derive(Args)]
struct ApiArgs {
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
    /// The metrics API's address (default: the running mesh's).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Only this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct StatArgs {
    /// `deploy`, `deploy/web`, `po`, `svc/voting-svc`, `ns`, `au`.
    resource: String,
    /// Only traffic from this resource (`deploy/vote-bot`).
    #[arg(long, conflicts_with = "to")]
    from: Option<String>,
    /// Only traffic to this resource (`svc/voting-svc`, `deploy/voting`).
    #[arg(long)]
    to: Option<String>,
    /// The window rates are computed over (`30s`, `1m`, `1h`).
    #[arg(short = 't', long, default_value = "1m")]
    time_window: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct EdgesArgs {
    /// `deploy` or `po` (optionally one of them: `deploy/web`).
    resource: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct RoutesArgs {
    /// The resource whose outbound routes to show: `deploy/web`.
    resource: String,
    #[arg(short = 't', long, default_value = "1m")]
    time_window: String,
    #[command(flatten)]
    api: ApiArgs,
}

impl ApiArgs {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.api {
            return Ok(addr);
        }
        let state = self.mesh.running()?;
        let text = std::fs::read_to_string(state.join(API_ADDR_FILE)).with_context(|| {
            format!(
                "mesh {:?} runs no metrics API (it runs one beside its Prometheus: install prometheus and restart weft up)",
                self.mesh.mesh
            )
        })?;
        text.trim()
            .parse()
            .with_context(|| format!("{API_ADDR_FILE} holds {text:?}, not an address"))
    }

    /// GETs `path` with `params` and decodes the answer's `field`.
    fn ask<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, Option<&str>)],
        field: &str,
    ) -> anyhow::Result<T> {
        let addr = self.addr()?;
        let mut query = String::new();
        let ns = self.namespace.as_deref();
        for (k, v) in params.iter().chain(&[("namespace", ns)]) {
            if let Some(v) = v {
                query.push(if query.is_empty() { '?' } else { '&' });
                query.push_str(k);
                query.push('=');
                query.push_str(&weft_control::viz::prometheus::percent_encode(v));
            }
        }
        let (code, body) = crate::mesh::get(addr, &format!("{path}{query}"))
            .with_context(|| format!("asking the metrics API at {addr}"))?;
        let mut answer: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("the metrics API at {addr} answered {code} with no JSON"))?;
        if code != 200 {
            let error = answer["error"].as_str().unwrap_or("no reason given");
            bail!("{error}");
        }
        serde_json::from_value(answer[field].take())
            .with_context(|| format!("the metrics API's {field} are not what this weft reads"))
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0))
}

pub fn run(cmd: VizCmd) -> anyhow::Result<()> {
    match cmd {
        VizCmd::Stat(args) => stat(args),
        VizCmd::Edges(args) => edges(args),
        VizCmd::Routes(args) => routes(args),
    }
}

fn stat(args: StatArgs) -> anyhow::Result<()> {
    let rows: Vec<StatRow> = args.api.ask(
        "/api/v1/stat",
        &[
            ("resource", Some(&args.resource)),
            ("from", args.from.as_deref()),
            ("to", args.to.as_deref()),
            ("window", Some(&args.time_window)),
        ],
        "rows",
    )?;
    let kind = args.resource.split('/').next().unwrap_or_default();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let meshed = match (r.meshed_pods, r.pods) {
                (Some(m), Some(p)) => format!("{m}/{p}"),
                _ => "-".into(),
            };
            let bytes = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}B/s"));
            vec![
                r.namespace.clone(),
                r.name.clone(),
                meshed,
                pct(r.success_rate),
                format!("{:.2}", r.rps),
                opt(r.latency_ms_p50, "ms"),
                opt(r.latency_ms_p95, "ms"),
                opt(r.latency_ms_p99, "ms"),
                r.tcp_connections.map_or("-".into(), |c| format!("{c}")),
                opt(r.tls_percent, "%"),
                bytes(r.tcp_read_bytes_per_sec),
                bytes(r.tcp_write_bytes_per_sec),
            ]
        })
        .collect();
    let table = Table::new(&[
        "NAMESPACE",
        &kind.to_uppercase(),
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
        "MTLS",
    ])
    .wide(&["READ_BYTES/SEC", "WRITE_BYTES/SEC"])
    .rows(table_rows);
    args.api.output.emit(&rows, table)
}

fn edges(args: EdgesArgs) -> anyhow::Result<()> {
    let edges: Vec<Edge> = args.api.ask(
        "/api/v1/edges",
        &[("resource", Some(&args.resource))],
        "edges",
    )?;
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            vec![
                format!("{}/{}", e.src_namespace, e.src),
                format!("{}/{}", e.dst_namespace, e.dst),
                e.client_id.clone(),
                e.server_id.clone(),
                if e.mtls {
                    "√".into()
                } else if e.no_tls_reason.is_empty() {
                    "not verified".into()
                } else {
                    e.no_tls_reason.clone()
                },
                e.connections.to_string(),
            ]
        })
        .collect();
    let table = Table::new(&["SRC", "DST", "CLIENT_ID", "SERVER_ID", "SECURED"])
        .wide(&["CONNECTIONS"])
        .rows(rows);
    args.api.output.emit(&edges, table)
}

fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let rows: Vec<RouteRow> = args.api.ask(
        "/api/v1/routes",
        &[
            ("resource", Some(&args.resource)),
            ("window", Some(&args.time_window)),
        ],
        "rows",
    )?;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.parent.clone(),
                format!("{}/{}", r.kind, r.route),
                pct(r.success_rate),
                format!("{:.2}", r.rps),
                opt(r.latency_ms_p50, "ms"),
                opt(r.latency_ms_p95, "ms"),
                opt(r.latency_ms_p99, "ms"),
            ]
        })
        .collect();
    let table = Table::new(&[
        "PARENT",
        "ROUTE",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ])
    .rows(table_rows);
    args.api.output.emit(&rows, table)
}

/// `weft control viz`: the metrics API.
#[derive(Args)]
pub struct ServeArgs {
    /// The Prometheus to ask (host:port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    prometheus: SocketAddr,
    /// Where the API listens (Linkerd's metrics-api port is 8085).
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let prom = weft_control::viz::prometheus::Prometheus {
        addr: args.prometheus,
    };
    tokio::select! {
        served = weft_control::viz::api::serve(args.listen, prom) => served,
        _ = weft_control::shutdown_signal() => Ok(()),
    }
}
