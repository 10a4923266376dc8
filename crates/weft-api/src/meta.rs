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

pub(crate) fn is_dns_label(s: &str) -> bool {
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
