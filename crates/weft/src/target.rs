//! What a command is about, in Linkerd's (and kubectl's) words:
//! `deploy/web`, `deploy web`, `po/web-0`, `svc/web-svc`, `ns/demo`, a bare
//! kind for all of it (`deploy`), with `-n NAMESPACE` or `--all-namespaces`.
//! Weft's own older spellings still work: `web` (a Deployment) and
//! `demo/web` (namespace/name). Every command that names resources parses
//! them here, so they all accept the same things.

use clap::Args;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    Pod,
    Service,
    Namespace,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "deploy" | "deployment" | "deployments" | "workload" | "workloads" => Kind::Deployment,
            "po" | "pod" | "pods" => Kind::Pod,
            "svc" | "service" | "services" => Kind::Service,
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            _ => return None,
        })
    }

    /// The column header and message word.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Namespace => "namespace",
        }
    }
}

/// `-n NAMESPACE` / `--all-namespaces`, shared by every command.
#[derive(Args, Clone, Debug, Default)]
pub struct NamespaceArgs {
    /// Only this namespace (default: every namespace, as the local mesh has few).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (the default; kept for kubectl and Linkerd habits).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// A kind, and optionally one name and one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Target {
    /// Parses `first` (and `second`, a name after a bare kind) in the
    /// context of `-n`.
    pub fn parse(
        first: &str,
        second: Option<&str>,
        namespaces: &NamespaceArgs,
    ) -> Result<Target, String> {
        let mut target = match (first.split_once('/'), second) {
            // deploy/web, po/web-0, ns/demo
            (Some((kind, name)), None) if Kind::parse(kind).is_some() => Target {
                kind: Kind::parse(kind).unwrap_or(Kind::Deployment),
                namespace: None,
                name: Some(name.to_string()),
            },
            // demo/web: namespace/name of a Deployment
            (Some((namespace, name)), None) => Target {
                kind: Kind::Deployment,
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
            },
            (Some(_), Some(extra)) => {
                return Err(format!(
                    "{first:?} already names one resource; {extra:?} is one too many"
                ));
            }
            // deploy web, deploy, web
            (None, second) => match Kind::parse(first) {
                Some(kind) => Target {
                    kind,
                    namespace: None,
                    name: second.map(str::to_string),
                },
                None if second.is_none() => Target {
                    kind: Kind::Deployment,
                    namespace: None,
                    name: Some(first.to_string()),
                },
                None => {
                    return Err(format!(
                        "unknown kind {first:?}: use deploy, po, svc or ns (e.g. deploy/web)"
                    ));
                }
            },
        };
        if target.name.as_deref() == Some("") {
            return Err(format!("{first:?} names no resource"));
        }
        if target.kind == Kind::Namespace {
            // ns/demo is "everything in demo".
            if let Some(ns) = target.name.take() {
                target.namespace = Some(ns);
            }
        }
        match (&target.namespace, &namespaces.namespace) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!("{first:?} is in namespace {a}, not {b} (-n)"));
            }
            (None, Some(b)) => target.namespace = Some(b.clone()),
            _ => {}
        }
        Ok(target)
    }

    /// Whether a resource in `namespace` named `name` is meant.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.name.as_deref().is_none_or(|n| n == name)
    }

    /// For messages: `deployment demo/web`, `every deployment in demo`.
    pub fn describe(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{} {ns}/{name}", self.kind.name()),
            (None, Some(name)) => format!("{} {name}", self.kind.name()),
            (Some(ns), None) => format!("any {} in {ns}", self.kind.name()),
            (None, None) => format!("any {}", self.kind.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(first: &str, second: Option<&str>, ns: Option<&str>) -> Result<Target, String> {
        let namespaces = NamespaceArgs {
            namespace: ns.map(str::to_string),
            all_namespaces: false,
        };
        Target::parse(first, second, &namespaces)
    }

    fn target(kind: Kind, ns: Option<&str>, name: Option<&str>) -> Target {
        Target {
            kind,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn linkerd_and_kubectl_spellings() {
        use Kind::*;
        let cases = [
            (
                "deploy/web",
                None,
                None,
                target(Deployment, None, Some("web")),
            ),
            (
                "deploy",
                Some("web"),
                Some("demo"),
                target(Deployment, Some("demo"), Some("web")),
            ),
            (
                "deploy",
                None,
                Some("demo"),
                target(Deployment, Some("demo"), None),
            ),
            ("workload", None, None, target(Deployment, None, None)),
            ("po/web-0", None, None, target(Pod, None, Some("web-0"))),
            (
                "svc/web-svc",
                None,
                Some("demo"),
                target(Service, Some("demo"), Some("web-svc")),
            ),
            ("ns/demo", None, None, target(Namespace, Some("demo"), None)),
            ("web", None, None, target(Deployment, None, Some("web"))),
            (
                "demo/web",
                None,
                None,
                target(Deployment, Some("demo"), Some("web")),
            ),
            (
                "demo/web",
                None,
                Some("demo"),
                target(Deployment, Some("demo"), Some("web")),
            ),
        ];
        for (first, second, ns, want) in cases {
            assert_eq!(
                parse(first, second, ns),
                Ok(want),
                "{first} {second:?} -n {ns:?}"
            );
        }
    }

    #[test]
    fn contradictions_and_nonsense_are_refused_with_the_reason() {
        for (first, second, ns, says) in [
            ("demo/web", None, Some("prod"), "not prod"),
            ("deploy/web", Some("x"), None, "one too many"),
            ("gizmo", Some("x"), None, "unknown kind"),
            ("deploy/", None, None, "names no resource"),
        ] {
            let err = parse(first, second, ns).unwrap_err();
            assert!(err.contains(says), "{first}: {err}");
        }
    }

    #[test]
    fn matching() {
        let t = parse("deploy/web", None, Some("demo")).unwrap();
        assert!(t.matches("demo", "web"));
        assert!(!t.matches("prod", "web"));
        assert!(!t.matches("demo", "webby"));
        assert!(
            parse("ns/demo", None, None)
                .unwrap()
                .matches("demo", "anything")
        );
    }
}
