//! The mesh's resources, shaped like their Kubernetes counterparts so the same
//! manifests work with the files store now and the Kubernetes store later:
//! `Service` (core/v1), `ExternalWorkload` (workload.linkerd.io/v1beta1),
//! `ServiceProfile` (linkerd.io/v1alpha2) and `Deployment` (apps/v1, the
//! subset the local mesh runs as processes).
//!
//! [`parse_manifests`] reads a multi-document YAML file. Every problem names
//! the file, the line and what is wrong; one broken document does not hide
//! the others.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Linkerd's annotation listing ports that carry opaque TCP (no detection).
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
/// Weft's annotation on an ExternalWorkload: its proxy's inbound port, where
/// opaque traffic with a transport header goes. Default 4143.
pub const PROXY_INBOUND_PORT_ANNOTATION: &str = "weft.io/proxy-inbound-port";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A resource's identity within its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Metadata {
    pub fn key(&self) -> Key {
        Key {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// A port number, or the name of a workload port; default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExternalWorkload {
    pub metadata: Metadata,
    pub spec: ExternalWorkloadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkloadStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalWorkloadSpec {
    #[serde(default, rename = "meshTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadPort>,
    #[serde(rename = "workloadIPs")]
    pub workload_ips: Vec<WorkloadIp>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTls {
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIp {
    pub ip: IpAddr,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct WorkloadStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl ExternalWorkload {
    /// Ready unless a `Ready` condition says otherwise: hand-written local
    /// manifests have no status, and `weft up` sets one from health checks.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.kind == "Ready"))
            .is_none_or(|c| c.status == "True")
    }

    pub fn proxy_inbound_port(&self) -> u16 {
        self.metadata
            .annotations
            .get(PROXY_INBOUND_PORT_ANNOTATION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(4143)
    }
}

/// A `Deployment` (apps/v1): the part the local mesh (`weft up`) runs, as
/// replicas of one local program, each a "pod" with its own proxy and the
/// identity of its service account. On Kubernetes the same manifest runs
/// the image; locally the container's `command` is run and the image is not
/// used. Pod fields the local mesh has no use for are accepted and ignored,
/// so manifests written for a cluster still load.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Deployment {
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "one_replica")]
    pub replicas: u32,
    pub selector: LabelSelector,
    pub template: PodTemplate,
}

fn one_replica() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
}

/// Replicas one Deployment may ask of the local mesh: each is a network
/// namespace with two processes.
pub const MAX_LOCAL_REPLICAS: u32 = 32;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ServiceProfile {
    pub metadata: Metadata,
    pub spec: ProfileSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub condition: RequestMatchSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_classes: Vec<ResponseClassSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_retryable: bool,
    #[serde(
        default,
        with = "humantime_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<RequestMatchSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<RequestMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<RequestMatchSpec>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseClassSpec {
    pub condition: ResponseMatchSpec,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_failure: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<ResponseMatchSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<ResponseMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<ResponseMatchSpec>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    pub retry_ratio: f32,
    pub min_retries_per_second: u32,
    #[serde(with = "humantime_serde_opt")]
    pub ttl: Option<Duration>,
}

/// Durations written the Kubernetes way: `300ms`, `10s`, `1m30s`.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }
}

/// What every kind has: a name for messages, and metadata.
pub trait Resource: serde::de::DeserializeOwned {
    const KIND: &'static str;
    fn metadata(&self) -> &Metadata;
    /// What types alone cannot check.
    fn check(&self) -> Result<(), String>;
}

macro_rules! resource {
    ($type:ty, $kind:literal, $check:ident) => {
        impl Resource for $type {
            const KIND: &'static str = $kind;
            fn metadata(&self) -> &Metadata {
                &self.metadata
            }
            fn check(&self) -> Result<(), String> {
                $check(self)
            }
        }
    };
}

resource!(Service, "Service", check_service);
resource!(ExternalWorkload, "ExternalWorkload", check_workload);
resource!(ServiceProfile, "ServiceProfile", check_profile);
resource!(Deployment, "Deployment", check_deployment);

/// `r` as a manifest document, with its `apiVersion` and `kind`.
pub fn to_manifest<T: Resource + Serialize>(r: &T) -> Result<String, serde_yaml_ng::Error> {
    let mut value = serde_yaml_ng::to_value(r)?;
    if let Some(map) = value.as_mapping_mut() {
        let api_version = KINDS
            .iter()
            .find(|(kind, _)| *kind == T::KIND)
            .and_then(|(_, versions)| versions.first())
            .copied()
            .unwrap_or("v1");
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), T::KIND.into());
    }
    serde_yaml_ng::to_string(&value)
}

/// One resource read from a manifest, with where it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    /// Shared, so that every snapshot built from the same file reuses it.
    pub resource: std::sync::Arc<T>,
    pub file: std::path::PathBuf,
    pub line: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub services: Vec<Located<Service>>,
    pub workloads: Vec<Located<ExternalWorkload>>,
    pub profiles: Vec<Located<ServiceProfile>>,
    pub deployments: Vec<Located<Deployment>>,
}

/// What is wrong with a manifest, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// Kinds the store knows and the apiVersions accepted for them.
const KINDS: &[(&str, &[&str])] = &[
    ("Service", &["v1"]),
    (
        "ExternalWorkload",
        &[
            "workload.linkerd.io/v1beta1",
            "workload.linkerd.io/v1alpha1",
        ],
    ),
    (
        "ServiceProfile",
        &["linkerd.io/v1alpha2", "linkerd.io/v1alpha1"],
    ),
    ("Deployment", &["apps/v1"]),
];

/// The lines of `text` as YAML (libyaml) counts them: a line ends at `\n`,
/// `\r\n`, a lone `\r`, NEL (U+0085), LS (U+2028) or PS (U+2029), so line
/// numbers agree with the parser's.
pub fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    const BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.char_indices().find(|(_, c)| BREAKS.contains(c)) {
            Some((i, c)) => {
                let skip = if current[i..].starts_with("\r\n") {
                    2
                } else {
                    c.len_utf8()
                };
                rest = Some(&current[i + skip..]).filter(|r| !r.is_empty());
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current).filter(|c| !c.is_empty())
            }
        }
    })
}

/// Splits YAML text into documents at `---` lines, with each document's
/// first line number (1-based), so errors point into the file.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in yaml_lines(text).enumerate() {
        let is_separator = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '#');
        if is_separator {
            docs.push((i + 2, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|(_, doc)| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// The largest manifest file read; a larger one is reported, not parsed.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The deepest bracket nesting (`[`, `{`) a document may have. No manifest
/// needs more, and deep nesting makes YAML parsers slow. Brackets count
/// wherever they are, in quotes and comments too: a scan that tracked quotes
/// could be fooled into not counting.
const MAX_NESTING: usize = 64;

/// The line (0-based in the document) where bracket nesting first goes
/// deeper than [`MAX_NESTING`].
fn too_deep(doc: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 0usize);
    for b in doc.bytes() {
        match b {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Parses one manifest file's text: every resource it holds and every problem.
pub fn parse_manifests(file: &Path, text: &str) -> (Manifests, Vec<ManifestError>) {
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    let name = file.display().to_string();
    for (start, doc) in documents(text) {
        let error = |line: usize, reason: String| ManifestError {
            file: name.clone(),
            line,
            reason,
        };
        if let Some(line) = too_deep(&doc) {
            errors.push(error(
                start + line,
                format!("brackets nested deeper than {MAX_NESTING} levels"),
            ));
            continue;
        }
        let at = |e: &serde_yaml_ng::Error| start + e.location().map_or(0, |l| l.line() - 1);
        let header: Header = match serde_yaml_ng::from_str(&doc) {
            Ok(h) => h,
            Err(e) => {
                errors.push(error(
                    at(&e),
                    format!("not a YAML mapping: {}", strip_location(&e)),
                ));
                continue;
            }
        };
        let (Some(kind), Some(api_version)) = (header.kind, header.api_version) else {
            errors.push(error(start, "a resource needs apiVersion and kind".into()));
            continue;
        };
        let Some((_, versions)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
            errors.push(error(
                start,
                format!("unknown kind {kind:?} (known: {})", known.join(", ")),
            ));
            continue;
        };
        if !versions.contains(&api_version.as_str()) {
            errors.push(error(
                start,
                format!(
                    "{kind} has apiVersion {}, not {api_version:?}",
                    versions.join(" or ")
                ),
            ));
            continue;
        }
        fn read<T: Resource>(
            doc: &str,
            file: &Path,
            line: usize,
            into: &mut Vec<Located<T>>,
        ) -> Result<(), serde_yaml_ng::Error> {
            let resource = std::sync::Arc::new(serde_yaml_ng::from_str::<T>(doc)?);
            into.push(Located {
                resource,
                file: file.to_path_buf(),
                line,
            });
            Ok(())
        }
        let result = match kind.as_str() {
            "Service" => read(&doc, file, start, &mut out.services),
            "ExternalWorkload" => read(&doc, file, start, &mut out.workloads),
            "Deployment" => read(&doc, file, start, &mut out.deployments),
            _ => read(&doc, file, start, &mut out.profiles),
        };
        if let Err(e) = result {
            errors.push(error(
                at(&e),
                format!("invalid {kind}: {}", strip_location(&e)),
            ));
        }
    }
    let (checked, problems) = validate(out);
    errors.extend(problems);
    (checked, errors)
}

/// serde_yaml_ng says "at line N column M" relative to the document, once or
/// more ("..., while parsing a flow mapping at line 3 column 5"); the error
/// carries the line relative to the file instead, so those are dropped.
fn strip_location(e: &serde_yaml_ng::Error) -> String {
    let mut text = e.to_string();
    while let Some(start) = text.find(" at line ") {
        let tail = &text[start + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let line_len = digits(tail);
        let Some(after) = tail[line_len..].strip_prefix(" column ") else {
            break;
        };
        let end = start + " at line ".len() + line_len + " column ".len() + digits(after);
        text.replace_range(start..end, "");
    }
    text
}

/// Checks what types alone cannot: names, selectors, regexes, budgets.
/// Invalid resources are dropped with an error; the rest are kept.
fn validate(m: Manifests) -> (Manifests, Vec<ManifestError>) {
    fn checked<T: Resource>(
        items: Vec<Located<T>>,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<Located<T>> {
        items
            .into_iter()
            .filter(|item| match item.resource.check() {
                Ok(()) => true,
                Err(reason) => {
                    errors.push(ManifestError {
                        file: item.file.display().to_string(),
                        line: item.line,
                        reason: format!("{} {}: {reason}", T::KIND, item.resource.metadata().key()),
                    });
                    false
                }
            })
            .collect()
    }
    let mut errors = Vec::new();
    let checked = Manifests {
        services: checked(m.services, &mut errors),
        workloads: checked(m.workloads, &mut errors),
        profiles: checked(m.profiles, &mut errors),
        deployments: checked(m.deployments, &mut errors),
    };
    (checked, errors)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The control plane's namespace: its services' identities are
/// `<name>.weft.serviceaccount.identity.weft.<trust domain>`.
pub const CONTROL_NAMESPACE: &str = "weft";

fn check_deployment(d: &Deployment) -> Result<(), String> {
    check_name(&d.metadata)?;
    if d.metadata.namespace == CONTROL_NAMESPACE {
        return Err(format!(
            "namespace {CONTROL_NAMESPACE} is reserved for the control plane: a workload there would be \
             issued a control-plane identity (such as destination.{CONTROL_NAMESPACE}.serviceaccount...)"
        ));
    }
    let spec = &d.spec;
    if spec.replicas > MAX_LOCAL_REPLICAS {
        return Err(format!(
            "spec.replicas {} is more than the local mesh runs ({MAX_LOCAL_REPLICAS})",
            spec.replicas
        ));
    }
    if spec.selector.match_labels.is_empty() {
        return Err(
            "spec.selector.matchLabels is empty: it must select the template's labels".into(),
        );
    }
    for (k, v) in &spec.selector.match_labels {
        if spec.template.metadata.labels.get(k) != Some(v) {
            return Err(format!(
                "spec.selector.matchLabels {k}={v} is not among spec.template.metadata.labels"
            ));
        }
    }
    if let Some(sa) = &spec.template.spec.service_account_name
        && !is_dns_label(sa)
    {
        return Err(format!(
            "serviceAccountName {sa:?} is not a DNS label (lowercase letters, digits, '-')"
        ));
    }
    let [container] = spec.template.spec.containers.as_slice() else {
        return Err(format!(
            "the local mesh runs one container per pod, not {}",
            spec.template.spec.containers.len()
        ));
    };
    if container
        .command
        .first()
        .is_none_or(|c| c.trim().is_empty())
    {
        return Err(format!(
            "container {:?} has no command: the local mesh runs a program, not the image",
            container.name
        ));
    }
    let mut names = std::collections::HashSet::new();
    for p in &container.ports {
        if p.container_port == 0 {
            return Err(format!(
                "container {:?}: containerPort 0 is not a port",
                container.name
            ));
        }
        if let Some(name) = &p.name
            && !names.insert(name)
        {
            return Err(format!(
                "container {:?}: port name {name:?} is used twice",
                container.name
            ));
        }
    }
    Ok(())
}

fn check_name(meta: &Metadata) -> Result<(), String> {
    if !is_dns_label(&meta.namespace) {
        return Err(format!(
            "namespace {:?} is not a DNS label (lowercase letters, digits, '-')",
            meta.namespace
        ));
    }
    if !is_dns_label(&meta.name) {
        return Err(format!(
            "name {:?} is not a DNS label (lowercase letters, digits, '-')",
            meta.name
        ));
    }
    Ok(())
}

fn check_service(s: &Service) -> Result<(), String> {
    check_name(&s.metadata)?;
    let mut seen = std::collections::HashSet::new();
    for p in &s.spec.ports {
        if p.port == 0 {
            return Err("port 0 is not a port".into());
        }
        if !seen.insert(p.port) {
            return Err(format!("port {} is listed twice", p.port));
        }
        if let Some(PortRef::Number(0)) = p.target_port {
            return Err(format!("port {}: targetPort 0 is not a port", p.port));
        }
    }
    opaque_ports(&s.metadata)?;
    Ok(())
}

fn check_workload(w: &ExternalWorkload) -> Result<(), String> {
    check_name(&w.metadata)?;
    if w.spec.workload_ips.is_empty() {
        return Err("spec.workloadIPs needs at least one address".into());
    }
    if let Some(tls) = &w.spec.mesh_tls {
        tls.identity
            .parse::<weft_identity::Identity>()
            .map_err(|e| format!("spec.meshTLS.identity: {e}"))?;
    }
    if let Some(p) = w.metadata.annotations.get(PROXY_INBOUND_PORT_ANNOTATION)
        && !matches!(p.parse::<u16>(), Ok(1..))
    {
        return Err(format!(
            "annotation {PROXY_INBOUND_PORT_ANNOTATION}={p:?} is not a port"
        ));
    }
    opaque_ports(&w.metadata)?;
    Ok(())
}

fn check_profile(p: &ServiceProfile) -> Result<(), String> {
    let name = &p.metadata.name;
    let service = name.split('.').next().unwrap_or_default();
    if !name.contains(".svc.") || service.is_empty() {
        return Err(format!(
            "the name must be the service's FQDN, e.g. web.{}.svc.cluster.local, not {name:?}",
            p.metadata.namespace
        ));
    }
    for route in &p.spec.routes {
        check_request_match(&route.condition)
            .map_err(|e| format!("route {:?}: {e}", route.name))?;
    }
    if let Some(b) = &p.spec.retry_budget
        && !(0.0..=1000.0).contains(&b.retry_ratio)
    {
        return Err(format!(
            "retryBudget.retryRatio {} is outside 0..1000",
            b.retry_ratio
        ));
    }
    Ok(())
}

fn check_request_match(m: &RequestMatchSpec) -> Result<(), String> {
    if let Some(re) = &m.path_regex {
        regex::Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| format!("pathRegex {re:?} does not compile: {e}"))?;
    }
    if let Some(method) = &m.method {
        http_method(method).ok_or(format!("method {method:?} is not an HTTP method"))?;
    }
    for inner in m.all.iter().chain(&m.any).chain(m.not.as_deref()) {
        check_request_match(inner)?;
    }
    Ok(())
}

/// Known HTTP methods, as the proxy API spells them.
pub fn http_method(method: &str) -> Option<http::Method> {
    match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "CONNECT" | "TRACE" => {
            http::Method::from_bytes(method.as_bytes()).ok()
        }
        _ => None,
    }
}

/// The ports listed in the opaque-ports annotation (`3306,5432` or `4000-4010`).
pub fn opaque_ports(meta: &Metadata) -> Result<Vec<(u16, u16)>, String> {
    let Some(list) = meta.annotations.get(OPAQUE_PORTS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo @ 1..), Ok(hi)) if lo <= hi => Ok((lo, hi)),
                _ => Err(format!(
                    "annotation {OPAQUE_PORTS_ANNOTATION}: {part:?} is not a port or range"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# the web service
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations:
    config.linkerd.io/opaque-ports: "5432"
spec:
  clusterIP: 198.18.100.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  meshTLS: {identity: web.demo.serviceaccount.identity.weft.cluster.local}
  ports: [{name: http, port: 8080}]
  workloadIPs: [{ip: 198.18.1.2}]
status:
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.demo.svc.cluster.local, namespace: demo}
spec:
  routes:
  - name: GET /api
    condition: {method: GET, pathRegex: "/api/.*"}
    isRetryable: true
    timeout: 300ms
    responseClasses:
    - condition: {status: {min: 500, max: 599}}
      isFailure: true
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
"#;

    #[test]
    fn reads_every_kind_with_its_line() {
        let (m, errors) = parse_manifests(Path::new("demo.yaml"), GOOD);
        assert_eq!(errors, vec![]);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].line, 1);
        let svc = &m.services[0].resource;
        assert_eq!(svc.spec.cluster_ip, Some("198.18.100.1".parse().unwrap()));
        assert_eq!(
            svc.spec.ports[0].target_port,
            Some(PortRef::Name("http".into()))
        );
        assert_eq!(opaque_ports(&svc.metadata).unwrap(), vec![(5432, 5432)]);
        assert_eq!(m.workloads[0].line, 15);
        assert!(!m.workloads[0].resource.is_ready());
        assert_eq!(m.workloads[0].resource.proxy_inbound_port(), 4143);
        let route = &m.profiles[0].resource.spec.routes[0];
        assert_eq!(route.timeout, Some(Duration::from_millis(300)));
        assert!(route.is_retryable);
    }

    #[test]
    fn line_numbers_count_line_ends_as_yaml_does() {
        // Found by the manifests fuzz target: a lone CR ends a line for the
        // YAML parser, so it must for the document split too.
        let text = "apiVersion: v1\rkind: Service\r\nmetadata: {name: web}\n---\rapiVersion: v1\nkind: Service\nmetadata: {name: [}\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("m.yaml:1: "), "{errors:?}");
        assert!(
            errors[1].starts_with("m.yaml:7: not a YAML mapping: "),
            "{errors:?}"
        );
        // Locations inside the document are gone: the prefix is the file's.
        assert!(!errors[1].contains(" at line "), "{errors:?}");
        assert_eq!(
            yaml_lines("a\rb\r\nc\n").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(yaml_lines("").count(), 0);
        assert_eq!(yaml_lines("\n\n").count(), 2);
    }

    fn errors_of(text: &str) -> Vec<String> {
        parse_manifests(Path::new("m.yaml"), text)
            .1
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn problems_name_file_line_and_reason() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: http\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("m.yaml:6: invalid Service"),
            "{errors:?}"
        );

        let errors = errors_of(&format!("{GOOD}---\nkind: Gateway\napiVersion: v1\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("m.yaml:39: unknown kind \"Gateway\""),
            "{errors:?}"
        );

        for (text, want) in [
            ("a: [b\n", "m.yaml:"),
            ("kind: Service\n", "needs apiVersion and kind"),
            (
                "apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
                "has apiVersion v1",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {}\n",
                "is not a DNS label",
            ),
            (
                "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: a}\nspec: {workloadIPs: [], portz: []}\n",
                "unknown field `portz`",
            ),
            (
                "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: a}\nspec: {workloadIPs: [{ip: 198.18.0.1}], meshTLS: {identity: nope}}\n",
                "spec.meshTLS.identity",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local}\nspec:\n  routes:\n  - name: bad\n    condition: {pathRegex: \"(\"}\n",
                "does not compile",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web}\nspec: {}\n",
                "must be the service's FQDN",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local}\nspec:\n  routes:\n  - name: t\n    condition: {method: GET}\n    timeout: soon\n",
                "is not a duration",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: destination, namespace: weft}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      serviceAccountName: destination\n      containers: [{name: d, command: [sleep]}]\n",
                "namespace weft is reserved for the control plane",
            ),
        ] {
            let errors = errors_of(text);
            assert!(
                errors.len() == 1 && errors[0].contains(want),
                "{text}: {errors:?}"
            );
        }
    }

    const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: emoji, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: emoji-svc}}
  template:
    metadata: {labels: {app: emoji-svc, version: v1}}
    spec:
      serviceAccountName: emoji
      terminationGracePeriodSeconds: 5
      containers:
      - name: emoji
        image: example/emoji:v1
        command: [weft-demo, emoji]
        env: [{name: LISTEN, value: "0.0.0.0:8080"}]
        ports: [{name: grpc, containerPort: 8080}]
"#;

    #[test]
    fn deployments_read_the_part_the_local_mesh_runs() {
        let (m, errors) = parse_manifests(Path::new("emoji.yaml"), DEPLOYMENT);
        assert_eq!(errors, vec![]);
        let d = &m.deployments[0].resource;
        assert_eq!(d.spec.replicas, 2);
        let pod = &d.spec.template.spec;
        assert_eq!(pod.service_account_name.as_deref(), Some("emoji"));
        assert_eq!(pod.containers[0].command, ["weft-demo", "emoji"]);
        assert_eq!(pod.containers[0].env[0].value, "0.0.0.0:8080");
        assert_eq!(pod.containers[0].ports[0].container_port, 8080);

        for (from, to, want) in [
            (
                "replicas: 2",
                "replicas: 99",
                "more than the local mesh runs (32)",
            ),
            (
                "matchLabels: {app: emoji-svc}",
                "matchLabels: {app: other}",
                "matchLabels app=other is not among spec.template.metadata.labels",
            ),
            ("command: [weft-demo, emoji]", "args: [x]", "has no command"),
            (
                "serviceAccountName: emoji",
                "serviceAccountName: Emoji",
                "serviceAccountName",
            ),
            ("containerPort: 8080", "containerPort: 0", "containerPort 0"),
            (
                "containerPort: 8080",
                "containerPort: http",
                "invalid Deployment",
            ),
        ] {
            let errors = errors_of(&DEPLOYMENT.replace(from, to));
            assert!(
                errors.len() == 1 && errors[0].contains(want),
                "{to}: {errors:?}"
            );
        }
        let two = DEPLOYMENT.replace(
            "      containers:\n",
            "      containers:\n      - {name: sidecar, command: [x]}\n",
        );
        let errors = errors_of(&two);
        assert!(
            errors[0].contains("one container per pod, not 2"),
            "{errors:?}"
        );
    }

    /// Every kind written back out reads the same: what `weft up` renders
    /// for the destination service is what a user could have written.
    #[test]
    fn resources_round_trip_through_yaml() {
        fn again<T: Resource + Serialize + Clone>(
            r: &T,
            pick: fn(Manifests) -> Vec<Located<T>>,
        ) -> T {
            let text = to_manifest(r).unwrap();
            let (m, errors) = parse_manifests(Path::new("rendered.yaml"), &text);
            assert_eq!(errors, vec![], "{text}");
            (*pick(m).remove(0).resource).clone()
        }
        let (m, _) = parse_manifests(Path::new("demo.yaml"), GOOD);
        let svc = &*m.services[0].resource;
        assert_eq!(&again(svc, |m| m.services), svc);
        let w = &*m.workloads[0].resource;
        assert_eq!(&again(w, |m| m.workloads), w);
        let p = &*m.profiles[0].resource;
        assert_eq!(&again(p, |m| m.profiles), p);
        let (d, _) = parse_manifests(Path::new("d.yaml"), DEPLOYMENT);
        let d = &*d.deployments[0].resource;
        assert_eq!(&again(d, |m| m.deployments), d);
    }

    /// The demo mesh's manifests (`weft up examples/emojivoto`) load cleanly.
    #[test]
    fn the_demo_manifests_load_without_problems() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/emojivoto");
        let mut deployments = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (m, errors) = parse_manifests(&path, &std::fs::read_to_string(&path).unwrap());
            assert_eq!(errors, vec![], "{}", path.display());
            deployments += m.deployments.len();
        }
        assert_eq!(deployments, 4);
    }

    #[test]
    fn a_broken_document_does_not_hide_the_others() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: 0}}]}}\n---\n{GOOD}"
        );
        let (m, errors) = parse_manifests(Path::new("m.yaml"), &text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.workloads.len(), 1);
        assert_eq!(m.profiles.len(), 1);
    }
}
