//! What every resource has: metadata (name, namespace, labels,
//! annotations), the key that identifies it within its kind, name checks,
//! and the annotation names Weft reads.

use std::collections::BTreeMap;

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

pub fn is_dns_label(s: &str) -> bool {
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

/// On a pod (an ExternalWorkload the local mesh renders): the Deployment
/// it belongs to. Such a workload is labelled in metrics as a pod of that
/// Deployment (`dst_pod`, `dst_deployment`), as Linkerd labels pods.
pub const WORKLOAD_LABEL: &str = "weft.io/workload";
/// On a meshed pod: the namespace of the control plane that injected it.
pub const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
/// On a pod: the hash of the pod template it was made from.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

pub(crate) fn check_name(meta: &Metadata) -> Result<(), String> {
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

/// A Kubernetes label selector.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorExpression>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorExpression {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy every term (an empty selector selects all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }

    pub(crate) fn check(&self, field: &str) -> Result<(), String> {
        for e in &self.match_expressions {
            let takes_values = matches!(e.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if takes_values == e.values.is_empty() {
                return Err(format!(
                    "{field}.matchExpressions: {:?} {:?} {}",
                    e.key,
                    e.operator,
                    if takes_values {
                        "needs values"
                    } else {
                        "takes no values"
                    }
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]);
        let sel = |yaml: &str| serde_yaml_ng::from_str::<LabelSelector>(yaml).unwrap();
        assert!(sel("{}").matches(&labels));
        assert!(sel("matchLabels: {app: web}").matches(&labels));
        assert!(!sel("matchLabels: {app: db}").matches(&labels));
        assert!(
            sel("matchExpressions: [{key: tier, operator: In, values: [front, back]}]")
                .matches(&labels)
        );
        assert!(
            !sel("matchExpressions: [{key: tier, operator: NotIn, values: [front]}]")
                .matches(&labels)
        );
        assert!(sel("matchExpressions: [{key: zone, operator: DoesNotExist}]").matches(&labels));
        assert!(!sel("matchExpressions: [{key: zone, operator: Exists}]").matches(&labels));
        assert!(
            sel("matchExpressions: [{key: zone, operator: In}]")
                .check("s")
                .is_err()
        );
        assert!(
            sel("matchExpressions: [{key: zone, operator: Exists, values: [x]}]")
                .check("s")
                .is_err()
        );
    }
}
