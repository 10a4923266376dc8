//! The policy tools: `weft authz WORKLOAD` (what applies to each of its
//! ports), `weft policy explain` (why a client is admitted or refused) and
//! `weft diagnostics policy WORKLOAD:PORT` (what the controller streams).
//!
//! All three ask the running destination service for the port's policy
//! with `GetPort`, exactly as a proxy does, and the first two evaluate it
//! with `weft-policy`, the code the proxy enforces with: an explanation
//! says what a proxy would do with the policy it is served now.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use serde::Serialize;
use serde_json::json;

use crate::diagnostics::{ControlArgs, first};
use crate::mesh::MeshPod;
use crate::output::{OutputArgs, Table};
use crate::target::{Kind, NamespaceArgs, Target};
use weft_policy::explain::{Explanation, Verdict};
use weft_policy::{Client, PortPolicy};

#[derive(Args)]
pub struct AuthzArgs {
    /// The workload: `web`, `deploy/web`, `demo/web` or one pod, `po/web-0`.
    workload: String,
    #[command(flatten)]
    namespaces: NamespaceArgs,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Why a client may or may not call a workload: the Server, the route,
    /// each authorization tried and the decision, as its proxy would decide
    /// with the policy it is served now.
    Explain(ExplainArgs),
}

#[derive(Args)]
pub struct ExplainArgs {
    /// The client: a workload (`vote-bot`, `po/web-0`), an identity
    /// (`web.demo.serviceaccount.identity.weft.cluster.local`), or an IP
    /// (a pod's IP is that pod over mTLS; any other is a plaintext client).
    #[arg(long)]
    from: String,
    /// The client's address, for an identity (default: the pod with that
    /// identity) or to override a workload's.
    #[arg(long)]
    from_ip: Option<IpAddr>,
    /// The server: `WORKLOAD[:PORT]` (a port number or name; default:
    /// every port of the workload), explained as its proxy enforces; or a
    /// Service (`svc/NAME:PORT`, an authority) or an address outside the
    /// mesh (`IP:PORT`), explained as the client's proxy routes it.
    #[arg(long)]
    to: String,
    /// The request's path (HTTP ports; default `/`).
    #[arg(long)]
    path: Option<String>,
    /// The request's method (default GET).
    #[arg(long)]
    method: Option<String>,
    /// A request header, `name: value` (repeatable), for routes that match headers.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    #[command(flatten)]
    namespaces: NamespaceArgs,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct DiagnoseArgs {
    /// `WORKLOAD:PORT`, as for `weft policy explain --to`; with
    /// `--outbound`, `SERVICE:PORT` (`web-svc:80`, `demo/web-svc:80`, an
    /// authority) or `IP:PORT`.
    target: String,
    /// What a client's proxy is told about the target (OutboundPolicies),
    /// rather than what the workload's own proxy enforces (inbound).
    #[arg(long)]
    outbound: bool,
    #[command(flatten)]
    namespaces: NamespaceArgs,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// The running mesh's pods.
fn pods(control: &ControlArgs) -> anyhow::Result<Vec<MeshPod>> {
    let mut pods = crate::mesh::running_pods(&control.mesh.running()?)?;
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}

/// The first pod of the workload (or the pod) `spec` names: every pod of
/// a Deployment has the same labels and annotations, so the same policy.
fn find_pod<'a>(
    pods: &'a [MeshPod],
    spec: &str,
    namespaces: &NamespaceArgs,
) -> anyhow::Result<&'a MeshPod> {
    let target = Target::parse(spec, None, namespaces).map_err(anyhow::Error::msg)?;
    let found = pods.iter().find(|p| match target.kind {
        Kind::Pod => target.matches(&p.namespace, &p.name),
        _ => target.matches(&p.namespace, &p.workload),
    });
    match found {
        Some(pod) => Ok(pod),
        None => {
            let known: Vec<String> = pods
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.workload))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            bail!(
                "no {} in the mesh (workloads: {})",
                target.describe(),
                known.join(", ")
            )
        }
    }
}

/// `WORKLOAD[:PORT]`: the pod and its ports (the named one, or all).
fn find_ports<'a>(
    pods: &'a [MeshPod],
    spec: &str,
    namespaces: &NamespaceArgs,
) -> anyhow::Result<(&'a MeshPod, Vec<u16>)> {
    let (workload, port) = match spec.rsplit_once(':') {
        Some((w, p)) => (w, Some(p)),
        None => (spec, None),
    };
    let pod = find_pod(pods, workload, namespaces)?;
    let ports = match port {
        None if pod.ports.is_empty() => {
            bail!(
                "{}/{} declares no ports: say WORKLOAD:PORT",
                pod.namespace,
                pod.workload
            )
        }
        None => pod.ports.iter().map(|(_, p)| *p).collect(),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => vec![n],
            _ => vec![
                pod.ports
                    .iter()
                    .find(|(name, _)| name.as_deref() == Some(p))
                    .map(|(_, n)| *n)
                    .with_context(|| {
                        format!("{}/{} has no port named {p:?}", pod.namespace, pod.workload)
                    })?,
            ],
        },
    };
    Ok((pod, ports))
}

/// The policy the controller serves `pod`'s proxy for `port` (its first
/// `WatchPort` message is what `GetPort` answers; a proxy watches).
async fn served(control: &ControlArgs, pod: &MeshPod, port: u16) -> anyhow::Result<api::Server> {
    let mut client = InboundServerPoliciesClient::new(control.channel().await?);
    let spec = api::PortSpec {
        workload: format!("{}:{}", pod.namespace, pod.name),
        port: u32::from(port),
    };
    first(client.watch_port(spec).await, "inbound policy", control)
        .await
        .with_context(|| format!("the policy of {}/{}:{port}", pod.namespace, pod.name))
}

fn compiled(server: api::Server, pod: &MeshPod, port: u16) -> anyhow::Result<PortPolicy> {
    PortPolicy::from_proto(server).map_err(|e| {
        anyhow::anyhow!(
            "the controller's policy for {}/{}:{port} is unusable: {e}",
            pod.namespace,
            pod.name
        )
    })
}

fn reference(r: &weft_policy::Ref) -> String {
    if &*r.kind == "default" {
        format!("default:{}", r.name)
    } else {
        format!("{}/{}", r.kind, r.name)
    }
}

#[derive(Serialize)]
struct PortRow {
    port: u16,
    server: String,
    protocol: String,
    route: String,
    authorization: String,
    requires: String,
    rate_limit: Option<String>,
}

pub async fn authz(args: AuthzArgs) -> anyhow::Result<()> {
    let pods = pods(&args.control)?;
    let (pod, ports) = find_ports(&pods, &args.workload, &args.namespaces)?;
    let mut rows = Vec::new();
    for port in ports {
        let policy = compiled(served(&args.control, pod, port).await?, pod, port)?;
        let row = |route: &str, authz: Option<&weft_policy::Authz>| PortRow {
            port,
            server: reference(&policy.server),
            protocol: policy.protocol.to_string(),
            route: route.to_string(),
            authorization: authz.map_or("-".into(), |a| reference(&a.reference)),
            requires: authz.map_or("nothing admits a client".into(), |a| a.requirement()),
            rate_limit: policy
                .rate_limit
                .as_ref()
                .map(|l| l.reference.name.to_string()),
        };
        let server_level = || {
            if policy.authorizations.is_empty() {
                let mut none = row("*", None);
                if policy.routes.iter().any(|r| !r.authorizations.is_empty()) {
                    none.requires = "no server-wide authorization: routes decide".into();
                }
                vec![none]
            } else {
                policy
                    .authorizations
                    .iter()
                    .map(|a| row("*", Some(a)))
                    .collect()
            }
        };
        rows.extend(server_level());
        for route in &policy.routes {
            let name = reference(&route.reference);
            rows.extend(route.authorizations.iter().map(|a| row(&name, Some(a))));
            if route.authorizations.is_empty() && &*route.reference.kind != "default" {
                rows.push(PortRow {
                    authorization: "(the server's)".into(),
                    requires: String::new(),
                    ..row(&name, None)
                });
            }
        }
    }
    let table_rows = rows
        .iter()
        .map(|r| {
            vec![
                r.port.to_string(),
                r.server.clone(),
                r.protocol.clone(),
                r.route.clone(),
                r.authorization.clone(),
                r.rate_limit.clone().unwrap_or_else(|| "-".into()),
                r.requires.clone(),
            ]
        })
        .collect();
    let table = Table::new(&[
        "PORT",
        "SERVER",
        "PROTOCOL",
        "ROUTE",
        "AUTHORIZATION",
        "RATE LIMIT",
        "REQUIRES",
    ])
    .rows(table_rows);
    args.output.emit(&rows, table)
}

/// Whether `--to` names what a client's proxy routes (a Service, an
/// authority, or an address that is no pod's) rather than a workload.
fn is_outbound(to: &str, pods: &[MeshPod]) -> bool {
    if let Ok(addr) = to.parse::<std::net::SocketAddr>() {
        return !pods.iter().any(|p| p.ip == addr.ip());
    }
    to.starts_with("svc/") || to.contains(".svc.")
}

/// The client's proxy's side of a request: the target's outbound policy,
/// the route the request takes among the candidates, the rule's filters,
/// backends and weights, timeouts and retries; for egress, whether it may
/// leave. Decided with `weft_policy::outbound`, the proxy's own code.
async fn explain_outbound(args: &ExplainArgs, from: &From) -> anyhow::Result<()> {
    use weft_policy::outbound::{ClientPolicy, Filter};
    let mut spec = crate::traffic::traffic_spec(&args.to, &args.namespaces, &args.control)?;
    // The client's namespace decides which EgressNetworks apply to it.
    if from.identity.is_some() && from.describe.contains('/') {
        spec.source_workload = from.describe.replacen('/', ":", 1);
    }
    let authority = match spec.target.as_ref() {
        Some(linkerd2_proxy_api::outbound::traffic_spec::Target::Authority(a)) => a.clone(),
        _ => args.to.clone(),
    };
    let answer = crate::traffic::served(&args.control, spec).await?;
    let policy = ClientPolicy::<(), ()>::from_wire(answer, |_| ())
        .map_err(|e| anyhow::anyhow!("the controller's answer cannot be used: {e}"))?;
    let mut req = request(args)?;
    if let Ok(host) = http::HeaderValue::try_from(authority.as_str()) {
        req.headers_mut().entry(http::header::HOST).or_insert(host);
    }
    let http2 = policy.protocol == weft_policy::outbound::Protocol::Grpc;
    let routed = policy.route(&req, http2);
    let taken = routed.as_ref().map(|r| r.route.meta.to_string());
    let candidates: Vec<serde_json::Value> = policy
        .candidates(&req, http2)
        .iter()
        .map(|(route, matches)| {
            json!({
                "route": route.meta.to_string(),
                "matches": matches,
                "taken": taken.as_deref() == Some(route.meta.to_string().as_str()),
            })
        })
        .collect();
    let filter_text = |f: &Filter| match f {
        Filter::RequestHeaders(_) => "request headers changed".to_string(),
        Filter::ResponseHeaders(_) => "response headers changed".to_string(),
        Filter::Redirect(r) => format!("redirected ({})", r.status),
        Filter::Fail {
            status,
            grpc,
            message,
            numerator,
            denominator,
        } => {
            let share = if numerator >= denominator {
                String::new()
            } else {
                format!(" for {numerator} in {denominator}")
            };
            match grpc {
                Some(code) => format!("refused with grpc-status {code}{share}: {message}"),
                None => format!("refused with {}{share}: {message}", status.as_u16()),
            }
        }
    };
    let decision = routed.as_ref().map(|r| {
        let total: u64 = r.rule.backends.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        json!({
            "route": r.route.meta.to_string(),
            "filters": r.rule.filters.iter().map(filter_text).collect::<Vec<_>>(),
            "backends": r.rule.backends.backends.iter().map(|(b, w)| json!({
                "backend": b.meta.to_string(),
                "weight": w,
                "percent": (total > 0).then(|| (1000.0 * f64::from(*w) / total as f64).round() / 10.0),
                "filters": b.filters.iter().map(filter_text).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "timeouts": {
                "request": r.rule.timeouts.request.map(|d| format!("{d:?}")),
                "response": r.rule.timeouts.response.map(|d| format!("{d:?}")),
            },
            "retry": r.rule.retry.as_ref().map(|retry| json!({
                "max_retries": retry.max_retries,
                "statuses": retry.statuses.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect::<Vec<_>>(),
                "grpc_statuses": retry.grpc_codes,
                "timeout": retry.timeout.map(|d| format!("{d:?}")),
            })),
        })
    });
    let data = json!({
        "from": {"client": from.describe, "ip": from.ip.to_string(), "identity": from.identity},
        "to": args.to,
        "parent": policy.parent.to_string(),
        "protocol": format!("{:?}", policy.protocol),
        "rate_limit": policy.rate_limit,
        "routes": candidates,
        "decision": decision,
    });
    if args.output.data(&data)? {
        return Ok(());
    }
    outln!("{} from {} (the client's proxy)", args.to, from.describe);
    outln!("  request  {} {}", req.method(), req.uri());
    outln!("  policy   {} ({:?})", policy.parent, policy.protocol);
    if let Some(rps) = policy.rate_limit {
        outln!("  limit    at most {rps} requests a second from this proxy (past it: 429)");
    }
    for c in &candidates {
        let mark = if c["taken"] == true {
            "→ taken"
        } else if c["matches"] == true {
            "  matches (lower precedence)"
        } else {
            "  no match"
        };
        outln!(
            "  route    {} {mark}",
            c["route"].as_str().unwrap_or_default()
        );
    }
    let Some(d) = decision else {
        outln!("  → 404 from the proxy: no route matches (l5d-proxy-error says so)\n");
        return Ok(());
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for f in strings(&d["filters"]) {
        outln!("  filter   {f}");
    }
    for b in d["backends"].as_array().into_iter().flatten() {
        let percent = b["percent"]
            .as_f64()
            .map_or("-".to_string(), |p| format!("{p}%"));
        outln!(
            "  backend  {} weight {} ({percent})",
            b["backend"].as_str().unwrap_or_default(),
            b["weight"]
        );
        for f in strings(&b["filters"]) {
            outln!("           {f}");
        }
    }
    if let Some(t) = d["timeouts"]["request"].as_str() {
        outln!("  timeout  the whole request: {t}");
    }
    if let Some(t) = d["timeouts"]["response"].as_str() {
        outln!("  timeout  each attempt: {t}");
    }
    if let Some(r) = d["retry"].as_object() {
        outln!(
            "  retry    up to {} on {}{}",
            r["max_retries"],
            [
                strings(&r["statuses"]),
                r["grpc_statuses"]
                    .as_array()
                    .map(|c| c.iter().map(|c| format!("grpc-status {c}")).collect())
                    .unwrap_or_default()
            ]
            .concat()
            .join(", "),
            r["timeout"]
                .as_str()
                .map(|t| format!(", {t} each"))
                .unwrap_or_default()
        );
    }
    outln!();
    Ok(())
}

/// Who the client is.
struct From {
    describe: String,
    ip: IpAddr,
    identity: Option<String>,
}

fn resolve_from(args: &ExplainArgs, pods: &[MeshPod]) -> anyhow::Result<From> {
    let meshed = |p: &MeshPod, ip: IpAddr| From {
        describe: format!("{}/{}", p.namespace, p.name),
        ip,
        identity: p.identity.clone(),
    };
    if let Ok(ip) = args.from.parse::<IpAddr>() {
        return Ok(match pods.iter().find(|p| p.ip == ip) {
            Some(p) => meshed(p, ip),
            None => From {
                describe: format!("{ip} (plaintext, outside the mesh)"),
                ip,
                identity: None,
            },
        });
    }
    if args.from.contains('.') {
        let pod = pods
            .iter()
            .find(|p| p.identity.as_deref() == Some(&args.from));
        let ip = args.from_ip.or(pod.map(|p| p.ip)).with_context(|| {
            format!(
                "no pod proves {:?}: say where it calls from with --from-ip",
                args.from
            )
        })?;
        return Ok(From {
            describe: args.from.clone(),
            ip,
            identity: Some(args.from.clone()),
        });
    }
    let pod = find_pod(pods, &args.from, &args.namespaces)?;
    Ok(meshed(pod, args.from_ip.unwrap_or(pod.ip)))
}

fn request(args: &ExplainArgs) -> anyhow::Result<http::Request<()>> {
    let mut req = http::Request::builder()
        .method(args.method.as_deref().unwrap_or("GET"))
        .uri(args.path.as_deref().unwrap_or("/"));
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?}: say name: value"))?;
        req = req.header(name.trim(), value.trim());
    }
    req.body(())
        .map_err(|e| anyhow::anyhow!("the request (--method, --path, --header): {e}"))
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Allowed {
            by,
            audit: true,
            ..
        } => format!(
            "ALLOWED by {} (audit: counted and logged as what deny would refuse)",
            reference(by)
        ),
        Verdict::Allowed {
            by,
            rate_limit: Some(limit),
            ..
        } => format!(
            "ALLOWED by {}; rate limit {} applies (over it: 429, gRPC RESOURCE_EXHAUSTED)",
            reference(by),
            limit.name
        ),
        Verdict::Allowed { by, .. } => format!("ALLOWED by {}", reference(by)),
        Verdict::Unauthorized => {
            "DENIED: no authorization admits the client (HTTP 403, gRPC PERMISSION_DENIED, TCP closed)"
                .into()
        }
        Verdict::RouteNotFound => "DENIED: no route matches the request (HTTP 404)".into(),
    }
}

fn explanation_json(port: u16, e: &Explanation) -> serde_json::Value {
    let decision = match &e.verdict {
        Verdict::Allowed { .. } => "allowed",
        Verdict::Unauthorized => "unauthorized",
        Verdict::RouteNotFound => "route_not_found",
    };
    let (by, audit, rate_limit) = match &e.verdict {
        Verdict::Allowed {
            by,
            audit,
            rate_limit,
        } => (
            Some(reference(by)),
            *audit,
            rate_limit.as_ref().map(|l| l.name.to_string()),
        ),
        _ => (None, false, None),
    };
    json!({
        "port": port,
        "server": reference(&e.server),
        "protocol": e.protocol.to_string(),
        "routes": e.routes.iter().map(|(r, m)| json!({"route": reference(r), "matches": m})).collect::<Vec<_>>(),
        "route": e.route.as_ref().map(reference),
        "considered": e.considered.iter().map(|c| json!({
            "scope": c.scope,
            "authorization": reference(&c.authz),
            "requires": c.requires,
            "admits": c.refusal.is_none(),
            "why_not": c.refusal.as_ref().map(ToString::to_string),
        })).collect::<Vec<_>>(),
        "decision": decision,
        "allowed_by": by,
        "audit": audit,
        "rate_limit": rate_limit,
        "reason": verdict_text(&e.verdict),
    })
}

pub async fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let pods = pods(&args.control)?;
    let from = resolve_from(&args, &pods)?;
    if is_outbound(&args.to, &pods) {
        return explain_outbound(&args, &from).await;
    }
    let (to, ports) = find_ports(&pods, &args.to, &args.namespaces)?;
    let req = request(&args)?;
    let client = Client {
        ip: from.ip,
        tls: from.identity.is_some(),
        identity: from.identity.as_deref(),
    };
    let mut results = Vec::new();
    for port in ports {
        let policy = compiled(served(&args.control, to, port).await?, to, port)?;
        let http = !policy.protocol.is_opaque();
        let e = if http {
            weft_policy::explain::request(&policy, &client, &req)
        } else {
            weft_policy::explain::connection(&policy, &client)
        };
        results.push((port, http, e));
    }
    let data: Vec<serde_json::Value> = results
        .iter()
        .map(|(port, _, e)| explanation_json(*port, e))
        .collect();
    let data = json!({
        "from": {"client": from.describe, "ip": from.ip.to_string(), "identity": from.identity},
        "to": format!("{}/{}", to.namespace, to.name),
        "ports": data,
    });
    if args.output.data(&data)? {
        return Ok(());
    }
    let who = match &from.identity {
        Some(id) => format!("{} at {}, over mTLS as {id}", from.describe, from.ip),
        None => format!("{} at {}, plaintext (no identity)", from.describe, from.ip),
    };
    for (port, http, e) in &results {
        outln!("{}/{}:{port} from {who}", to.namespace, to.name);
        if *http {
            outln!("  request  {} {}", req.method(), req.uri());
        } else {
            outln!("  connection (opaque: authorized once, by the server)");
        }
        outln!("  server   {} ({})", reference(&e.server), e.protocol);
        if &*e.server.kind == "default" {
            outln!(
                "           no Server selects this port: the default policy {} applies",
                e.server.name
            );
        }
        for (route, matches) in &e.routes {
            let mark = if e.route.as_ref() == Some(route) {
                "→ taken"
            } else if *matches {
                "  matches (lower precedence)"
            } else {
                "  no match"
            };
            outln!("  route    {} {mark}", reference(route));
        }
        for c in &e.considered {
            match &c.refusal {
                None => outln!(
                    "  ✔ {} authorization {}: {}",
                    c.scope,
                    reference(&c.authz),
                    c.requires
                ),
                Some(why) => outln!(
                    "  ✖ {} authorization {}: {} — {why}",
                    c.scope,
                    reference(&c.authz),
                    c.requires
                ),
            }
        }
        if e.considered.is_empty() && e.verdict == Verdict::Unauthorized {
            outln!("  (no authorization applies to this port)");
        }
        outln!("  {}\n", verdict_text(&e.verdict));
    }
    Ok(())
}

/// The controller's answer, field by field, as a proxy receives it.
pub async fn diagnose(args: DiagnoseArgs) -> anyhow::Result<()> {
    if args.outbound {
        let spec = crate::traffic::traffic_spec(&args.target, &args.namespaces, &args.control)?;
        let data = crate::traffic::policy_json(&crate::traffic::served(&args.control, spec).await?);
        if !args.output.data(&data)? {
            outln!(
                "{}",
                serde_yaml_ng::to_string(&data).context("printing the policy")?
            );
        }
        return Ok(());
    }
    let pods = pods(&args.control)?;
    let (pod, ports) = find_ports(&pods, &args.target, &args.namespaces)?;
    let [port] = ports[..] else {
        bail!("say one port: {}:PORT", args.target);
    };
    let server = served(&args.control, pod, port).await?;
    let data = server_json(&server);
    if args.output.data(&data)? {
        return Ok(());
    }
    outln!(
        "{}",
        serde_yaml_ng::to_string(&data).context("printing the policy")?
    );
    Ok(())
}

fn networks(nets: &[api::Network]) -> Vec<serde_json::Value> {
    let net = |n: &linkerd2_proxy_api::net::IpNetwork| {
        let ip =
            n.ip.and_then(|ip| IpAddr::try_from(ip).ok())
                .map_or_else(|| "?".into(), |ip| ip.to_string());
        format!("{ip}/{}", n.prefix_len)
    };
    nets.iter()
        .map(|n| {
            json!({
                "net": n.net.as_ref().map(net),
                "except": n.except.iter().map(net).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn metadata(m: &Option<linkerd2_proxy_api::meta::Metadata>) -> serde_json::Value {
    use linkerd2_proxy_api::meta::metadata::Kind;
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(Kind::Default(name)) => json!({"default": name}),
        Some(Kind::Resource(r)) => json!({
            "group": r.group, "kind": r.kind, "name": r.name,
            "namespace": r.namespace, "section": r.section, "port": r.port,
        }),
        None => serde_json::Value::Null,
    }
}

fn authz_json(a: &api::Authz) -> serde_json::Value {
    use api::authn::Permit;
    use api::authn::permit_mesh_tls::Clients;
    let authentication = match a.authentication.as_ref().and_then(|a| a.permit.as_ref()) {
        Some(Permit::Unauthenticated(_)) => json!("unauthenticated"),
        Some(Permit::MeshTls(m)) => match &m.clients {
            Some(Clients::Unauthenticated(_)) => json!({"meshTLS": "any"}),
            Some(Clients::Identities(ids)) => json!({"meshTLS": {
                "identities": ids.identities.iter().map(|i| &i.name).collect::<Vec<_>>(),
                "suffixes": ids.suffixes.iter().map(|s| s.parts.join(".")).collect::<Vec<_>>(),
            }}),
            None => serde_json::Value::Null,
        },
        None => serde_json::Value::Null,
    };
    json!({
        "metadata": metadata(&a.metadata),
        "labels": a.labels,
        "networks": networks(&a.networks),
        "authentication": authentication,
    })
}

fn route_json(r: &api::HttpRoute) -> serde_json::Value {
    use linkerd2_proxy_api::http_route as hr;
    let matches: Vec<serde_json::Value> = r
        .rules
        .iter()
        .flat_map(|rule| &rule.matches)
        .map(|m| {
            let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(hr::path_match::Kind::Exact(p)) => json!({"exact": p}),
                Some(hr::path_match::Kind::Prefix(p)) => json!({"prefix": p}),
                Some(hr::path_match::Kind::Regex(p)) => json!({"regex": p}),
                None => serde_json::Value::Null,
            };
            json!({
                "path": path,
                "method": m.method.as_ref().map(|m| format!("{m:?}")),
                "headers": m.headers.iter().map(|h| &h.name).collect::<Vec<_>>(),
                "query_params": m.query_params.iter().map(|q| &q.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "metadata": metadata(&r.metadata),
        "matches": matches,
        "authorizations": r.authorizations.iter().map(authz_json).collect::<Vec<_>>(),
    })
}

fn server_json(s: &api::Server) -> serde_json::Value {
    use api::proxy_protocol::Kind;
    let rate_limit = |l: &Option<api::HttpLocalRateLimit>| {
        l.as_ref().map(|l| {
            json!({
                "metadata": metadata(&l.metadata),
                "total_rps": l.total.as_ref().map(|t| t.requests_per_second),
                "identity_rps": l.identity.as_ref().map(|t| t.requests_per_second),
                "overrides": l.overrides.iter().map(|o| json!({
                    "rps": o.limit.as_ref().map(|l| l.requests_per_second),
                    "identities": o.clients.iter().flat_map(|c| &c.identities).map(|i| &i.name).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
    };
    let routes = |rs: &[api::HttpRoute]| rs.iter().map(route_json).collect::<Vec<_>>();
    let protocol = match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => json!({"detect": {
            "timeout": d.timeout.and_then(|t| std::time::Duration::try_from(t).ok()).map(|t| format!("{t:?}")),
            "http_routes": routes(&d.http_routes),
            "http_local_rate_limit": rate_limit(&d.http_local_rate_limit),
        }}),
        Some(Kind::Http1(h)) => json!({"http1": {
            "routes": routes(&h.routes), "local_rate_limit": rate_limit(&h.local_rate_limit)}}),
        Some(Kind::Http2(h)) => json!({"http2": {
            "routes": routes(&h.routes), "local_rate_limit": rate_limit(&h.local_rate_limit)}}),
        Some(Kind::Grpc(g)) => json!({"grpc": {"routes": g.routes.len()}}),
        Some(Kind::Opaque(_)) => json!("opaque"),
        Some(Kind::Tls(_)) => json!("tls"),
        None => serde_json::Value::Null,
    };
    json!({
        "labels": s.labels,
        "protocol": protocol,
        "authorizations": s.authorizations.iter().map(authz_json).collect::<Vec<_>>(),
        "server_ips": s.server_ips.len(),
    })
}
