//! GRPCRoutes as outbound policy: the proto's `GrpcRoute`, with exact
//! service and method matches, the request header filter, weighted
//! backends, timeouts and gRPC retries (`retry.linkerd.io/grpc`).

use linkerd2_proxy_api::grpc_route as grpc_api;
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta::{self, Metadata};
use linkerd2_proxy_api::outbound as api;
use weft_api::traffic::{GrpcRetry, GrpcRetryCode, Timeouts};
use weft_api::{GrpcRoute, GrpcRouteFilter, GrpcRouteMatch, GrpcRouteRule, Key};

use super::PolicyConfig;
use super::outbound::{
    BackendRefTarget, backend_ref, host_match, invalid_backend, proto_duration,
    request_header_modifier, retry_backoff,
};
use crate::store::Snapshot;

/// The gRPC status a missing backend answers with.
const GRPC_UNAVAILABLE: u32 = 14;

pub(super) fn route_metadata(key: &Key) -> Metadata {
    Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: weft_api::GATEWAY_GROUP.into(),
            kind: "GRPCRoute".into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ..Default::default()
        })),
    }
}

/// One GRPCRoute attached to a Service's `port`, whose default backend is
/// `backend`; `retry` and `timeouts` come from its annotations or its
/// Service's.
#[allow(clippy::too_many_arguments)]
pub(super) fn route(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    route: &GrpcRoute,
    port: u16,
    backend: &api::Backend,
    retry: Option<GrpcRetry>,
    timeouts: &Timeouts,
) -> api::GrpcRoute {
    let rule = |r: &GrpcRouteRule| {
        use api::grpc_route::distribution::{FirstAvailable, Kind, RandomAvailable};
        let kind = if r.backend_refs.is_empty() {
            Kind::FirstAvailable(FirstAvailable {
                backends: vec![api::grpc_route::RouteBackend {
                    backend: Some(backend.clone()),
                    ..Default::default()
                }],
            })
        } else {
            Kind::RandomAvailable(RandomAvailable {
                backends: r
                    .backend_refs
                    .iter()
                    .map(|b| weighted_backend(snapshot, config, &key.namespace, b, port))
                    .collect(),
            })
        };
        #[allow(deprecated)]
        api::grpc_route::Rule {
            matches: rule_matches(&r.matches),
            filters: r
                .filters
                .iter()
                .filter_map(|f| match f {
                    GrpcRouteFilter::RequestHeaderModifier {
                        request_header_modifier: m,
                    } => Some(api::grpc_route::Filter {
                        kind: Some(api::grpc_route::filter::Kind::RequestHeaderModifier(
                            request_header_modifier(m),
                        )),
                    }),
                    // Refused when the manifest is read.
                    GrpcRouteFilter::ResponseHeaderModifier { .. } => None,
                })
                .collect(),
            backends: Some(api::grpc_route::Distribution { kind: Some(kind) }),
            request_timeout: timeouts.response.and_then(proto_duration),
            timeouts: Some(route_api::Timeouts {
                response: timeouts.response.and_then(proto_duration),
                request: timeouts.request.and_then(proto_duration),
                idle: timeouts.idle.and_then(proto_duration),
            }),
            retry: retry.as_ref().map(grpc_retry),
            allow_l5d_request_headers: false,
        }
    };
    let rules = if route.spec.rules.is_empty() {
        vec![rule(&GrpcRouteRule::default())]
    } else {
        route.spec.rules.iter().map(rule).collect()
    };
    api::GrpcRoute {
        metadata: Some(route_metadata(key)),
        hosts: route.spec.hostnames.iter().map(|h| host_match(h)).collect(),
        rules,
    }
}

/// A rule's matches; none is every call.
fn rule_matches(matches: &[GrpcRouteMatch]) -> Vec<grpc_api::GrpcRouteMatch> {
    if matches.is_empty() {
        return vec![grpc_api::GrpcRouteMatch::default()];
    }
    matches
        .iter()
        .map(|m| grpc_api::GrpcRouteMatch {
            rpc: m.method.as_ref().map(|rpc| grpc_api::GrpcRpcMatch {
                service: rpc.service.clone().unwrap_or_default(),
                method: rpc.method.clone().unwrap_or_default(),
            }),
            headers: super::routes::header_matches(&m.headers),
        })
        .collect()
}

fn grpc_retry(r: &GrpcRetry) -> api::grpc_route::Retry {
    let has = |code| r.codes.contains(&code);
    api::grpc_route::Retry {
        max_retries: r.limit,
        max_request_bytes: 64 * 1024,
        conditions: Some(api::grpc_route::retry::Conditions {
            cancelled: has(GrpcRetryCode::Cancelled),
            deadine_exceeded: has(GrpcRetryCode::DeadlineExceeded),
            resource_exhausted: has(GrpcRetryCode::ResourceExhausted),
            internal: has(GrpcRetryCode::Internal),
            unavailable: has(GrpcRetryCode::Unavailable),
        }),
        timeout: r.timeout.and_then(proto_duration),
        backoff: Some(retry_backoff()),
    }
}

/// A backendRef: a Service's port, or a backend whose failure filter
/// answers UNAVAILABLE naming what is missing.
fn weighted_backend(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    route_ns: &str,
    b: &weft_api::BackendRef,
    parent_port: u16,
) -> api::grpc_route::WeightedRouteBackend {
    let (target, weight) = backend_ref(snapshot, config, route_ns, b, parent_port);
    let backend = match target {
        BackendRefTarget::Service(backend) => api::grpc_route::RouteBackend {
            backend: Some(*backend),
            ..Default::default()
        },
        BackendRefTarget::Missing(message) => api::grpc_route::RouteBackend {
            backend: Some(invalid_backend()),
            filters: vec![api::grpc_route::Filter {
                kind: Some(api::grpc_route::filter::Kind::FailureInjector(
                    grpc_api::GrpcFailureInjector {
                        code: GRPC_UNAVAILABLE,
                        message,
                        ratio: None,
                    },
                )),
            }],
            ..Default::default()
        },
    };
    api::grpc_route::WeightedRouteBackend {
        backend: Some(backend),
        weight,
    }
}
