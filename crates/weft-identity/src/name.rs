//! Workload identity names, as Linkerd writes them.
//!
//! `<serviceaccount>.<namespace>.serviceaccount.identity.<control-namespace>.<trust-domain>`
//! is carried as a DNS SAN and used as the TLS server name; the SPIFFE form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>` is carried as a URI SAN.

use std::fmt;
use std::str::FromStr;

/// A validated identity name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("identity {0:?} is not a DNS name: {1}")]
    NotDns(String, &'static str),
    #[error(
        "identity {0:?} is not of the form <sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>"
    )]
    NotServiceAccount(String),
}

const MARKER: &str = ".serviceaccount.identity.";

impl Identity {
    /// The identity of a service account in a namespace, under a control plane.
    pub fn service_account(
        sa: &str,
        ns: &str,
        control_ns: &str,
        trust_domain: &str,
    ) -> Result<Self, NameError> {
        format!("{sa}.{ns}{MARKER}{control_ns}.{trust_domain}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// (service account, namespace, control namespace, trust domain).
    pub fn parts(&self) -> (&str, &str, &str, &str) {
        // Parsing guarantees the marker and the dots around it.
        let (head, tail) = self.0.split_once(MARKER).unwrap_or(("", ""));
        let (sa, ns) = head.split_once('.').unwrap_or(("", ""));
        let (control_ns, trust_domain) = tail.split_once('.').unwrap_or(("", ""));
        (sa, ns, control_ns, trust_domain)
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub fn spiffe_uri(&self) -> String {
        let (sa, ns, _, trust_domain) = self.parts();
        format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
    }
}

impl FromStr for Identity {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = |why| NameError::NotDns(s.to_string(), why);
        if s.is_empty() || s.len() > 253 {
            return Err(bad("length must be 1 to 253"));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label must be 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad("labels may hold only a-z, 0-9 and '-'"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("labels may not start or end with '-'"));
            }
        }
        let Some((head, tail)) = s.split_once(MARKER) else {
            return Err(NameError::NotServiceAccount(s.to_string()));
        };
        if head.split('.').count() != 2 || tail.split('.').count() < 2 {
            return Err(NameError::NotServiceAccount(s.to_string()));
        }
        Ok(Identity(s.to_string()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_parses_and_splits_linkerd_names() {
        let id = Identity::service_account("web", "emojivoto", "linkerd", "cluster.local").unwrap();
        assert_eq!(
            id.as_str(),
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(id.parts(), ("web", "emojivoto", "linkerd", "cluster.local"));
        assert_eq!(
            id.spiffe_uri(),
            "spiffe://cluster.local/ns/emojivoto/sa/web"
        );
        assert_eq!(id.as_str().parse::<Identity>().unwrap(), id);
    }

    #[test]
    fn rejects_what_is_not_an_identity() {
        for bad in [
            "",
            "Web.ns.serviceaccount.identity.linkerd.cluster.local",
            "web.ns.serviceaccount.identity.linkerd",
            "a.b.c.serviceaccount.identity.linkerd.cluster.local",
            "web..serviceaccount.identity.linkerd.cluster.local",
            "example.com",
            "web.ns.serviceaccount.identity.linkerd.cluster.local-",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad:?} accepted");
        }
    }
}
