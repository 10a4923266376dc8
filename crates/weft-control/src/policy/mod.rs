//! The policy controller (`io.linkerd.proxy.inbound.InboundServerPolicies`
//! and `io.linkerd.proxy.outbound.OutboundPolicies`), served by the
//! destination process from the same store snapshots, as Linkerd's policy
//! controller shares the destination pod and its identity.
//!
//! [`inbound::server`] is a pure function of a snapshot: for one workload's
//! port, the Server that selects it (or the default policy), its protocol,
//! the authorizations with their authentications, the HTTP routes with
//! their own authorizations, and the rate limit, as the proto's `Server`
//! that linkerd2-proxy and Weft's proxy both read. [`outbound::policy`] is
//! its outbound twin: for a Service port (or an address outside the
//! cluster), the routes, backends, timeouts, retries and circuit breaking.

mod egress;
mod grpc;
pub mod inbound;
pub mod outbound;
mod routes;
pub mod service;

use std::str::FromStr;
use std::time::Duration;

use weft_api::{Cidr, DefaultPolicy, Key};

/// What the policy controller is told at start.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// The policy of ports no Server selects, unless a workload's
    /// `config.linkerd.io/default-inbound-policy` says otherwise.
    pub default_policy: DefaultPolicy,
    /// The networks `cluster-*` policies admit, and where authorizations
    /// without a NetworkAuthentication admit clients from.
    pub cluster_networks: Vec<Cidr>,
    /// How long a proxy waits for a client's first bytes on a port whose
    /// protocol is detected.
    pub detect_timeout: Duration,
    /// Identities are `<sa>.<ns>.serviceaccount.identity.<control namespace>.<trust domain>`.
    pub control_namespace: String,
    pub trust_domain: String,
    /// Services are `<name>.<namespace>.svc.<cluster domain>`.
    pub cluster_domain: String,
    /// EgressNetworks here apply to every client (others to their own
    /// namespace's clients).
    pub egress_namespace: String,
}

/// Linkerd's global egress namespace, so its manifests apply unchanged.
pub const DEFAULT_EGRESS_NAMESPACE: &str = "linkerd-egress";

/// Linkerd's default cluster networks, and the local mesh's (198.18.0.0/15
/// for namespaces, 127.0.0.0/8 for rootless pods on loopback).
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8,198.18.0.0/15,127.0.0.0/8";

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: parse_networks(DEFAULT_CLUSTER_NETWORKS)
                .expect("the default cluster networks parse"),
            detect_timeout: Duration::from_secs(10),
            control_namespace: weft_api::CONTROL_NAMESPACE.into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            egress_namespace: DEFAULT_EGRESS_NAMESPACE.into(),
        }
    }
}

impl PolicyConfig {
    /// The identity of ServiceAccount `sa` in `namespace`.
    pub fn identity(&self, sa: &str, namespace: &str) -> String {
        format!(
            "{sa}.{namespace}.serviceaccount.identity.{}.{}",
            self.control_namespace, self.trust_domain
        )
    }

    /// The suffix every identity of `namespace` ends with, as labels.
    pub fn namespace_suffix(&self, namespace: &str) -> Vec<String> {
        let mut parts = vec![
            namespace.to_string(),
            "serviceaccount".into(),
            "identity".into(),
        ];
        parts.push(self.control_namespace.clone());
        parts.extend(self.trust_domain.split('.').map(String::from));
        parts
    }
}

/// A comma-separated list of CIDRs (`--cluster-networks`).
pub fn parse_networks(list: &str) -> Result<Vec<Cidr>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// The workload a proxy asks for (`PortSpec.workload`), in the forms
/// linkerd2-proxy sends: `{"ns":"demo","pod":"web-0"}`,
/// `{"ns":"demo","external_workload":"web-0"}` or the older `demo:web-0`.
/// Weft's files store holds every workload (the local mesh's pods too) as
/// an ExternalWorkload, so both kinds name one.
pub fn parse_workload(s: &str) -> Result<Key, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        ns: String,
        pod: Option<String>,
        external_workload: Option<String>,
    }
    let bad = || format!("{s:?} is not a workload (\"ns:name\" or {{\"ns\":..,\"pod\":..}})");
    let (namespace, name) = if s.starts_with('{') {
        let named: Named = serde_json::from_str(s).map_err(|e| format!("{}: {e}", bad()))?;
        match (named.pod, named.external_workload) {
            (Some(name), None) | (None, Some(name)) => (named.ns, name),
            _ => return Err(bad()),
        }
    } else {
        let (ns, name) = s.split_once(':').ok_or_else(bad)?;
        (ns.to_string(), name.to_string())
    };
    if namespace.is_empty() || name.is_empty() {
        return Err(bad());
    }
    Ok(Key { namespace, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_in_every_form_linkerd_sends() {
        let key = |ns: &str, name: &str| Key {
            namespace: ns.into(),
            name: name.into(),
        };
        assert_eq!(parse_workload("demo:web-0"), Ok(key("demo", "web-0")));
        assert_eq!(
            parse_workload(r#"{"ns":"demo","pod":"web-0"}"#),
            Ok(key("demo", "web-0"))
        );
        assert_eq!(
            parse_workload(r#"{"ns":"demo", "external_workload":"vm-1"}"#),
            Ok(key("demo", "vm-1"))
        );
        for bad in [
            "web-0",
            ":web-0",
            "demo:",
            r#"{"ns":"demo"}"#,
            r#"{"ns":"demo","pod":"a","external_workload":"b"}"#,
            r#"{"ns":"demo","nonsense":"a"}"#,
            "{not json",
        ] {
            assert!(parse_workload(bad).is_err(), "{bad}");
        }
    }
}
