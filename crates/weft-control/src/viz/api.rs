//! The metrics API's answers and its HTTP server.
//!
//! ```text
//! GET /api/v1/stat?resource=deploy/web&namespace=demo[&from=R|&to=R][&window=1m]
//! GET /api/v1/edges?resource=deploy[&namespace=demo]
//! GET /api/v1/routes?resource=deploy/web&namespace=demo[&window=1m]
//! ```
//!
//! Each answers JSON: `{"rows": [...]}` (edges: `{"edges": [...]}`), or
//! `{"error": "..."}` with 400 for a bad request and 502 when Prometheus
//! cannot answer. Rates are over the window (Linkerd's default, 1 minute).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::prometheus::{Prometheus, QueryError, Sample};
use super::{Kind, Resource, promql};

/// The window when a request names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The longest window a request may ask for.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One resource's traffic over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatRow {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Proxies Prometheus scrapes for it, and those that answered.
    pub pods: Option<u64>,
    pub meshed_pods: Option<u64>,
    pub success_rate: Option<f64>,
    pub rps: f64,
    /// Responses in the window (`success_count + failure_count`).
    pub success_count: u64,
    pub failure_count: u64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Share of responses that crossed mTLS.
    pub tls_percent: Option<f64>,
    pub tcp_connections: Option<f64>,
    pub tcp_read_bytes_per_sec: Option<f64>,
    pub tcp_write_bytes_per_sec: Option<f64>,
    pub window_seconds: u64,
}

/// Who talks to whom, and how it is secured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub src_namespace: String,
    pub src: String,
    pub dst_namespace: String,
    pub dst: String,
    /// The client's identity (its service account's mesh identity).
    pub client_id: String,
    /// The identity the server proved to the client's proxy.
    pub server_id: String,
    /// Both ends agree: the client's proxy saw `server_id` over mTLS and the
    /// server's proxies verified `client_id`.
    pub mtls: bool,
    /// Why the edge is not mTLS, when it is not.
    pub no_tls_reason: String,
    pub connections: u64,
}

/// One route's traffic over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    /// `ServiceProfile` or the policy route's kind (`HTTPRoute`, `GRPCRoute`).
    pub kind: String,
    /// The profile's service, or the policy route's parent.
    pub parent: String,
    pub route: String,
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Prometheus(#[from] QueryError),
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The key a sample belongs to: (namespace, name) from the group labels.
fn key(sample: &Sample, group_by: &[String]) -> (String, String) {
    let name = group_by.last().map_or("", |l| sample.label(l));
    let namespace = if group_by.len() == 2 {
        sample.label(&group_by[0])
    } else {
        name
    };
    (namespace.to_string(), name.to_string())
}

/// The row for `k`, made if new.
fn stat_row<'a>(
    rows: &'a mut BTreeMap<(String, String), StatRow>,
    k: (String, String),
    kind: &str,
    window_seconds: u64,
) -> &'a mut StatRow {
    rows.entry(k.clone()).or_insert_with(|| StatRow {
        kind: kind.to_string(),
        namespace: k.0,
        name: k.1,
        window_seconds,
        ..Default::default()
    })
}

/// `linkerd viz stat`, from Prometheus.
pub async fn stat(
    prom: &Prometheus,
    resource: &Resource,
    from: Option<&Resource>,
    to: Option<&Resource>,
    window: Duration,
) -> Result<Vec<StatRow>, ApiError> {
    if from.is_some() && to.is_some() {
        return Err(ApiError::BadRequest("give --from or --to, not both".into()));
    }
    if from.is_some_and(|f| f.kind == Kind::Service) {
        return Err(ApiError::BadRequest(
            "a service cannot be a --from: services send nothing".into(),
        ));
    }
    let q = promql::stat(resource, from, to, window);
    let (responses, p50, p95, p99) = tokio::try_join!(
        prom.query(&q.responses),
        prom.query(&q.latency[0]),
        prom.query(&q.latency[1]),
        prom.query(&q.latency[2]),
    )?;
    let mut rows: BTreeMap<(String, String), StatRow> = BTreeMap::new();
    let secs = window.as_secs().max(1);
    let kind = resource.kind.short().to_string();
    // Responses over mTLS, and all, as Prometheus's (fractional) increases.
    let mut tls: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for s in &responses {
        let k = key(s, &q.group_by);
        let n = s.value.round() as u64;
        let r = stat_row(&mut rows, k.clone(), &kind, secs);
        match s.label("classification") {
            "success" => r.success_count += n,
            "failure" => r.failure_count += n,
            _ => {}
        }
        let (secured, all) = tls.entry(k).or_default();
        *all += s.value;
        if s.label("tls") == "true" {
            *secured += s.value;
        }
    }
    for (quantile, samples) in [(0, &p50), (1, &p95), (2, &p99)] {
        for s in samples.iter() {
            let r = stat_row(&mut rows, key(s, &q.group_by), &kind, secs);
            let v = Some(round(s.value));
            match quantile {
                0 => r.latency_ms_p50 = v,
                1 => r.latency_ms_p95 = v,
                _ => r.latency_ms_p99 = v,
            }
        }
    }
    if let Some([open, read, write]) = &q.tcp {
        let (open, read, write) =
            tokio::try_join!(prom.query(open), prom.query(read), prom.query(write))?;
        for s in &open {
            stat_row(&mut rows, key(s, &q.group_by), &kind, secs).tcp_connections = Some(s.value);
        }
        for s in &read {
            stat_row(&mut rows, key(s, &q.group_by), &kind, secs).tcp_read_bytes_per_sec =
                Some(round(s.value / secs as f64));
        }
        for s in &write {
            stat_row(&mut rows, key(s, &q.group_by), &kind, secs).tcp_write_bytes_per_sec =
                Some(round(s.value / secs as f64));
        }
    }
    // Pods: without --from/--to every resource the proxies report is a row,
    // with or without traffic (Linkerd lists every object it knows).
    let filtered = from.is_some() || to.is_some();
    if let Some(([all, up], group)) = promql::pods(resource) {
        let (all, up) = tokio::try_join!(prom.query(&all), prom.query(&up))?;
        let group = &group;
        for s in &all {
            let k = key(s, group);
            if filtered && !rows.contains_key(&k) {
                continue;
            }
            stat_row(&mut rows, k, &kind, secs).pods = Some(s.value as u64);
        }
        for s in &up {
            let k = key(s, group);
            if let Some(r) = rows.get_mut(&k) {
                r.meshed_pods = Some(s.value as u64);
            }
        }
    }
    let mut out: Vec<StatRow> = rows
        .into_iter()
        .map(|(k, mut r)| {
            let total = r.success_count + r.failure_count;
            if total > 0 {
                r.success_rate = Some(round(r.success_count as f64 / total as f64));
                let (secured, all) = tls.get(&k).copied().unwrap_or_default();
                r.tls_percent = (all > 0.0).then(|| round(100.0 * secured / all));
            }
            r.rps = round(total as f64 / secs as f64);
            if r.pods.is_some() && r.meshed_pods.is_none() {
                r.meshed_pods = Some(0);
            }
            r
        })
        .filter(|r| !r.name.is_empty())
        .filter(|r| {
            resource.name.as_ref().is_none_or(|n| {
                // `--from`: rows are the destinations; a named resource is one.
                *n == r.name
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// `linkerd viz edges`, from Prometheus: each client's open connections to
/// each server, with the server's proven identity from the client's proxy
/// and the client's identity as the server's proxies verified it.
pub async fn edges(prom: &Prometheus, resource: &Resource) -> Result<Vec<Edge>, ApiError> {
    if !matches!(resource.kind, Kind::Deployment | Kind::Pod) {
        return Err(ApiError::BadRequest(format!(
            "edges are between deployments or pods, not {}",
            resource.kind.short()
        )));
    }
    let label = resource.kind.label().unwrap_or("deployment");
    let [outbound, inbound] = promql::edges(resource.kind);
    let (outbound, inbound) = tokio::try_join!(prom.query(&outbound), prom.query(&inbound))?;
    // The identities each server's proxies verified.
    let mut verified: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for s in &inbound {
        if s.value > 0.0 {
            verified
                .entry((s.label("namespace").into(), s.label(label).into()))
                .or_default()
                .insert(s.label("client_id").into());
        }
    }
    let mut edges: BTreeMap<(String, String, String, String), Edge> = BTreeMap::new();
    for s in &outbound {
        if s.value <= 0.0 {
            continue;
        }
        let (src_ns, src) = (s.label("namespace"), s.label(label));
        let (dst_ns, dst) = (s.label("dst_namespace"), s.label(&format!("dst_{label}")));
        if let Some(ns) = &resource.namespace
            && ns != src_ns
            && ns != dst_ns
        {
            continue;
        }
        if resource
            .name
            .as_deref()
            .is_some_and(|n| n != src && n != dst)
        {
            continue;
        }
        let server_id = s.label("server_id");
        let client_id = client_identity(s.label("serviceaccount"), src_ns, server_id);
        let mtls = !server_id.is_empty()
            && verified
                .get(&(dst_ns.to_string(), dst.to_string()))
                .is_some_and(|ids| ids.contains(&client_id));
        let edge = edges
            .entry((src_ns.into(), src.into(), dst_ns.into(), dst.into()))
            .or_insert_with(|| Edge {
                src_namespace: src_ns.into(),
                src: src.into(),
                dst_namespace: dst_ns.into(),
                dst: dst.into(),
                client_id: client_id.clone(),
                server_id: server_id.into(),
                mtls,
                no_tls_reason: s.label("no_tls_reason").into(),
                connections: 0,
            });
        edge.connections += s.value.round() as u64;
        // Any plaintext connection makes the edge not mTLS.
        edge.mtls &= mtls;
    }
    Ok(edges.into_values().collect())
}

/// A client's mesh identity from its service account, in the trust domain
/// the server's identity shows (`<sa>.<ns>.serviceaccount.identity.<rest>`).
fn client_identity(service_account: &str, namespace: &str, server_id: &str) -> String {
    const MARK: &str = ".serviceaccount.identity.";
    match server_id.split_once(MARK) {
        Some((_, domain)) if !service_account.is_empty() => {
            format!("{service_account}.{namespace}{MARK}{domain}")
        }
        _ => String::new(),
    }
}

/// gRPC codes that are failures in Linkerd's classes.
fn grpc_failure(code: &str) -> bool {
    matches!(code, "2" | "4" | "13" | "14" | "15")
}

/// A route's responses so far.
struct RouteAcc {
    row: RouteRow,
    ok: f64,
    failed: f64,
}

type RouteKey = (String, String, String);

fn route_acc(rows: &mut BTreeMap<RouteKey, RouteAcc>, key: RouteKey) -> &mut RouteAcc {
    rows.entry(key.clone()).or_insert_with(|| RouteAcc {
        row: RouteRow {
            kind: key.0,
            parent: key.1,
            route: key.2,
            ..Default::default()
        },
        ok: 0.0,
        failed: 0.0,
    })
}

fn profile_route(s: &Sample) -> RouteKey {
    (
        "ServiceProfile".into(),
        s.label("dst").into(),
        s.label("rt_route").into(),
    )
}

fn policy_route(s: &Sample) -> RouteKey {
    let port = match s.label("parent_port") {
        "" => String::new(),
        p => format!(":{p}"),
    };
    (
        s.label("route_kind").into(),
        format!(
            "{}/{}/{}{port}",
            s.label("parent_kind"),
            s.label("parent_namespace"),
            s.label("parent_name")
        ),
        format!("{}/{}", s.label("route_namespace"), s.label("route_name")),
    )
}

fn set_latency(row: &mut RouteRow, quantile: usize, ms: f64) {
    let v = Some(round(ms));
    match quantile {
        0 => row.latency_ms_p50 = v,
        1 => row.latency_ms_p95 = v,
        _ => row.latency_ms_p99 = v,
    }
}

/// `linkerd viz routes` for what a resource sends: ServiceProfile routes and
/// policy routes alike. A policy route's response fails on a 5xx, a
/// failing gRPC code (Linkerd's classes) or an error.
pub async fn routes(
    prom: &Prometheus,
    resource: &Resource,
    window: Duration,
) -> Result<Vec<RouteRow>, ApiError> {
    let q = promql::routes(resource, window);
    let secs = window.as_secs().max(1) as f64;
    let (profile, http, grpc) = tokio::try_join!(
        prom.query(&q.profile_responses),
        prom.query(&q.policy_statuses[0]),
        prom.query(&q.policy_statuses[1]),
    )?;
    let mut rows: BTreeMap<RouteKey, RouteAcc> = BTreeMap::new();
    for s in &profile {
        let acc = route_acc(&mut rows, profile_route(s));
        if s.label("classification") == "failure" {
            acc.failed += s.value;
        } else {
            acc.ok += s.value;
        }
    }
    for (samples, grpc) in [(&http, false), (&grpc, true)] {
        for s in samples.iter() {
            let failed = !s.label("error").is_empty()
                || if grpc {
                    grpc_failure(s.label("grpc_status"))
                } else {
                    s.label("http_status").starts_with('5')
                };
            let acc = route_acc(&mut rows, policy_route(s));
            if failed {
                acc.failed += s.value;
            } else {
                acc.ok += s.value;
            }
        }
    }
    for (quantile, query) in q.profile_latency.iter().enumerate() {
        for s in prom.query(query).await? {
            set_latency(
                &mut route_acc(&mut rows, profile_route(&s)).row,
                quantile,
                s.value,
            );
        }
    }
    for latency in &q.policy_latency {
        for (quantile, query) in latency.iter().enumerate() {
            for s in prom.query(query).await? {
                let acc = route_acc(&mut rows, policy_route(&s));
                set_latency(&mut acc.row, quantile, s.value * 1000.0);
            }
        }
    }
    Ok(rows
        .into_values()
        .map(|acc| {
            let mut row = acc.row;
            let total = acc.ok + acc.failed;
            row.rps = round(total / secs);
            row.success_rate = (total > 0.0).then(|| round(acc.ok / total));
            row
        })
        .collect())
}

/// Serves the API on `addr`, asking `prom`.
pub async fn serve(addr: SocketAddr, prom: Prometheus) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics API to {addr}"))?;
    info!(addr = %listener.local_addr()?, prometheus = %prom.addr, "metrics API listening");
    loop {
        let (stream, peer) = listener.accept().await?;
        let prom = prom.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let prom = prom.clone();
                async move { Ok::<_, Infallible>(answer(&prom, req.uri()).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "metrics API connection ended with an error");
            }
        });
    }
}

async fn answer(prom: &Prometheus, uri: &http::Uri) -> Response<Full<Bytes>> {
    let params = query_params(uri.query().unwrap_or_default());
    let result = match uri.path() {
        "/ready" => return json(StatusCode::OK, &serde_json::json!({"ready": true})),
        "/api/v1/stat" => handle_stat(prom, &params)
            .await
            .map(|rows| serde_json::json!({ "rows": rows })),
        "/api/v1/edges" => match resource(&params, "resource") {
            Ok(r) => edges(prom, &r)
                .await
                .map(|edges| serde_json::json!({ "edges": edges })),
            Err(e) => Err(e),
        },
        "/api/v1/routes" => match (resource(&params, "resource"), window(&params)) {
            (Ok(r), Ok(w)) => routes(prom, &r, w)
                .await
                .map(|rows| serde_json::json!({ "rows": rows })),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        other => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": format!("no such endpoint: {other} (try /api/v1/stat, /api/v1/edges, /api/v1/routes)") }),
            );
        }
    };
    match result {
        Ok(body) => json(StatusCode::OK, &body),
        Err(e @ ApiError::BadRequest(_)) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": e.to_string() }),
        ),
        Err(e @ ApiError::Prometheus(_)) => json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

async fn handle_stat(
    prom: &Prometheus,
    params: &BTreeMap<String, String>,
) -> Result<Vec<StatRow>, ApiError> {
    let r = resource(params, "resource")?;
    let from = params
        .contains_key("from")
        .then(|| resource(params, "from"))
        .transpose()?;
    let to = params
        .contains_key("to")
        .then(|| resource(params, "to"))
        .transpose()?;
    stat(prom, &r, from.as_ref(), to.as_ref(), window(params)?).await
}

fn resource(params: &BTreeMap<String, String>, name: &str) -> Result<Resource, ApiError> {
    let text = params
        .get(name)
        .ok_or_else(|| ApiError::BadRequest(format!("missing the {name} parameter")))?;
    // `--from`/`--to` take `namespace` unless they carry their own.
    let ns = params
        .get(&format!("{name}_namespace"))
        .or_else(|| params.get("namespace"))
        .map(String::as_str);
    Resource::parse(text, ns).map_err(ApiError::BadRequest)
}

fn window(params: &BTreeMap<String, String>) -> Result<Duration, ApiError> {
    let Some(text) = params.get("window") else {
        return Ok(DEFAULT_WINDOW);
    };
    let w = parse_duration(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "window {text:?} is not a duration like 30s, 1m or 1h"
        ))
    })?;
    if w < Duration::from_secs(1) || w > MAX_WINDOW {
        return Err(ApiError::BadRequest(format!(
            "window {text:?} must be between 1s and 24h"
        )));
    }
    Ok(w)
}

/// `30s`, `1m`, `2h` (one unit, as Linkerd's `-t`).
fn parse_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_decode_and_bad_ones_are_refused() {
        let p = query_params("resource=deploy%2Fweb&namespace=demo&window=30s&junk=%zz");
        assert_eq!(p["resource"], "deploy/web");
        assert!(!p.contains_key("junk"), "undecodable values are dropped");
        assert_eq!(window(&p).unwrap(), Duration::from_secs(30));
        for bad in ["0s", "25h", "1x", "", "99999999999999999999h"] {
            let p = BTreeMap::from([("window".to_string(), bad.to_string())]);
            assert!(window(&p).is_err(), "{bad}");
        }
        assert!(matches!(
            resource(&BTreeMap::new(), "resource"),
            Err(ApiError::BadRequest(e)) if e.contains("missing")
        ));
    }

    #[test]
    fn a_clients_identity_takes_the_servers_trust_domain() {
        assert_eq!(
            client_identity(
                "web",
                "demo",
                "voting.demo.serviceaccount.identity.weft.cluster.local"
            ),
            "web.demo.serviceaccount.identity.weft.cluster.local"
        );
        // Plaintext: no server identity, so no claim about the client.
        assert_eq!(client_identity("web", "demo", ""), "");
    }
}
