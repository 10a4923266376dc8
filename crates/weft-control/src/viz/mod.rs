//! The metrics API: what `linkerd viz` asks its metrics-api, answered from
//! the mesh's Prometheus, as JSON over HTTP, for the CLI (`weft viz`) and the
//! dashboard. All the PromQL lives in [`promql`]; [`prometheus`] is the
//! client that asks it; [`api`] turns answers into rows and serves them.

pub mod api;
pub mod prometheus;
pub mod promql;

use serde::Serialize;

/// The kinds of resource the API groups by, with the label each is known by
/// on a proxy's series (Linkerd's `KindToL5DLabel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Namespace,
    Deployment,
    Pod,
    Service,
    Authority,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "po" | "pod" | "pods" => Kind::Pod,
            "svc" | "service" | "services" => Kind::Service,
            "au" | "authority" | "authorities" => Kind::Authority,
            _ => return None,
        })
    }

    /// The label a proxy's series carry for this kind (`dst_<label>` on the
    /// endpoint side).
    pub fn label(self) -> Option<&'static str> {
        Some(match self {
            Kind::Namespace => "namespace",
            Kind::Deployment => "deployment",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Authority => "authority",
        })
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Namespace => "ns",
            Kind::Deployment => "deploy",
            Kind::Pod => "po",
            Kind::Service => "svc",
            Kind::Authority => "au",
        }
    }
}

/// A resource, or every resource of a kind: `deploy`, `deploy/web`,
/// `ns/demo`, in a namespace or in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Resource {
    /// `kind[/name]`, in `namespace` (`None`: every namespace). Names must be
    /// DNS labels (authorities: host:port), so they are safe in a query.
    pub fn parse(text: &str, namespace: Option<&str>) -> Result<Resource, String> {
        let (kind, name) = match text.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (text, None),
        };
        let kind = Kind::parse(kind).ok_or_else(|| {
            format!("unknown resource kind {kind:?} in {text:?}: use ns, deploy, po, svc or au")
        })?;
        if let Some(name) = name {
            let ok = match kind {
                Kind::Authority => name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)),
                _ => weft_api::is_dns_label(name),
            };
            if !ok || name.is_empty() {
                return Err(format!(
                    "{name:?} in {text:?} is not a {} name",
                    kind.short()
                ));
            }
        }
        if let Some(ns) = namespace
            && !weft_api::is_dns_label(ns)
        {
            return Err(format!("namespace {ns:?} is not a DNS label"));
        }
        // `ns/demo` names a namespace: it is its own scope.
        let (namespace, name) = match kind {
            Kind::Namespace => (name.map(str::to_string), name.map(str::to_string)),
            _ => (namespace.map(str::to_string), name.map(str::to_string)),
        };
        Ok(Resource {
            kind,
            namespace,
            name,
        })
    }

    /// The namespace a query is limited to, if any.
    fn scoped_namespace(&self) -> Option<&str> {
        match self.kind {
            Kind::Authority => None,
            _ => self.namespace.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_and_bad_ones_say_why() {
        assert_eq!(
            Resource::parse("deploy/web", Some("demo")).unwrap(),
            Resource {
                kind: Kind::Deployment,
                namespace: Some("demo".into()),
                name: Some("web".into())
            }
        );
        assert_eq!(
            Resource::parse("ns/demo", None)
                .unwrap()
                .namespace
                .as_deref(),
            Some("demo")
        );
        assert!(
            Resource::parse("cronjob/x", None)
                .unwrap_err()
                .contains("unknown resource kind")
        );
        // Nothing that could end a PromQL string gets in.
        for bad in ["deploy/we\"b", "deploy/a}", "deploy/A"] {
            assert!(Resource::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Resource::parse("deploy", Some("de\"mo")).is_err());
    }
}
