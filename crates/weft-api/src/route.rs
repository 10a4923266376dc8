//! `HTTPRoute`, in both of its homes (policy.linkerd.io/v1beta3 and
//! gateway.networking.k8s.io/v1): attached to a Server it makes inbound
//! authorization per route; attached to a Service (traffic policy) it
//! routes, filters and splits outbound requests.

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, check_name};
use crate::policy::POLICY_GROUP;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct HttpRoute {
    pub metadata: Metadata,
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// What a route attaches to: a Server (inbound) or a Service (outbound).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ParentRef {
    /// Whether it names a Server (policy.linkerd.io).
    pub fn is_server(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case("Server"))
            && self
                .group
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(POLICY_GROUP))
    }

    /// Whether it names an EgressNetwork (policy.linkerd.io).
    pub fn is_egress_network(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case("EgressNetwork"))
            && self
                .group
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(POLICY_GROUP))
    }

    /// Whether it names a Service (core, the Gateway API's mesh binding).
    pub fn is_service(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case("Service"))
            && self
                .group
                .as_deref()
                .is_none_or(|g| g.is_empty() || g == "core")
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Any one match selects the rule; none is a prefix match on `/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// Every present condition must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathMatchKind,
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum PathMatchKind {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header or query parameter condition.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchKind,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ValueMatchKind {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum HttpRouteFilter {
    RequestHeaderModifier {
        request_header_modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        response_header_modifier: HeaderModifier,
    },
    RequestRedirect {
        request_redirect: RequestRedirect,
    },
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// Gateway API's `HTTPPathModifier`: the whole path, or the matched prefix,
/// replaced.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum PathModifier {
    ReplaceFullPath {
        #[serde(rename = "replaceFullPath")]
        replace_full_path: String,
    },
    ReplacePrefixMatch {
        #[serde(rename = "replacePrefixMatch")]
        replace_prefix_match: String,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// The HTTP methods a route may name (RFC 9110 and PATCH).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A Go-style duration (`10s`, `1m30s`, `250ms`) as Gateway API writes them.
pub fn parse_route_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

pub(crate) fn check_http_route(r: &HttpRoute) -> Result<(), String> {
    check_name(&r.metadata)?;
    crate::traffic::check_annotations(&r.metadata.annotations)?;
    if r.spec.parent_refs.is_empty() {
        return Err("spec.parentRefs needs a Server (or a Service) to attach to".into());
    }
    for p in &r.spec.parent_refs {
        if !p.is_server() && !p.is_service() && !p.is_egress_network() {
            return Err(format!(
                "spec.parentRefs: {} {:?} is not a Server or EgressNetwork ({POLICY_GROUP}) or a Service",
                p.kind.as_deref().unwrap_or("(no kind)"),
                p.name
            ));
        }
    }
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = |what: &str| format!("spec.rules[{i}].{what}");
        for m in &rule.matches {
            if let Some(path) = &m.path {
                match path.kind {
                    PathMatchKind::RegularExpression => {
                        regex::Regex::new(&path.value).map_err(|e| {
                            format!("{}: bad regular expression: {e}", at("matches.path"))
                        })?;
                    }
                    _ if !path.value.starts_with('/') => {
                        return Err(format!(
                            "{}: {:?} does not start with '/'",
                            at("matches.path"),
                            path.value
                        ));
                    }
                    _ => {}
                }
            }
            for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                for v in list {
                    if v.name.is_empty() {
                        return Err(format!(
                            "{}: a match needs a name",
                            at(&format!("matches.{what}"))
                        ));
                    }
                    if v.kind == ValueMatchKind::RegularExpression {
                        regex::Regex::new(&v.value).map_err(|e| {
                            format!(
                                "{}: bad regular expression: {e}",
                                at(&format!("matches.{what}"))
                            )
                        })?;
                    }
                }
            }
            if let Some(method) = &m.method
                && !METHODS.contains(&method.as_str())
            {
                return Err(format!(
                    "{}: {method:?} is not an HTTP method",
                    at("matches.method")
                ));
            }
        }
        if let Some(t) = &rule.timeouts {
            let request = t.request.as_deref().map(parse_route_duration).transpose()?;
            let backend = t
                .backend_request
                .as_deref()
                .map(parse_route_duration)
                .transpose()?;
            if let (Some(request), Some(backend)) = (request, backend)
                && backend > request
            {
                return Err(format!(
                    "{}: backendRequest ({backend:?}) is longer than request ({request:?})",
                    at("timeouts")
                ));
            }
        }
        for b in &rule.backend_refs {
            if b.kind.as_deref().is_some_and(|k| {
                !k.eq_ignore_ascii_case("Service") && !k.eq_ignore_ascii_case("EgressNetwork")
            }) {
                return Err(format!(
                    "{}: {:?} is not a Service or an EgressNetwork",
                    at("backendRefs"),
                    b.kind
                ));
            }
        }
    }
    Ok(())
}
