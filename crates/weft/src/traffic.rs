//! `weft diagnostics policy SERVICE:PORT --outbound`: the outbound policy
//! the controller streams for a Service (or an address), asked as a proxy
//! asks (`OutboundPolicies/Watch`, first message), shown field by field.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use linkerd2_proxy_api::meta::{Metadata, metadata};
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::outbound as api;
use serde_json::{Value, json};

use crate::diagnostics::{ControlArgs, first};
use crate::target::NamespaceArgs;

/// What to ask about: `IP:PORT`, `name.ns.svc.cluster.local:PORT`,
/// `svc/NAME:PORT`, `NS/NAME:PORT` or `NAME:PORT` (the one Service of that
/// name in the running mesh, or in `-n`).
pub fn traffic_spec(
    target: &str,
    namespaces: &NamespaceArgs,
    control: &ControlArgs,
) -> anyhow::Result<api::TrafficSpec> {
    let spec = |target| api::TrafficSpec {
        source_workload: String::new(),
        target: Some(target),
    };
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(spec(api::traffic_spec::Target::Addr(TcpAddress::from(
            addr,
        ))));
    }
    let (service, port) = target
        .rsplit_once(':')
        .with_context(|| format!("{target:?}: say SERVICE:PORT"))?;
    port.parse::<u16>()
        .with_context(|| format!("{target:?}: {port:?} is not a port"))?;
    if service.contains(".svc.") {
        return Ok(spec(api::traffic_spec::Target::Authority(target.into())));
    }
    let service = service.strip_prefix("svc/").unwrap_or(service);
    let (namespace, name) = match service.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => match &namespaces.namespace {
            Some(ns) => (ns.clone(), service.to_string()),
            None => {
                let state = control.mesh.running()?;
                let snapshot = weft_control::store::load(&state.join("cluster"))?;
                let found: Vec<_> = snapshot
                    .services
                    .keys()
                    .filter(|k| k.name == service)
                    .collect();
                match found.as_slice() {
                    [key] => (key.namespace.clone(), key.name.clone()),
                    [] => bail!("no Service {service:?} in the mesh"),
                    _ => bail!("{service:?} is in several namespaces: say NS/{service}:{port}"),
                }
            }
        },
    };
    Ok(spec(api::traffic_spec::Target::Authority(format!(
        "{name}.{namespace}.svc.cluster.local:{port}"
    ))))
}

/// The controller's first answer, with Weft's extension (rate limit,
/// per-route breakers) when it sends it.
pub async fn served(
    control: &ControlArgs,
    spec: api::TrafficSpec,
) -> anyhow::Result<weft_policy::wire::OutboundPolicy> {
    let channel = control.channel().await?;
    first(
        weft_policy::wire::watch(channel, spec).await,
        "outbound policy",
        control,
    )
    .await
}

fn meta(m: &Option<Metadata>) -> Value {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(name)) => json!({"default": name}),
        Some(metadata::Kind::Resource(r)) => {
            json!({"group": r.group, "kind": r.kind, "name": r.name, "namespace": r.namespace, "port": r.port})
        }
        None => Value::Null,
    }
}

fn duration(d: &Option<prost_types::Duration>) -> Value {
    d.and_then(|d| std::time::Duration::try_from(d).ok())
        .map_or(Value::Null, |d| {
            json!(humantime::format_duration(d).to_string())
        })
}

fn backend(b: &Option<api::Backend>) -> Value {
    let Some(b) = b else { return Value::Null };
    let kind = match &b.kind {
        Some(api::backend::Kind::Balancer(p2c)) => {
            let path = match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(api::backend::endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
                None => String::new(),
            };
            json!({"balance": path})
        }
        Some(api::backend::Kind::Forward(addr)) => json!({
            "forward": addr.addr.and_then(|a| SocketAddr::try_from(a).ok()).map(|a| a.to_string())
        }),
        None => json!("invalid"),
    };
    json!({"metadata": meta(&b.metadata), "kind": kind})
}

/// `GET prefix /api header x-canary`: one match, as people read it.
fn match_text(m: &linkerd2_proxy_api::http_route::HttpRouteMatch) -> String {
    use linkerd2_proxy_api::http_route::path_match::Kind;
    let mut parts = Vec::new();
    if let Some(method) = m
        .method
        .as_ref()
        .and_then(|m| http::Method::try_from(m.clone()).ok())
    {
        parts.push(method.to_string());
    }
    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Exact(p)) => parts.push(format!("exact {p}")),
        Some(Kind::Prefix(p)) => parts.push(format!("prefix {p}")),
        Some(Kind::Regex(p)) => parts.push(format!("regex {p}")),
        None => {}
    }
    parts.extend(m.headers.iter().map(|h| format!("header {}", h.name)));
    parts.extend(m.query_params.iter().map(|q| format!("query {}", q.name)));
    parts.join(" ")
}

/// A rule's backends with their weights (`null`: the first available), for
/// HTTP and gRPC rules alike (the proto has one distribution type each).
macro_rules! distribution_json {
    ($kind:ident, $backends:expr) => {
        match $backends.as_ref().and_then(|b| b.kind.as_ref()) {
            Some($kind::FirstAvailable(f)) => f
                .backends
                .iter()
                .map(|b| json!({"backend": backend(&b.backend), "weight": null}))
                .collect::<Vec<Value>>(),
            Some($kind::RandomAvailable(r)) => r
                .backends
                .iter()
                .map(|w| {
                    json!({
                        "backend": backend(&w.backend.as_ref().and_then(|b| b.backend.clone())),
                        "weight": w.weight,
                    })
                })
                .collect(),
            Some($kind::Empty(_)) | None => Vec::new(),
        }
    };
}

fn http_route(r: &api::HttpRoute) -> Value {
    use api::http_route::distribution::Kind as Dist;
    let rules: Vec<Value> = r
        .rules
        .iter()
        .map(|rule| {
            let backends = distribution_json!(Dist, rule.backends);
            let timeouts = rule.timeouts.as_ref();
            json!({
                "matches": rule.matches.iter().map(match_text).collect::<Vec<_>>(),
                "filters": rule.filters.len(),
                "backends": backends,
                "timeouts": {
                    "request": timeouts.map_or(Value::Null, |t| duration(&t.request)),
                    "response": timeouts.map_or(Value::Null, |t| duration(&t.response)),
                    "idle": timeouts.map_or(Value::Null, |t| duration(&t.idle)),
                },
                "retry": rule.retry.as_ref().map(|r| json!({
                    "max_retries": r.max_retries,
                    "statuses": r.conditions.iter().flat_map(|c| &c.status_ranges)
                        .map(|s| format!("{}-{}", s.start, s.end)).collect::<Vec<_>>(),
                    "timeout": duration(&r.timeout),
                })),
            })
        })
        .collect();
    json!({"metadata": meta(&r.metadata), "hosts": r.hosts.len(), "rules": rules})
}

fn grpc_route(r: &api::GrpcRoute) -> Value {
    use api::grpc_route::distribution::Kind as Dist;
    let rules: Vec<Value> = r
        .rules
        .iter()
        .map(|rule| {
            let backends = distribution_json!(Dist, rule.backends);
            let matches: Vec<String> = rule
                .matches
                .iter()
                .map(|m| {
                    let rpc = m.rpc.as_ref();
                    let mut parts = vec![format!(
                        "/{}/{}",
                        rpc.map_or("*", |r| if r.service.is_empty() {
                            "*"
                        } else {
                            &r.service
                        }),
                        rpc.map_or("*", |r| if r.method.is_empty() { "*" } else { &r.method }),
                    )];
                    parts.extend(m.headers.iter().map(|h| format!("header {}", h.name)));
                    parts.join(" ")
                })
                .collect();
            let timeouts = rule.timeouts.as_ref();
            json!({
                "matches": matches,
                "filters": rule.filters.len(),
                "backends": backends,
                "timeouts": {
                    "request": timeouts.map_or(Value::Null, |t| duration(&t.request)),
                    "response": timeouts.map_or(Value::Null, |t| duration(&t.response)),
                    "idle": timeouts.map_or(Value::Null, |t| duration(&t.idle)),
                },
                "retry": rule.retry.as_ref().map(|r| {
                    let c = r.conditions.unwrap_or_default();
                    let codes: Vec<&str> = [
                        (c.cancelled, "cancelled"),
                        (c.deadine_exceeded, "deadline-exceeded"),
                        (c.internal, "internal"),
                        (c.resource_exhausted, "resource-exhausted"),
                        (c.unavailable, "unavailable"),
                    ]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect();
                    json!({
                        "max_retries": r.max_retries,
                        "grpc_statuses": codes,
                        "timeout": duration(&r.timeout),
                    })
                }),
            })
        })
        .collect();
    json!({"metadata": meta(&r.metadata), "hosts": r.hosts.len(), "rules": rules})
}

fn accrual(a: &Option<api::FailureAccrual>) -> Value {
    match a.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(api::failure_accrual::Kind::ConsecutiveFailures(c)) => json!({
            "consecutive_failures": c.max_failures,
            "min_penalty": c.backoff.as_ref().map_or(Value::Null, |b| duration(&b.min_backoff)),
            "max_penalty": c.backoff.as_ref().map_or(Value::Null, |b| duration(&b.max_backoff)),
        }),
        Some(api::failure_accrual::Kind::Unified(u)) => {
            json!({"unified": u.success_rate_threshold})
        }
        None => Value::Null,
    }
}

/// The policy as data: what the proxy would route by.
pub fn policy_json(p: &weft_policy::wire::OutboundPolicy) -> Value {
    use api::proxy_protocol::Kind;
    let opaque = |o: &api::proxy_protocol::Opaque| -> Vec<Value> {
        o.routes.iter().map(|r| meta(&r.metadata)).collect()
    };
    let protocol = match p.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => json!({"detect": {
            "timeout": duration(&d.timeout),
            "opaque_routes": d.opaque.as_ref().map(opaque),
            "http_routes": d.http1.as_ref().map(|h| h.routes.iter().map(http_route).collect::<Vec<_>>()),
            "failure_accrual": d.http1.as_ref().map_or(Value::Null, |h| accrual(&h.failure_accrual)),
        }}),
        Some(Kind::Opaque(o)) => json!({"opaque": {"routes": opaque(o)}}),
        Some(Kind::Http1(h)) => {
            json!({"http1": h.routes.iter().map(http_route).collect::<Vec<_>>()})
        }
        Some(Kind::Http2(h)) => {
            json!({"http2": h.routes.iter().map(http_route).collect::<Vec<_>>()})
        }
        Some(Kind::Grpc(g)) => json!({"grpc": {
            "grpc_routes": g.routes.iter().map(grpc_route).collect::<Vec<_>>(),
            "failure_accrual": accrual(&g.failure_accrual),
        }}),
        Some(Kind::Tls(t)) => json!({"tls": {"routes": t.routes.len()}}),
        None => Value::Null,
    };
    json!({
        "metadata": meta(&p.metadata),
        "protocol": protocol,
        "rate_limit": p.weft_rate_limit.map(|l| json!({"requests_per_second": l.requests_per_second})),
        "route_circuit_breakers": p.weft_route_accruals.iter().map(|r| json!({
            "route": meta(&r.route),
            "failure_accrual": accrual(&r.accrual),
        })).collect::<Vec<_>>(),
    })
}
