//! What inbound and outbound policy both say about HTTPRoutes: a Gateway
//! API match as the proto's `HttpRouteMatch`, and the metadata routes carry.

use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta::{self, Metadata};
use weft_api::{HttpRouteMatch, Key, POLICY_GROUP, PathMatchKind, ValueMatch, ValueMatchKind};

/// A route's metadata, as route metrics label it.
pub fn route_metadata(key: &Key) -> Metadata {
    Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: POLICY_GROUP.into(),
            kind: "HTTPRoute".into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ..Default::default()
        })),
    }
}

/// A match on every request: a prefix of `/`.
pub fn any_path() -> route_api::HttpRouteMatch {
    route_match(&HttpRouteMatch::default())
}

/// A rule's matches; none is every request.
pub fn rule_matches(matches: &[HttpRouteMatch]) -> Vec<route_api::HttpRouteMatch> {
    if matches.is_empty() {
        vec![any_path()]
    } else {
        matches.iter().map(route_match).collect()
    }
}

/// Header conditions, as HTTP and gRPC route matches both carry them.
pub fn header_matches(list: &[ValueMatch]) -> Vec<route_api::HeaderMatch> {
    list.iter()
        .map(|h| route_api::HeaderMatch {
            name: h.name.clone(),
            value: Some(match h.kind {
                ValueMatchKind::Exact => {
                    route_api::header_match::Value::Exact(h.value.clone().into_bytes())
                }
                ValueMatchKind::RegularExpression => {
                    route_api::header_match::Value::Regex(h.value.clone())
                }
            }),
        })
        .collect()
}

pub fn route_match(m: &HttpRouteMatch) -> route_api::HttpRouteMatch {
    use route_api::path_match::Kind as Path;
    let path = match &m.path {
        None => Path::Prefix("/".into()),
        Some(p) => match p.kind {
            PathMatchKind::Exact => Path::Exact(p.value.clone()),
            PathMatchKind::PathPrefix => Path::Prefix(p.value.clone()),
            PathMatchKind::RegularExpression => Path::Regex(p.value.clone()),
        },
    };
    route_api::HttpRouteMatch {
        path: Some(route_api::PathMatch { kind: Some(path) }),
        headers: header_matches(&m.headers),
        query_params: m
            .query_params
            .iter()
            .map(|q| route_api::QueryParamMatch {
                name: q.name.clone(),
                value: Some(match q.kind {
                    ValueMatchKind::Exact => {
                        route_api::query_param_match::Value::Exact(q.value.clone())
                    }
                    ValueMatchKind::RegularExpression => {
                        route_api::query_param_match::Value::Regex(q.value.clone())
                    }
                }),
            })
            .collect(),
        method: m
            .method
            .as_deref()
            .and_then(|method| method.parse::<http::Method>().ok())
            .map(Into::into),
    }
}
