//! `weft check`: is the mesh healthy? Each check prints a line with a tick, a
//! warning sign or a cross, and a hint when something needs doing.
//!
//! With `--ca-dir` it checks a CA's files: trust anchors and issuer
//! (validity, remaining lifetime, chain, key types). Without it, it checks
//! the running local mesh: its CA, both control-plane services, and every
//! proxy (ready, with a current certificate, talking to the control plane).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::output::OutputArgs;
use weft_identity::ca::{self, CertAndKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// Certificates expiring sooner than this get a warning.
const WARN_BEFORE: Duration = Duration::from_secs(60 * 86_400);

#[derive(Args)]
pub struct CheckArgs {
    /// Check only this CA directory (as written by `weft identity ca
    /// create`) instead of the running mesh.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(serde::Serialize)]
struct Check {
    check: String,
    status: Status,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

impl Check {
    fn new(check: &str, status: Status, message: String, hint: Option<&str>) -> Self {
        Check {
            check: check.into(),
            status,
            message,
            hint: hint.map(String::from),
        }
    }
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86_400
}

/// Validity, CA flag and key type of one certificate, as checks.
fn certificate_checks(name: &str, der: &[u8], now: SystemTime, renew_hint: &str) -> Vec<Check> {
    let cert = match X509Certificate::from_der(der) {
        Ok((_, c)) => c,
        Err(e) => {
            return vec![Check::new(
                name,
                Status::Fail,
                format!("not a valid certificate: {e}"),
                None,
            )];
        }
    };
    let mut checks = Vec::new();
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    let subject = cert.subject().to_string();
    checks.push(match not_after.duration_since(now) {
        Err(_) => Check::new(
            name,
            Status::Fail,
            format!("{subject} expired on {}", cert.validity().not_after),
            Some(renew_hint),
        ),
        Ok(left) if !cert.validity().is_valid() => Check::new(
            name,
            Status::Fail,
            format!(
                "{subject} is not valid yet ({} days left after)",
                days(left)
            ),
            None,
        ),
        Ok(left) if left < WARN_BEFORE => Check::new(
            name,
            Status::Warn,
            format!(
                "{subject} expires in {} days ({})",
                days(left),
                cert.validity().not_after
            ),
            Some(renew_hint),
        ),
        Ok(left) => Check::new(
            name,
            Status::Ok,
            format!(
                "{subject} is valid for {} more days (until {})",
                days(left),
                cert.validity().not_after
            ),
            None,
        ),
    });
    if !cert.is_ca() {
        checks.push(Check::new(
            name,
            Status::Fail,
            format!("{subject} is not a CA certificate"),
            None,
        ));
    }
    let alg = &cert.public_key().algorithm;
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        checks.push(Check::new(
            name,
            Status::Fail,
            format!("{subject} does not have an ECDSA P-256 key"),
            None,
        ));
    }
    checks
}

fn ca_checks(dir: &Path, now: SystemTime) -> Vec<Check> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let create_hint = format!(
        "create one with `weft identity ca create --dir {}`",
        dir.display()
    );
    let mut checks = Vec::new();

    let anchors_pem = match read("ca.crt") {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("cannot read {}: {e}", dir.join("ca.crt").display());
            return vec![Check::new(
                "trust anchors",
                Status::Fail,
                msg,
                Some(&create_hint),
            )];
        }
    };
    match ca::pem_certificates(&anchors_pem, "trust anchors") {
        Ok(ders) => {
            for der in &ders {
                checks.extend(certificate_checks(
                    "trust anchor",
                    der,
                    now,
                    "add a new root to ca.crt (a bundle of old and new), re-issue, then remove the old one",
                ));
            }
        }
        Err(e) => {
            return vec![Check::new(
                "trust anchors",
                Status::Fail,
                e.to_string(),
                Some(&create_hint),
            )];
        }
    }

    let issuer = match (read("issuer.crt"), read("issuer.key")) {
        (Ok(cert_pem), Ok(key_pem)) => CertAndKey { cert_pem, key_pem },
        (Err(e), _) | (_, Err(e)) => {
            checks.push(Check::new(
                "issuer",
                Status::Fail,
                format!("cannot read the issuer: {e}"),
                Some(&create_hint),
            ));
            return checks;
        }
    };
    let rotate_hint = format!(
        "rotate it with `weft identity ca rotate-issuer --dir {}`",
        dir.display()
    );
    match ca::pem_certificates(&issuer.cert_pem, "issuer certificate") {
        Ok(ders) => checks.extend(certificate_checks("issuer", &ders[0], now, &rotate_hint)),
        Err(e) => checks.push(Check::new(
            "issuer",
            Status::Fail,
            e.to_string(),
            Some(&rotate_hint),
        )),
    }
    // Chain, key pairing and loadability, exactly as the identity service checks them.
    checks.push(
        match ca::Ca::new(&issuer, &anchors_pem, Duration::from_secs(3600)) {
            Ok(_) => Check::new(
                "issuer chain",
                Status::Ok,
                "the issuer is signed by a trust anchor and its key loads".into(),
                None,
            ),
            Err(e) => Check::new(
                "issuer chain",
                Status::Fail,
                e.to_string(),
                Some(&rotate_hint),
            ),
        },
    );
    checks.push(
        match weft_control::secure_fs::read_key(&dir.join("token.key"))
            .map_err(|e| format!("{e:#}"))
            .and_then(|k| weft_identity::token::TokenKeys::parse(&k).map_err(|e| e.to_string()))
        {
            Ok(keys) => Check::new(
                "token key",
                Status::Ok,
                format!(
                    "workload tokens can be minted and checked ({} key(s), signing with {})",
                    keys.keys().len(),
                    keys.keys()[0].id()
                ),
                None,
            ),
            Err(e) => Check::new("token key", Status::Fail, e, Some(&create_hint)),
        },
    );
    checks
}

/// The control plane of a mesh started by `weft up` (its admin servers).
fn control_plane_checks(control_ip: std::net::Ipv4Addr, logs: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, port) in [("identity service", 9990), ("destination service", 9996)] {
        let admin = std::net::SocketAddr::from((control_ip, port));
        let log = logs.join(format!(
            "control-{}.log",
            name.split(' ').next().unwrap_or(name)
        ));
        let hint = format!("see {}", log.display());
        checks.push(match crate::mesh::get(admin, "/ready") {
            Ok((200, _)) => Check::new(name, Status::Ok, format!("ready ({admin})"), None),
            Ok((code, body)) => Check::new(
                name,
                Status::Fail,
                format!("not ready ({code}): {}", body.trim()),
                Some(&hint),
            ),
            Err(e) => Check::new(name, Status::Fail, format!("{e:#}"), Some(&hint)),
        });
    }
    if let Ok((200, text)) =
        crate::mesh::get(std::net::SocketAddr::from((control_ip, 9996)), "/metrics")
    {
        let problems: f64 = weft_control::metrics_text::parse(&text)
            .iter()
            .filter(|s| s.name == "store_manifest_problems")
            .map(|s| s.value)
            .sum();
        if problems > 0.0 {
            checks.push(Check::new(
                "cluster state",
                Status::Warn,
                format!("{problems} manifest problem(s)"),
                Some("see the destination service's log"),
            ));
        }
    }
    checks
}

/// The manifests `weft up` runs: red while any has a problem.
fn manifest_checks(state: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let problems_file = state.join(crate::up::PROBLEMS_FILE);
    if let Ok(text) = std::fs::read_to_string(&problems_file)
        && let Some(first) = text.lines().next()
    {
        checks.push(Check::new(
            "manifests",
            Status::Fail,
            format!(
                "{} problem(s); the last good version keeps running. First: {first}",
                text.lines().count()
            ),
            Some(&format!("fix them; all are in {}", problems_file.display())),
        ));
    }
    checks
}

/// The policy the mesh serves, linted with the code its proxies enforce
/// with: Servers that select no workload port, AuthorizationPolicies that
/// apply nowhere or admit no workload of the mesh, and ports left on the
/// `deny` default that are refusing traffic. Dangling references are
/// manifest problems (above).
fn policy_checks(state: &Path, pods: &[crate::mesh::MeshPod]) -> Vec<Check> {
    use std::collections::BTreeSet;
    let snapshot = match weft_control::store::load(&state.join("cluster")) {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::new(
                "policy",
                Status::Fail,
                format!("cannot read the cluster state: {e:#}"),
                None,
            )];
        }
    };
    let config = weft_control::policy::PolicyConfig::default();
    let mut selected: BTreeSet<weft_api::Key> = BTreeSet::new();
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut admits_someone: BTreeSet<String> = BTreeSet::new();
    let clients: Vec<weft_policy::Client> = snapshot
        .workloads
        .values()
        .filter_map(|w| {
            Some(weft_policy::Client {
                ip: w.spec.workload_ips.first()?.ip,
                tls: true,
                identity: Some(w.spec.mesh_tls.as_ref()?.identity.as_str()),
            })
        })
        .collect();
    let numbered: Vec<u16> = snapshot
        .servers
        .values()
        .filter_map(|s| match s.spec.port {
            weft_api::ServerPort::Number(n) => Some(n),
            weft_api::ServerPort::Name(_) => None,
        })
        .collect();
    for (key, w) in &snapshot.workloads {
        let ports: BTreeSet<u16> = w
            .spec
            .ports
            .iter()
            .map(|p| p.port)
            .chain(numbered.iter().copied())
            .collect();
        for port in ports {
            let Some(served) = weft_control::policy::inbound::server(&snapshot, &config, key, port)
            else {
                continue;
            };
            let Ok(policy) = weft_policy::PortPolicy::from_proto(served) else {
                continue;
            };
            if &*policy.server.kind == "server" {
                selected.insert(weft_api::Key {
                    namespace: key.namespace.clone(),
                    name: policy.server.name.to_string(),
                });
            }
            let authorizations = policy
                .authorizations
                .iter()
                .chain(policy.routes.iter().flat_map(|r| &r.authorizations))
                .filter(|a| &*a.reference.kind == "authorizationpolicy");
            for a in authorizations {
                let name = format!("{}/{}", key.namespace, a.reference.name);
                if !a.names_identities() || clients.iter().any(|c| a.permits(c)) {
                    admits_someone.insert(name.clone());
                }
                applied.insert(name);
            }
        }
    }
    let mut checks = Vec::new();
    let unselected: Vec<String> = snapshot
        .servers
        .keys()
        .filter(|k| !selected.contains(*k))
        .map(ToString::to_string)
        .collect();
    if !unselected.is_empty() {
        checks.push(Check::new(
            "policy servers",
            Status::Warn,
            format!("select no workload port: {}", unselected.join(", ")),
            Some("check each one's podSelector and port against the workloads' labels and ports"),
        ));
    }
    let mut never = Vec::new();
    for key in snapshot.authorization_policies.keys() {
        let name = key.to_string();
        if !applied.contains(&name) {
            never.push(format!("{name} (applies to no workload port)"));
        } else if !admits_someone.contains(&name) {
            never.push(format!(
                "{name} (no workload of the mesh proves an identity it admits)"
            ));
        }
    }
    if !never.is_empty() {
        checks.push(Check::new(
            "policy authorizations",
            Status::Warn,
            format!("can never match: {}", never.join(", ")),
            Some("weft policy explain --from CLIENT --to WORKLOAD shows each step"),
        ));
    }
    for pod in pods {
        let metrics = crate::mesh::get(pod.admin, "/metrics")
            .map(|(_, text)| weft_control::metrics_text::parse(&text))
            .unwrap_or_default();
        let mut refused: std::collections::BTreeMap<String, f64> = Default::default();
        for s in metrics.iter().filter(|s| {
            matches!(
                s.name.as_str(),
                "inbound_http_authz_deny_total" | "inbound_tcp_authz_deny_total"
            ) && s.label("srv_kind") == Some("default")
                && s.label("srv_name") == Some("deny")
        }) {
            let port = s
                .label("target_addr")
                .and_then(|a| a.rsplit_once(':'))
                .map_or("?", |(_, p)| p);
            *refused.entry(port.to_string()).or_default() += s.value;
        }
        for (port, n) in refused {
            checks.push(Check::new(
                &format!("policy {}/{}:{port}", pod.namespace, pod.name),
                Status::Warn,
                format!("no Server selects this port and its default is deny: {n} refused so far"),
                Some("add a Server and an AuthorizationPolicy for the clients it should take"),
            ));
        }
    }
    if checks.is_empty() {
        checks.push(Check::new(
            "policy",
            Status::Ok,
            format!(
                "{} server(s), {} authorization(s): each selects and admits something",
                snapshot.servers.len(),
                snapshot.authorization_policies.len()
            ),
            None,
        ));
    }
    checks
}

/// One check per proxy: ready, certificate current, talking to the control
/// plane.
fn proxy_checks(pods: &[crate::mesh::MeshPod], logs: &Path, now: SystemTime) -> Vec<Check> {
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    pods.iter()
        .map(|pod| {
            let name = format!("proxy {}/{}", pod.namespace, pod.name);
            let log = logs.join(format!("{}.proxy.log", pod.name));
            let hint = format!("see {}", log.display());
            let ready = crate::mesh::get(pod.admin, "/ready");
            let metrics = crate::mesh::get(pod.admin, "/metrics")
                .map(|(_, text)| weft_control::metrics_text::parse(&text))
                .unwrap_or_default();
            let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
                metrics
                    .iter()
                    .filter(|s| s.name == name)
                    .filter(|s| label.is_none_or(|(k, v)| s.label(k) == Some(v)))
                    .map(|s| s.value)
                    .sum()
            };
            let expires = sum("identity_cert_expiration_timestamp_seconds", None);
            let certified = sum("identity_cert_refresh_total", Some(("result", "ok")));
            let streams = sum("control_streams_active", None);
            let asked = sum("control_request_total", None);
            match ready {
                Err(e) => Check::new(&name, Status::Fail, format!("{e:#}"), Some(&hint)),
                Ok((code, body)) if code != 200 => Check::new(
                    &name,
                    Status::Fail,
                    format!("not ready ({code}): {}", body.trim()),
                    Some(&hint),
                ),
                Ok(_) if certified < 1.0 || expires <= now_s => Check::new(
                    &name,
                    Status::Fail,
                    "no current certificate from the identity service".into(),
                    Some(&hint),
                ),
                Ok(_) if asked > 0.0 && streams < 1.0 => Check::new(
                    &name,
                    Status::Fail,
                    "not connected to the destination service".into(),
                    Some(&hint),
                ),
                Ok(_) => Check::new(
                    &name,
                    Status::Ok,
                    format!(
                        "ready, certificate valid {}h more, {} destination stream(s)",
                        ((expires - now_s) / 3600.0).floor(),
                        streams.max(0.0) as u64
                    ),
                    None,
                ),
            }
        })
        .collect()
}

pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let now = SystemTime::now();
    let checks = match &args.ca_dir {
        Some(dir) => ca_checks(dir, now),
        None => {
            let state = args.mesh.running()?;
            let pods = crate::mesh::running_pods(&state)?;
            let logs = state.join("logs");
            let mut checks = control_plane_checks(crate::mesh::control_ip(&state), &logs);
            checks.extend(manifest_checks(&state));
            checks.extend(ca_checks(&state.join("ca"), now));
            checks.extend(proxy_checks(&pods, &logs, now));
            checks.extend(policy_checks(&state, &pods));
            checks
        }
    };
    if !args.output.data(&checks)? {
        let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "✔",
                Status::Warn => "‼",
                Status::Fail => "✖",
            };
            outln!("{mark} {:width$}  {}", c.check, c.message);
            if let Some(hint) = &c.hint {
                outln!("  {:width$}  hint: {hint}", "");
            }
        }
    }
    Ok(checks.iter().all(|c| c.status != Status::Fail))
}
