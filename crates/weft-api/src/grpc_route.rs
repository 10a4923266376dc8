//! `GRPCRoute` (gateway.networking.k8s.io/v1): outbound routes for gRPC
//! calls to a Service, matched by service and method. It shares parents,
//! backends and header matches with [`HttpRoute`](crate::HttpRoute).
//!
//! Linkerd's outbound API carries exact service and method names and only
//! the request header filter, so a regular-expression method match or a
//! response header filter is refused here, where it is written, rather than
//! dropped later.

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, check_name};
use crate::route::{BackendRef, HeaderModifier, ParentRef, ValueMatch, ValueMatchKind};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct GrpcRoute {
    pub metadata: Metadata,
    pub spec: GrpcRouteSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// Any one match selects the rule; none is every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<GrpcRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// Every present condition must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

/// A call's service (`package.Service`) and method; either may be left out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum GrpcRouteFilter {
    RequestHeaderModifier {
        request_header_modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        response_header_modifier: HeaderModifier,
    },
}

/// A gRPC service or method name: letters, digits, `_` and (services) `.`.
fn is_grpc_name(s: &str, dots: bool) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
}

pub(crate) fn check_grpc_route(r: &GrpcRoute) -> Result<(), String> {
    check_name(&r.metadata)?;
    crate::traffic::check_annotations(&r.metadata.annotations)?;
    if r.spec.parent_refs.is_empty() {
        return Err("spec.parentRefs needs a Service to attach to".into());
    }
    if let Some(p) = r.spec.parent_refs.iter().find(|p| !p.is_service()) {
        return Err(format!(
            "spec.parentRefs: {} {:?} is not a Service (a GRPCRoute routes outbound calls)",
            p.kind.as_deref().unwrap_or("(no kind)"),
            p.name
        ));
    }
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = |what: &str| format!("spec.rules[{i}].{what}");
        for m in &rule.matches {
            if let Some(method) = &m.method {
                if method.kind == ValueMatchKind::RegularExpression {
                    return Err(format!(
                        "{}: only Exact method matches are supported (as in Linkerd)",
                        at("matches.method")
                    ));
                }
                if method.service.is_none() && method.method.is_none() {
                    return Err(format!(
                        "{}: names neither a service nor a method",
                        at("matches.method")
                    ));
                }
                for (what, value, dots) in [
                    ("service", &method.service, true),
                    ("method", &method.method, false),
                ] {
                    if let Some(v) = value
                        && !is_grpc_name(v, dots)
                    {
                        return Err(format!(
                            "{}: {v:?} is not a gRPC {what} name",
                            at(&format!("matches.method.{what}"))
                        ));
                    }
                }
            }
            for h in &m.headers {
                if h.name.is_empty() {
                    return Err(format!("{}: a match needs a name", at("matches.headers")));
                }
                if h.kind == ValueMatchKind::RegularExpression {
                    regex::Regex::new(&h.value).map_err(|e| {
                        format!("{}: bad regular expression: {e}", at("matches.headers"))
                    })?;
                }
            }
        }
        if rule
            .filters
            .iter()
            .any(|f| matches!(f, GrpcRouteFilter::ResponseHeaderModifier { .. }))
        {
            return Err(format!(
                "{}: ResponseHeaderModifier is not supported on a GRPCRoute (Linkerd's outbound API cannot carry it)",
                at("filters")
            ));
        }
        for b in &rule.backend_refs {
            if b.kind
                .as_deref()
                .is_some_and(|k| !k.eq_ignore_ascii_case("Service"))
            {
                return Err(format!(
                    "{}: {:?} is not a Service",
                    at("backendRefs"),
                    b.kind
                ));
            }
        }
    }
    Ok(())
}
