//! `weft diagnostics endpoints|profile AUTHORITY`: what the destination
//! service tells a proxy about a target, exactly as a proxy would ask
//! (`diagnostics policy` is in [`crate::policy`]).

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use serde_json::json;

use crate::output::{Output, OutputArgs, Table, print_table};

#[derive(Subcommand)]
pub enum DiagnosticsCmd {
    /// The endpoints of a service authority (name.ns.svc.cluster.local:port) or an IP:port.
    Endpoints(QueryArgs),
    /// The profile (routes, retries, timeouts, opaqueness) of an authority or IP:port.
    Profile(QueryArgs),
    /// The inbound policy of WORKLOAD:PORT, field by field, as the policy
    /// controller streams it to that workload's proxy.
    Policy(crate::policy::DiagnoseArgs),
    /// What the local mesh (`weft up`) runs from a manifests directory:
    /// services with their cluster IPs, and a pod per replica with its
    /// address, identity and program.
    Plan(PlanArgs),
}

#[derive(Args)]
pub struct PlanArgs {
    /// The manifests directory.
    dir: std::path::PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct QueryArgs {
    /// What a proxy would look up: `web.demo.svc.cluster.local:80` or `198.18.100.1:80`.
    target: String,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Where the destination service is (it serves the inbound policy too),
/// and what verifies it.
#[derive(Args)]
pub struct ControlArgs {
    /// The destination service (default: the running local mesh's, with its
    /// CA).
    #[arg(long, env = "WEFT_DESTINATION_ADDR")]
    destination: Option<String>,
    /// The CA directory: its trust anchors (`ca.crt`) verify the destination
    /// service over TLS (default: the running local mesh's).
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<std::path::PathBuf>,
    /// Ask in plaintext: only for a destination service started without
    /// --identity-dir, on a network you trust.
    #[arg(long, conflicts_with = "ca_dir")]
    plaintext: bool,
    /// The identity the destination service proves over TLS.
    #[arg(long, default_value = weft_control::destination::DESTINATION_SERVICE_NAME)]
    destination_name: weft_identity::Identity,
    #[command(flatten)]
    pub mesh: crate::mesh::MeshArgs,
}

impl ControlArgs {
    /// Where to ask and which trust anchors verify the answer (`None`:
    /// plaintext): as given, or the running mesh's.
    fn service(&self) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
        let ca_dir = |given: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
            match (given, self.plaintext) {
                (_, true) => Ok(None),
                (Some(dir), false) => Ok(Some(dir.clone())),
                (None, false) => anyhow::bail!(
                    "with --destination, say which CA verifies it (--ca-dir DIR), or --plaintext"
                ),
            }
        };
        match &self.destination {
            Some(addr) => Ok((addr.clone(), ca_dir(&self.ca_dir)?)),
            None => {
                let state = self.mesh.running()?;
                let ip = crate::mesh::control_ip(&state);
                let ca = self.ca_dir.clone().unwrap_or_else(|| state.join("ca"));
                Ok((format!("{ip}:8086"), ca_dir(&Some(ca))?))
            }
        }
    }

    /// A channel to the destination service, verified by its identity.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let (addr, ca_dir) = self.service()?;
        let anchors = match &ca_dir {
            Some(dir) => {
                let path = dir.join("ca.crt");
                let pem = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the trust anchors {}", path.display()))?;
                Some(
                    weft_identity::verify::TrustAnchors::from_pem(&pem)
                        .with_context(|| format!("trust anchors in {}", path.display()))?,
                )
            }
            None => None,
        };
        let service = weft_identity::control::ControlAddr {
            addr: addr.clone(),
            identity: anchors.as_ref().map(|_| self.destination_name.clone()),
        };
        weft_identity::control::connect(&service, anchors.as_ref(), ANSWER_TIMEOUT)
            .await
            .with_context(|| format!("cannot reach the destination service at {addr}"))
    }
}

pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

async fn client(args: &QueryArgs) -> anyhow::Result<DestinationClient<tonic::transport::Channel>> {
    Ok(DestinationClient::new(args.control.channel().await?))
}

fn request(target: &str) -> api::GetDestination {
    api::GetDestination {
        scheme: "k8s".into(),
        path: target.into(),
        context_token: String::new(),
    }
}

pub async fn run(cmd: DiagnosticsCmd) -> anyhow::Result<()> {
    match cmd {
        DiagnosticsCmd::Endpoints(args) => endpoints(args).await,
        DiagnosticsCmd::Profile(args) => profile(args).await,
        DiagnosticsCmd::Plan(args) => plan(&args),
        DiagnosticsCmd::Policy(args) => crate::policy::diagnose(args).await,
    }
}

fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let snapshot = weft_control::store::load(&args.dir)?;
    if !snapshot.problems.is_empty() {
        for p in &snapshot.problems {
            eprintln!("{p}");
        }
        anyhow::bail!(
            "{} problem(s) in {}; fix them first",
            snapshot.problems.len(),
            args.dir.display()
        );
    }
    let plan = crate::plan::plan(&snapshot, &Default::default())?;
    if args.output.data(&plan)? {
        return Ok(());
    }
    let services: Vec<Vec<String>> = plan
        .services
        .iter()
        .map(|s| {
            let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
            let names = s.host_names(&s.namespace);
            vec![
                format!("{}/{}", s.namespace, s.name),
                s.cluster_ip.to_string(),
                ports.join(","),
                names.first().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["SERVICE", "CLUSTER-IP", "PORTS", "DNS NAME"], &services);
    outln!();
    let pods: Vec<Vec<String>> = plan
        .pods
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.namespace, p.name),
                p.ip.to_string(),
                p.identity.clone(),
                p.argv.join(" "),
                format!("{}/{}", p.namespace, p.deployment),
                p.ports
                    .iter()
                    .map(|(name, port)| match name {
                        Some(name) => format!("{name}:{port}"),
                        None => port.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    Table::new(&["POD", "IP", "IDENTITY", "COMMAND"])
        .wide(&["DEPLOYMENT", "PORTS"])
        .rows(pods)
        .print(args.output.output == Output::Wide);
    Ok(())
}

/// The first message of a stream: the destination service always sends one.
pub async fn first<T>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    what: &str,
    args: &ControlArgs,
) -> anyhow::Result<T> {
    let failed = |s: tonic::Status| {
        let reason = weft_identity::control::status_reason(&s);
        match s.code() {
            // The connection failed under the call: name the service, and the
            // likely cause when the query was plaintext.
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled => {
                let hint = if args.plaintext {
                    " (if it serves TLS, pass --ca-dir instead of --plaintext)"
                } else {
                    ""
                };
                let addr = args.service().map(|(addr, _)| addr).unwrap_or_default();
                anyhow::anyhow!("cannot reach the destination service at {addr}: {reason}{hint}")
            }
            _ => anyhow::anyhow!("the destination service refused the {what} query: {reason}"),
        }
    };
    let mut stream = stream.map_err(failed)?.into_inner();
    match tokio::time::timeout(ANSWER_TIMEOUT, stream.message()).await {
        Err(_) => anyhow::bail!("no answer from the destination service within {ANSWER_TIMEOUT:?}"),
        Ok(Err(s)) => Err(failed(s)),
        Ok(Ok(None)) => anyhow::bail!("the destination service closed the {what} stream"),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

fn identity(a: &api::WeightedAddr) -> String {
    use api::tls_identity::Strategy;
    match a.tls_identity.as_ref().and_then(|t| t.strategy.as_ref()) {
        Some(Strategy::DnsLikeIdentity(d)) => d.name.clone(),
        Some(Strategy::UriLikeIdentity(u)) => u.uri.clone(),
        None => String::new(),
    }
}

fn hint(a: &api::WeightedAddr) -> String {
    use api::protocol_hint::Protocol;
    let Some(h) = &a.protocol_hint else {
        return String::new();
    };
    let protocol = match h.protocol {
        Some(Protocol::H2(_)) => "h2",
        Some(Protocol::Opaque(_)) => "opaque",
        None => "",
    };
    match &h.opaque_transport {
        Some(t) => format!("{protocol} (transport header to :{})", t.inbound_port),
        None => protocol.into(),
    }
}

fn address(a: &api::WeightedAddr) -> String {
    a.addr
        .and_then(|a| std::net::SocketAddr::try_from(a).ok())
        .map_or_else(|| "?".into(), |a| a.to_string())
}

fn labels(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

async fn endpoints(args: QueryArgs) -> anyhow::Result<()> {
    let mut client = client(&args).await?;
    let update = first(
        client.get(request(&args.target)).await,
        "endpoints",
        &args.control,
    )
    .await?;
    let (exists, mut addrs, set_labels) = match update.update {
        Some(api::update::Update::Add(set)) => (true, set.addrs, set.metric_labels),
        Some(api::update::Update::NoEndpoints(n)) => (n.exists, Vec::new(), Default::default()),
        Some(api::update::Update::Remove(_)) | None => {
            anyhow::bail!(
                "the destination service began with a message other than add or no_endpoints"
            )
        }
    };
    addrs.sort_by_key(address);
    {
        let endpoints: Vec<_> = addrs
            .iter()
            .map(|a| {
                json!({
                    "address": address(a),
                    "identity": identity(a),
                    "weight": a.weight,
                    "protocol_hint": hint(a),
                    "labels": a.metric_labels,
                })
            })
            .collect();
        let out = json!({"target": args.target, "exists": exists, "labels": set_labels, "endpoints": endpoints});
        if args.output.data(&out)? {
            return Ok(());
        }
    }
    if addrs.is_empty() {
        outln!(
            "{}: {}",
            args.target,
            if exists {
                "the service exists but has no ready endpoints"
            } else {
                "not known to the destination service (a proxy forwards it as addressed)"
            }
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = addrs
        .iter()
        .map(|a| {
            vec![
                address(a),
                identity(a),
                a.weight.to_string(),
                hint(a),
                labels(&a.metric_labels),
            ]
        })
        .collect();
    print_table(&["ADDRESS", "IDENTITY", "WEIGHT", "HINT", "LABELS"], &rows);
    Ok(())
}

fn duration(d: &Option<prost_types::Duration>) -> String {
    d.as_ref()
        .and_then(|d| Duration::try_from(*d).ok())
        .map_or_else(|| "-".into(), |d| humantime::format_duration(d).to_string())
}

/// `a and b`, `(a or b)`: nested conditions as text.
fn joined<T>(items: &[T], describe: fn(&T) -> String, any: bool) -> String {
    let parts: Vec<String> = items.iter().map(describe).collect();
    if any {
        format!("({})", parts.join(" or "))
    } else {
        parts.join(" and ")
    }
}

fn request_condition(m: &api::RequestMatch) -> String {
    use api::request_match::Match;
    match &m.r#match {
        Some(Match::Method(method)) => {
            http::Method::try_from(method.clone()).map_or_else(|_| "?".into(), |m| m.to_string())
        }
        Some(Match::Path(p)) => format!("path ~ {}", p.regex),
        Some(Match::All(seq)) => joined(&seq.matches, request_condition, false),
        Some(Match::Any(seq)) => joined(&seq.matches, request_condition, true),
        Some(Match::Not(inner)) => format!("not {}", request_condition(inner)),
        None => "any".into(),
    }
}

fn response_condition(m: &api::ResponseMatch) -> String {
    use api::response_match::Match;
    match &m.r#match {
        Some(Match::Status(r)) => match (r.min, r.max) {
            (0, 0) => "any status".into(),
            (min, 0) => format!("status >= {min}"),
            (0, max) => format!("status <= {max}"),
            (min, max) if min == max => format!("status {min}"),
            (min, max) => format!("status {min}-{max}"),
        },
        Some(Match::All(seq)) => joined(&seq.matches, response_condition, false),
        Some(Match::Any(seq)) => joined(&seq.matches, response_condition, true),
        Some(Match::Not(inner)) => format!("not {}", response_condition(inner)),
        None => "any".into(),
    }
}

async fn profile(args: QueryArgs) -> anyhow::Result<()> {
    let mut client = client(&args).await?;
    let p = first(
        client.get_profile(request(&args.target)).await,
        "profile",
        &args.control,
    )
    .await?;
    let routes: Vec<_> = p
        .routes
        .iter()
        .map(|r| {
            let failures: Vec<_> = r
                .response_classes
                .iter()
                .filter(|c| c.is_failure)
                .filter_map(|c| c.condition.as_ref().map(response_condition))
                .collect();
            (
                r.metrics_labels.get("route").cloned().unwrap_or_default(),
                r.condition
                    .as_ref()
                    .map_or_else(|| "any".into(), request_condition),
                r.is_retryable,
                duration(&r.timeout),
                failures.join("; "),
            )
        })
        .collect();
    let budget = p.retry_budget.as_ref();
    {
        let out = json!({
            "target": args.target,
            "fully_qualified_name": p.fully_qualified_name,
            "opaque_protocol": p.opaque_protocol,
            "endpoint": p.endpoint.as_ref().map(address),
            "retry_budget": budget.map(|b| json!({
                "retry_ratio": b.retry_ratio,
                "min_retries_per_second": b.min_retries_per_second,
                "ttl": duration(&b.ttl),
            })),
            "routes": routes.iter().map(|(name, condition, retryable, timeout, failures)| json!({
                "name": name,
                "condition": condition,
                "retryable": retryable,
                "timeout": timeout,
                "failure_when": failures,
            })).collect::<Vec<_>>(),
        });
        if args.output.data(&out)? {
            return Ok(());
        }
    }
    let name = if p.fully_qualified_name.is_empty() {
        "(not a service)"
    } else {
        p.fully_qualified_name.as_str()
    };
    outln!("service       {name}");
    if let Some(e) = &p.endpoint {
        outln!("endpoint      {} {}", address(e), identity(e));
    }
    outln!("opaque        {}", p.opaque_protocol);
    if let Some(b) = budget {
        outln!(
            "retry budget  {}% extra, at least {}/s, over {}",
            b.retry_ratio * 100.0,
            b.min_retries_per_second,
            duration(&b.ttl)
        );
    }
    if routes.is_empty() {
        outln!("routes        none (every request is one default route)");
        return Ok(());
    }
    outln!();
    let rows: Vec<Vec<String>> = routes
        .into_iter()
        .map(|(name, condition, retryable, timeout, failures)| {
            vec![
                name,
                condition,
                if retryable { "yes" } else { "no" }.into(),
                timeout,
                if failures.is_empty() {
                    "5xx (default)".into()
                } else {
                    failures
                },
            ]
        })
        .collect();
    print_table(
        &["ROUTE", "CONDITION", "RETRY", "TIMEOUT", "FAILURE WHEN"],
        &rows,
    );
    Ok(())
}
