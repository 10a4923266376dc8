//! Inbound authorization, in Linkerd's shapes and API groups so that
//! manifests written for Linkerd apply unchanged:
//!
//! - `Server` (policy.linkerd.io/v1beta3): a port of the workloads a
//!   selector picks, its protocol and the policy when nothing authorizes.
//! - `AuthorizationPolicy`: who may reach a Server, an HTTPRoute or every
//!   Server of a namespace: all of its required authentications must hold.
//! - `MeshTLSAuthentication` (verified client identities, `*` and `*.suffix`
//!   wildcards, or ServiceAccount and Namespace references) and
//!   `NetworkAuthentication` (client networks with exceptions).
//! - `HTTPLocalRateLimitPolicy`: requests per second a Server accepts in
//!   total, per client identity, and for named clients.
//!
//! Checks here see one resource; references between resources are checked
//! by the policy index, which reports what dangles.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::meta::{LabelSelector, Metadata, check_name, is_dns_label};
use crate::{HttpRoute, Key, Resource};

/// Linkerd's annotation (on a workload, or the control plane's setting
/// mesh-wide) naming the policy of ports no Server selects.
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// Linkerd's annotation listing ports that take only clients with a
/// verified identity.
pub const REQUIRE_IDENTITY_PORTS_ANNOTATION: &str =
    "config.linkerd.io/proxy-require-identity-inbound-ports";

/// The API group of every policy kind but routes' second home.
pub const POLICY_GROUP: &str = "policy.linkerd.io";
/// The Gateway API group, where HTTPRoute also lives.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What applies to a port no Server selects (and a Server's `accessPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Every client, meshed or not.
    AllUnauthenticated,
    /// Every client with a verified mesh identity.
    AllAuthenticated,
    /// Clients from the cluster's networks, meshed or not.
    ClusterUnauthenticated,
    /// Clients from the cluster's networks with a verified identity.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Everybody, but what `deny` would refuse is counted and logged.
    Audit,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 6] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterUnauthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        DefaultPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = DefaultPolicy::ALL.iter().map(|p| p.as_str()).collect();
                format!("{s:?} is not a default policy ({})", known.join(", "))
            })
    }
}

impl std::fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port by number, or by the name a workload gives it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum ServerPort {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for ServerPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerPort::Number(n) => write!(f, "{n}"),
            ServerPort::Name(name) => f.write_str(name),
        }
    }
}

/// What a Server says its port speaks; `unknown` detects it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ProxyProtocol {
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
    #[serde(rename = "TLS")]
    Tls,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Server {
    pub metadata: Metadata,
    pub spec: ServerSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_workload_selector: Option<LabelSelector>,
    pub port: ServerPort,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// What applies when no AuthorizationPolicy authorizes a client (Linkerd's default: deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
}

impl ServerSpec {
    /// The selector, whichever of the two the Server uses.
    pub fn selector(&self) -> &LabelSelector {
        static ALL: LabelSelector = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: Vec::new(),
        };
        self.pod_selector
            .as_ref()
            .or(self.external_workload_selector.as_ref())
            .unwrap_or(&ALL)
    }

    /// The policy for clients nothing authorizes.
    pub fn access_policy(&self) -> DefaultPolicy {
        self.access_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(DefaultPolicy::Deny)
    }
}

pub(crate) fn check_server(s: &Server) -> Result<(), String> {
    check_name(&s.metadata)?;
    let spec = &s.spec;
    match (&spec.pod_selector, &spec.external_workload_selector) {
        (Some(sel), None) => sel.check("spec.podSelector")?,
        (None, Some(sel)) => sel.check("spec.externalWorkloadSelector")?,
        _ => {
            return Err(
                "spec needs exactly one of podSelector and externalWorkloadSelector".into(),
            );
        }
    }
    match &spec.port {
        ServerPort::Number(0) => return Err("spec.port 0 is not a port".into()),
        ServerPort::Number(_) => {}
        ServerPort::Name(name) if !is_port_name(name) => {
            return Err(format!(
                "spec.port {name:?} is neither a number nor a port name (at most 15 lowercase letters, digits and '-', with a letter)"
            ));
        }
        ServerPort::Name(_) => {}
    }
    if let Some(policy) = &spec.access_policy {
        policy
            .parse::<DefaultPolicy>()
            .map_err(|e| format!("spec.accessPolicy: {e}"))?;
    }
    Ok(())
}

/// An IANA service name, as Kubernetes port names are.
fn is_port_name(s: &str) -> bool {
    is_dns_label(s)
        && s.len() <= 15
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
}

/// A reference to another resource, by group, kind and name (and, where
/// allowed, namespace).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The kinds a reference may name, each in its API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Server,
    HttpRoute,
    Namespace,
    ServiceAccount,
    MeshTlsAuthentication,
    NetworkAuthentication,
}

impl TargetRef {
    /// What kind it names; kind and group compare without case, and core
    /// kinds take no group (or `core`).
    pub fn kind(&self) -> Option<RefKind> {
        let group = self.group.as_deref().unwrap_or("").to_ascii_lowercase();
        let core = group.is_empty() || group == "core";
        let policy = group == POLICY_GROUP;
        Some(match self.kind.to_ascii_lowercase().as_str() {
            "server" if policy => RefKind::Server,
            "httproute" if policy || group == GATEWAY_GROUP => RefKind::HttpRoute,
            "namespace" if core => RefKind::Namespace,
            "serviceaccount" if core => RefKind::ServiceAccount,
            "meshtlsauthentication" if policy => RefKind::MeshTlsAuthentication,
            "networkauthentication" if policy => RefKind::NetworkAuthentication,
            _ => return None,
        })
    }

    /// `Kind.group`, as Linkerd names a kind in messages.
    pub fn canonical_kind(&self) -> String {
        match &self.group {
            Some(g) if !g.is_empty() => format!("{}.{g}", self.kind),
            _ => self.kind.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub target_ref: TargetRef,
    pub required_authentication_refs: Vec<TargetRef>,
}

pub(crate) fn check_authorization_policy(p: &AuthorizationPolicy) -> Result<(), String> {
    check_name(&p.metadata)?;
    let target = &p.spec.target_ref;
    if target.namespace.is_some() {
        return Err("spec.targetRef cannot name a namespace: a policy applies in its own".into());
    }
    match target.kind() {
        Some(RefKind::Server | RefKind::HttpRoute) => {}
        Some(RefKind::Namespace) if target.name == p.metadata.namespace => {}
        Some(RefKind::Namespace) => {
            return Err(format!(
                "spec.targetRef cannot target another namespace ({:?})",
                target.name
            ));
        }
        _ => {
            return Err(format!(
                "spec.targetRef: {} is not a Server, HTTPRoute or Namespace",
                target.canonical_kind()
            ));
        }
    }
    let count = |kind| {
        p.spec
            .required_authentication_refs
            .iter()
            .filter(|r| r.kind() == Some(kind))
            .count()
    };
    let (mtls, accounts, networks) = (
        count(RefKind::MeshTlsAuthentication),
        count(RefKind::ServiceAccount),
        count(RefKind::NetworkAuthentication),
    );
    if mtls + accounts > 1 {
        return Err(
            "spec.requiredAuthenticationRefs: at most one MeshTLSAuthentication or ServiceAccount"
                .into(),
        );
    }
    if networks > 1 {
        return Err("spec.requiredAuthenticationRefs: at most one NetworkAuthentication".into());
    }
    if let Some(other) = p.spec.required_authentication_refs.iter().find(|r| {
        r.kind().is_none_or(|k| {
            !matches!(
                k,
                RefKind::MeshTlsAuthentication
                    | RefKind::ServiceAccount
                    | RefKind::NetworkAuthentication
            )
        })
    }) {
        return Err(format!(
            "spec.requiredAuthenticationRefs: {} is not a MeshTLSAuthentication, NetworkAuthentication or ServiceAccount",
            other.canonical_kind()
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct MeshTlsAuthentication {
    pub metadata: Metadata,
    pub spec: MeshTlsAuthenticationSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTlsAuthenticationSpec {
    /// Identities, `*` (any verified identity) or `*.suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// ServiceAccounts (their identities) or Namespaces (every identity in them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_refs: Vec<TargetRef>,
}

/// An identity pattern: one identity, any (`*`), or any under a suffix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityMatch {
    Exact(String),
    Suffix(String),
    Any,
}

impl IdentityMatch {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(IdentityMatch::Any);
        }
        let (pattern, name) = match s.strip_prefix("*.") {
            Some(suffix) => (IdentityMatch::Suffix(suffix.to_string()), suffix),
            None => (IdentityMatch::Exact(s.to_string()), s),
        };
        let is_name = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label);
        if is_name {
            Ok(pattern)
        } else {
            Err(format!(
                "{s:?} is not an identity (a DNS name), `*` or `*.` followed by one"
            ))
        }
    }

    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Exact(id) => id == identity,
            IdentityMatch::Suffix(suffix) => identity
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        }
    }
}

pub(crate) fn check_meshtls_authentication(a: &MeshTlsAuthentication) -> Result<(), String> {
    check_name(&a.metadata)?;
    if a.spec.identities.is_empty() && a.spec.identity_refs.is_empty() {
        return Err("spec needs identities or identityRefs".into());
    }
    for id in &a.spec.identities {
        IdentityMatch::parse(id).map_err(|e| format!("spec.identities: {e}"))?;
    }
    for r in &a.spec.identity_refs {
        match r.kind() {
            Some(RefKind::ServiceAccount) => {}
            Some(RefKind::Namespace) if r.namespace.is_none() => {}
            Some(RefKind::Namespace) => {
                return Err("spec.identityRefs: a Namespace has no namespace".into());
            }
            _ => {
                return Err(format!(
                    "spec.identityRefs: {} is not a ServiceAccount or Namespace",
                    r.canonical_kind()
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NetworkAuthentication {
    pub metadata: Metadata,
    pub spec: NetworkAuthenticationSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<Network>,
}

/// A network clients may come from, less its exceptions.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`), or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The same containment the proxy enforces (an IPv4-mapped IPv6 address
    /// is its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        weft_policy::Cidr::new(self.addr, self.prefix).is_some_and(|n| n.contains(ip))
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        let cidr = Cidr { addr, prefix };
        // The address must be the network's first: 10.1.0.0/8 is a typo.
        if cidr.network() != cidr.addr {
            return Err(format!(
                "{s:?} has host bits set (the network is {}/{prefix})",
                cidr.network()
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) fn check_network_authentication(a: &NetworkAuthentication) -> Result<(), String> {
    check_name(&a.metadata)?;
    if a.spec.networks.is_empty() {
        return Err("spec.networks needs at least one network".into());
    }
    check_networks(&a.spec.networks)
}

/// Every exception inside its network, and none taking all of it.
pub(crate) fn check_networks(networks: &[Network]) -> Result<(), String> {
    for net in networks {
        for except in &net.except {
            if except.covers(&net.cidr) {
                return Err(format!(
                    "spec.networks: {} is wholly taken away by its exception {except}",
                    net.cidr
                ));
            }
            if !net.cidr.covers(except) {
                return Err(format!(
                    "spec.networks: the exception {except} is not inside {}",
                    net.cidr
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct HttpLocalRateLimitPolicy {
    pub metadata: Metadata,
    pub spec: RateLimitSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    pub target_ref: TargetRef,
    /// For all clients together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Limit>,
    /// For each client identity (unauthenticated clients share one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Limit>,
    /// Other limits for named clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateLimitOverride>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    pub requests_per_second: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitOverride {
    pub requests_per_second: u32,
    /// ServiceAccounts whose identities get this limit.
    pub client_refs: Vec<TargetRef>,
}

pub(crate) fn check_rate_limit(p: &HttpLocalRateLimitPolicy) -> Result<(), String> {
    check_name(&p.metadata)?;
    let spec = &p.spec;
    if spec.target_ref.kind() != Some(RefKind::Server) || spec.target_ref.namespace.is_some() {
        return Err(format!(
            "spec.targetRef: {} is not a Server of this namespace",
            spec.target_ref.canonical_kind()
        ));
    }
    if spec.total.is_none() && spec.identity.is_none() && spec.overrides.is_empty() {
        return Err("spec needs total, identity or overrides".into());
    }
    for limit in [spec.total, spec.identity].into_iter().flatten() {
        if limit.requests_per_second == 0 {
            return Err(
                "requestsPerSecond 0 would refuse everything; say deny with a Server instead"
                    .into(),
            );
        }
    }
    if let (Some(total), Some(identity)) = (spec.total, spec.identity)
        && identity.requests_per_second > total.requests_per_second
    {
        return Err(format!(
            "spec.identity.requestsPerSecond ({}) is above spec.total ({})",
            identity.requests_per_second, total.requests_per_second
        ));
    }
    for o in &spec.overrides {
        if o.requests_per_second == 0 {
            return Err("spec.overrides: requestsPerSecond 0 would refuse everything".into());
        }
        if o.client_refs.is_empty() {
            return Err("spec.overrides: clientRefs needs at least one ServiceAccount".into());
        }
        if let Some(r) = o
            .client_refs
            .iter()
            .find(|r| r.kind() != Some(RefKind::ServiceAccount))
        {
            return Err(format!(
                "spec.overrides.clientRefs: {} is not a ServiceAccount",
                r.canonical_kind()
            ));
        }
    }
    Ok(())
}

/// A reference to a resource that does not exist: (the referring kind,
/// its key, what is missing). The referring resource is still served (in
/// Kubernetes the other may come later), but it cannot do what it says
/// until then: an authorization needing a missing authentication admits
/// no one, a route or a rate limit whose Server is missing applies nowhere.
pub fn dangling_references(r: &crate::Resources) -> Vec<(&'static str, Key, String)> {
    let mut found = Vec::new();
    let exists = |kind: RefKind, namespace: &str, name: &str| {
        let key = Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match kind {
            RefKind::Server => r.servers.contains_key(&key),
            RefKind::HttpRoute => r.http_routes.contains_key(&key),
            RefKind::MeshTlsAuthentication => r.meshtls_authentications.contains_key(&key),
            RefKind::NetworkAuthentication => r.network_authentications.contains_key(&key),
            // Namespaces and ServiceAccounts are not resources of the files
            // store: any name is taken as it is.
            RefKind::Namespace | RefKind::ServiceAccount => true,
        }
    };
    let mut check = |kind: &'static str, key: &Key, field: &str, t: &TargetRef| {
        let namespace = t.namespace.as_deref().unwrap_or(&key.namespace);
        if let Some(ref_kind) = t.kind()
            && !exists(ref_kind, namespace, &t.name)
        {
            found.push((
                kind,
                key.clone(),
                format!(
                    "{field} names {} {namespace}/{}, which does not exist",
                    t.kind, t.name
                ),
            ));
        }
    };
    for (key, a) in &r.authorization_policies {
        check(
            AuthorizationPolicy::KIND,
            key,
            "targetRef",
            &a.spec.target_ref,
        );
        for t in &a.spec.required_authentication_refs {
            check(
                AuthorizationPolicy::KIND,
                key,
                "requiredAuthenticationRefs",
                t,
            );
        }
    }
    for (key, l) in &r.rate_limits {
        check(
            HttpLocalRateLimitPolicy::KIND,
            key,
            "targetRef",
            &l.spec.target_ref,
        );
    }
    for (key, route) in &r.http_routes {
        for p in route
            .spec
            .parent_refs
            .iter()
            .filter(|p| p.is_egress_network())
        {
            let namespace = p.namespace.as_deref().unwrap_or(&key.namespace);
            let egress = Key {
                namespace: namespace.to_string(),
                name: p.name.clone(),
            };
            if !r.egress_networks.contains_key(&egress) {
                found.push((
                    HttpRoute::KIND,
                    key.clone(),
                    format!("parentRefs names EgressNetwork {egress}, which does not exist"),
                ));
            }
        }
        for p in route.spec.parent_refs.iter().filter(|p| p.is_server()) {
            let namespace = p.namespace.as_deref().unwrap_or(&key.namespace);
            if !exists(RefKind::Server, namespace, &p.name) {
                found.push((
                    HttpRoute::KIND,
                    key.clone(),
                    format!(
                        "parentRefs names Server {namespace}/{}, which does not exist",
                        p.name
                    ),
                ));
            }
        }
        let rules: Vec<&[crate::BackendRef]> = route
            .spec
            .rules
            .iter()
            .map(|r| r.backend_refs.as_slice())
            .collect();
        found.extend(service_references(
            r,
            HttpRoute::KIND,
            key,
            &route.spec.parent_refs,
            &rules,
        ));
    }
    found.extend(overlapping_egress_networks(r));
    for (key, route) in &r.grpc_routes {
        let rules: Vec<&[crate::BackendRef]> = route
            .spec
            .rules
            .iter()
            .map(|r| r.backend_refs.as_slice())
            .collect();
        found.extend(service_references(
            r,
            crate::GrpcRoute::KIND,
            key,
            &route.spec.parent_refs,
            &rules,
        ));
    }
    found
}

/// EgressNetworks of one namespace whose networks overlap: an address in
/// both is decided by the more specific network (by name when equal), which
/// is rarely what two separate resources meant. Exceptions are not
/// considered: an overlap they carve out is still reported.
fn overlapping_egress_networks(r: &crate::Resources) -> Vec<(&'static str, Key, String)> {
    let everything = [
        Cidr {
            addr: IpAddr::from([0u8; 4]),
            prefix: 0,
        },
        Cidr {
            addr: IpAddr::from([0u16; 8]),
            prefix: 0,
        },
    ];
    let nets = |e: &crate::EgressNetwork| -> Vec<Cidr> {
        if e.spec.networks.is_empty() {
            everything.to_vec()
        } else {
            e.spec.networks.iter().map(|n| n.cidr).collect()
        }
    };
    let list: Vec<_> = r.egress_networks.iter().collect();
    let mut found = Vec::new();
    for (i, (a_key, a)) in list.iter().enumerate() {
        for (b_key, b) in &list[i + 1..] {
            if a_key.namespace != b_key.namespace {
                continue;
            }
            let (a_nets, b_nets) = (nets(a), nets(b));
            let overlap = a_nets.iter().find_map(|x| {
                b_nets
                    .iter()
                    .find(|y| x.covers(y) || y.covers(x))
                    .map(|y| (*x, *y))
            });
            if let Some((x, y)) = overlap {
                found.push((
                    crate::EgressNetwork::KIND,
                    (*b_key).clone(),
                    format!(
                        "overlaps EgressNetwork {a_key} ({y} and {x}): an address in both takes the more specific network"
                    ),
                ));
            }
        }
    }
    found
}

/// A route's Service parents and backends that name a missing Service or
/// port, and rules whose backends all weigh 0.
fn service_references(
    r: &crate::Resources,
    kind: &'static str,
    key: &Key,
    parents: &[crate::ParentRef],
    rules: &[&[crate::BackendRef]],
) -> Vec<(&'static str, Key, String)> {
    let mut found = Vec::new();
    let service = |found: &mut Vec<_>,
                   field: &str,
                   namespace: &str,
                   name: &str,
                   port: Option<u16>| {
        let svc = r.services.get(&Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        let problem = match (svc, port) {
            (None, _) => {
                format!("{field} names Service {namespace}/{name}, which does not exist")
            }
            (Some(s), Some(port)) if !s.spec.ports.iter().any(|p| p.port == port) => {
                format!(
                    "{field} names port {port} of Service {namespace}/{name}, which it does not define"
                )
            }
            _ => return,
        };
        found.push((kind, key.clone(), problem));
    };
    for p in parents.iter().filter(|p| p.is_service()) {
        let namespace = p.namespace.as_deref().unwrap_or(&key.namespace);
        service(&mut found, "parentRefs", namespace, &p.name, p.port);
    }
    for (i, backends) in rules.iter().enumerate() {
        for b in backends
            .iter()
            .filter(|b| b.kind.as_deref().is_none_or(|k| k == "Service"))
        {
            let namespace = b.namespace.as_deref().unwrap_or(&key.namespace);
            service(
                &mut found,
                &format!("rules[{i}].backendRefs"),
                namespace,
                &b.name,
                b.port,
            );
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == Some(0)) {
            found.push((
                kind,
                key.clone(),
                format!(
                    "rules[{i}].backendRefs all have weight 0: every request of the rule fails"
                ),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns_match_whole_labels_only() {
        let any = IdentityMatch::parse("*").unwrap();
        let ns = IdentityMatch::parse("*.demo.serviceaccount.identity.weft.cluster.local").unwrap();
        let web = "web.demo.serviceaccount.identity.weft.cluster.local";
        assert!(any.matches(web));
        assert!(ns.matches(web));
        // A suffix is whole labels: "xdemo" is not in "demo".
        assert!(!ns.matches("web.xdemo.serviceaccount.identity.weft.cluster.local"));
        assert!(!ns.matches("demo.serviceaccount.identity.weft.cluster.local"));
        assert!(IdentityMatch::parse(web).unwrap().matches(web));
        assert!(
            !IdentityMatch::parse(web)
                .unwrap()
                .matches("bot.demo.serviceaccount.identity.weft.cluster.local")
        );
        for bad in [
            "",
            "*.",
            "**",
            "a..b",
            "Web.demo",
            "*web.demo",
            "web.*.demo",
        ] {
            assert!(IdentityMatch::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_parse_strictly_and_contain_what_they_should() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.18.0.1".parse().unwrap()));
        let one: Cidr = "198.18.0.7".parse().unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("198.18.0.7".parse().unwrap()));
        assert!(!one.contains("198.18.0.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in [
            "10.1.0.0/8",
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "fd00::/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let network = Network {
            cidr: net,
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(network.contains("10.2.0.1".parse().unwrap()));
        assert!(!network.contains("10.1.0.1".parse().unwrap()));
    }

    #[test]
    fn references_name_kinds_in_their_groups() {
        let r = |group: Option<&str>, kind: &str| TargetRef {
            group: group.map(String::from),
            kind: kind.into(),
            name: "x".into(),
            namespace: None,
        };
        assert_eq!(
            r(Some("policy.linkerd.io"), "Server").kind(),
            Some(RefKind::Server)
        );
        assert_eq!(
            r(Some("POLICY.LINKERD.IO"), "server").kind(),
            Some(RefKind::Server)
        );
        assert_eq!(r(None, "Server").kind(), None);
        assert_eq!(
            r(Some("gateway.networking.k8s.io"), "HTTPRoute").kind(),
            Some(RefKind::HttpRoute)
        );
        assert_eq!(
            r(None, "ServiceAccount").kind(),
            Some(RefKind::ServiceAccount)
        );
        assert_eq!(
            r(Some("core"), "Namespace").kind(),
            Some(RefKind::Namespace)
        );
        assert_eq!(r(Some("policy.linkerd.io"), "ServiceAccount").kind(), None);
    }

    #[test]
    fn default_policies_round_trip_and_unknown_ones_are_named() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
        }
        let err = "allow".parse::<DefaultPolicy>().unwrap_err();
        assert!(err.contains("all-unauthenticated"), "{err}");
    }
}
