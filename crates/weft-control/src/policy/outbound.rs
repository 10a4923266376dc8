//! Outbound policy (`io.linkerd.proxy.outbound.OutboundPolicies`): for what
//! a proxy connects to, the routes, filters, weighted backends, timeouts,
//! retries and circuit breaking it applies, as linkerd2-proxy reads them.
//!
//! A target is a Service (by cluster IP and port, or by its authority) or,
//! for an address outside the cluster networks, Linkerd's egress fallback
//! (forwarded as addressed). A Service port the Service does not define gets
//! Linkerd's `undefined-port` answer (forbidden). Routes are the HTTPRoutes
//! in the Service's namespace whose parentRef names it (and its port, when
//! given), ordered by name: the files store has no creation time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use linkerd2_proxy_api::destination::WeightedAddr;
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta::{self, Metadata};
use linkerd2_proxy_api::outbound as api;
use weft_api::traffic::{self, FailureAccrual, HttpRetry, Timeouts};
use weft_api::{
    BackendRef, HttpRoute, HttpRouteFilter, HttpRouteRule, Key, Service, opaque_ports,
    parse_route_duration,
};

use super::{PolicyConfig, egress, grpc, routes};
use crate::store::Snapshot;

/// What a proxy asked about, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service's port; `addr` is the address the proxy connects to, when
    /// it asked by address.
    Service {
        key: Key,
        port: u16,
        addr: Option<SocketAddr>,
    },
    /// An address outside the cluster networks, for a client in
    /// `namespace` (whose EgressNetworks apply to it).
    Egress {
        addr: SocketAddr,
        namespace: Option<String>,
    },
}

/// The client's namespace from a `TrafficSpec`'s `source_workload`:
/// linkerd2-proxy sends `{"ns":"demo","pod":"web-0"}`, Weft's proxy
/// `demo:web-0`. Anything else names no namespace.
fn source_namespace(workload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Workload {
        ns: String,
    }
    let ns = if workload.trim_start().starts_with('{') {
        serde_json::from_str::<Workload>(workload).ok()?.ns
    } else {
        workload.split_once(':')?.0.to_string()
    };
    weft_api::is_dns_label(&ns).then_some(ns)
}

/// Why a traffic spec has no answer: the proto's InvalidArgument and NotFound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    NotFound(String),
}

/// Resolves a `TrafficSpec` against the store.
pub fn target(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    spec: &api::TrafficSpec,
) -> Result<Target, Refusal> {
    use api::traffic_spec::Target as Spec;
    match spec.target.as_ref() {
        None => Err(Refusal::Invalid("the traffic spec names no target".into())),
        Some(Spec::Authority(authority)) => {
            let parsed = crate::destination::Target::parse(authority, &config.cluster_domain)
                .map_err(Refusal::Invalid)?;
            match parsed {
                crate::destination::Target::Service { key, port } => Ok(Target::Service {
                    key,
                    port,
                    addr: None,
                }),
                _ => Err(Refusal::NotFound(format!(
                    "{authority:?} is not <service>.<namespace>.svc.{}:<port>",
                    config.cluster_domain
                ))),
            }
        }
        Some(Spec::Addr(tcp)) => {
            let ip: IpAddr = tcp
                .ip
                .and_then(|ip| IpAddr::try_from(ip).ok())
                .ok_or_else(|| Refusal::Invalid("the target has no IP address".into()))?;
            let port = u16::try_from(tcp.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Refusal::Invalid(format!("{} is not a port", tcp.port)))?;
            let addr = SocketAddr::new(ip, port);
            if let Some((key, _)) = snapshot.service_by_cluster_ip(ip) {
                return Ok(Target::Service {
                    key: key.clone(),
                    port,
                    addr: Some(addr),
                });
            }
            if config.cluster_networks.iter().any(|n| n.contains(ip)) {
                return Err(Refusal::NotFound(format!("no Service has cluster IP {ip}")));
            }
            Ok(Target::Egress {
                addr,
                namespace: source_namespace(&spec.source_workload),
            })
        }
    }
}

/// The policy for `target` now; `None` when its Service has left the store.
pub fn policy(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    target: &Target,
) -> Option<api::OutboundPolicy> {
    match target {
        Target::Egress { addr, namespace } => Some(
            match egress_network(snapshot, config, addr.ip(), namespace.as_deref()) {
                Some((key, network)) => egress::policy(snapshot, config, key, network, *addr),
                None => egress_fallback(*addr, config.detect_timeout),
            },
        ),
        Target::Service { key, port, .. } => {
            let service = snapshot.services.get(key)?;
            if !service.spec.ports.iter().any(|p| p.port == *port) {
                return Some(undefined_port(key, *port));
            }
            Some(service_policy(snapshot, config, key, service, *port))
        }
    }
}

/// The policy for `target` as Weft's controller answers it: Linkerd's, with
/// the Service's or EgressNetwork's outbound rate limit.
pub fn answer(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    target: &Target,
) -> Option<weft_policy::wire::OutboundPolicy> {
    let linkerd = policy(snapshot, config, target)?;
    let annotations = match target {
        Target::Service { key, .. } => snapshot.services.get(key).map(|s| &s.metadata.annotations),
        Target::Egress { addr, namespace } => {
            egress_network(snapshot, config, addr.ip(), namespace.as_deref())
                .map(|(_, e)| &e.metadata.annotations)
        }
    };
    let limit = annotations.and_then(|a| traffic::outbound_rate_limit(a).ok().flatten());
    Some(weft_policy::wire::OutboundPolicy {
        weft_rate_limit: limit.map(|rps| weft_policy::wire::RateLimit {
            requests_per_second: rps,
        }),
        weft_route_accruals: route_accruals(snapshot, target),
        ..linkerd.into()
    })
}

/// The circuit breakers written on a Service's routes (Weft's per-route
/// failure accrual: Linkerd reads these annotations on Services only).
fn route_accruals(snapshot: &Snapshot, target: &Target) -> Vec<weft_policy::wire::RouteAccrual> {
    let Target::Service { key, port, .. } = target else {
        return Vec::new();
    };
    let attached = |parents: &[weft_api::ParentRef], ns: &str| {
        ns == key.namespace && attaches(parents, ns, key, *port)
    };
    let breaker = |annotations| {
        traffic::failure_accrual(annotations)
            .ok()
            .flatten()
            .map(failure_accrual)
    };
    let http = snapshot
        .http_routes
        .iter()
        .filter(|(k, r)| attached(&r.spec.parent_refs, &k.namespace))
        .filter_map(|(k, r)| Some((routes::route_metadata(k), breaker(&r.metadata.annotations)?)));
    let grpc = snapshot
        .grpc_routes
        .iter()
        .filter(|(k, r)| attached(&r.spec.parent_refs, &k.namespace))
        .filter_map(|(k, r)| Some((grpc::route_metadata(k), breaker(&r.metadata.annotations)?)));
    http.chain(grpc)
        .map(|(route, accrual)| weft_policy::wire::RouteAccrual {
            route: Some(route),
            accrual: Some(accrual),
        })
        .collect()
}

fn service_resource(key: &Key, port: u16) -> Metadata {
    Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "core".into(),
            kind: "Service".into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

pub(super) fn named_default(name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(meta::metadata::Kind::Default(name.into())),
    })
}

pub(super) fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// Linkerd's queue for every backend: 100 requests, failing fast after 3 s.
pub(super) fn queue() -> api::Queue {
    api::Queue {
        capacity: 100,
        failfast_timeout: proto_duration(Duration::from_secs(3)),
    }
}

/// Linkerd's balancer: peak EWMA, 30 ms until measured, 10 s decay.
fn peak_ewma() -> api::backend::balance_p2c::Load {
    api::backend::balance_p2c::Load::PeakEwma(api::backend::balance_p2c::PeakEwma {
        default_rtt: proto_duration(Duration::from_millis(30)),
        decay: proto_duration(Duration::from_secs(10)),
    })
}

/// A Service's port as a balanced backend, its endpoints from `Destination`.
pub(super) fn service_backend(config: &PolicyConfig, key: &Key, port: u16) -> api::Backend {
    api::Backend {
        metadata: Some(service_resource(key, port)),
        queue: Some(queue()),
        kind: Some(api::backend::Kind::Balancer(api::backend::BalanceP2c {
            discovery: Some(api::backend::EndpointDiscovery {
                kind: Some(api::backend::endpoint_discovery::Kind::Dst(
                    api::backend::endpoint_discovery::DestinationGet {
                        path: format!(
                            "{}.{}.svc.{}:{port}",
                            key.name, key.namespace, config.cluster_domain
                        ),
                    },
                )),
            }),
            load: Some(peak_ewma()),
        })),
    }
}

pub(super) fn first_available(backend: api::Backend) -> api::http_route::Distribution {
    api::http_route::Distribution {
        kind: Some(api::http_route::distribution::Kind::FirstAvailable(
            api::http_route::distribution::FirstAvailable {
                backends: vec![api::http_route::RouteBackend {
                    backend: Some(backend),
                    ..Default::default()
                }],
            },
        )),
    }
}

pub(super) fn opaque_route(metadata: Option<Metadata>, backend: api::Backend) -> api::OpaqueRoute {
    use api::opaque_route::distribution::{FirstAvailable, Kind};
    api::OpaqueRoute {
        metadata,
        rules: vec![api::opaque_route::Rule {
            backends: Some(api::opaque_route::Distribution {
                kind: Some(Kind::FirstAvailable(FirstAvailable {
                    backends: vec![api::opaque_route::RouteBackend {
                        backend: Some(backend),
                        filters: Vec::new(),
                    }],
                })),
            }),
            filters: Vec::new(),
        }],
    }
}

/// Every request to the default backend (Linkerd's `http` default route).
/// A route for every request; with the Service's retry and timeout
/// annotations when it is a Service's default route (as Linkerd applies
/// them to every route of the Service).
fn default_http_route(
    metadata: Option<Metadata>,
    backend: api::Backend,
    retry: Option<&HttpRetry>,
    timeouts: &Timeouts,
) -> api::HttpRoute {
    let timeouts = (*timeouts != Timeouts::default()).then(|| route_api::Timeouts {
        response: timeouts.response.and_then(proto_duration),
        request: timeouts.request.and_then(proto_duration),
        idle: timeouts.idle.and_then(proto_duration),
    });
    api::HttpRoute {
        metadata,
        hosts: Vec::new(),
        rules: vec![api::http_route::Rule {
            matches: vec![routes::any_path()],
            backends: Some(first_available(backend)),
            retry: retry.map(http_retry),
            timeouts,
            ..Default::default()
        }],
    }
}

pub(super) fn detect(
    timeout: Duration,
    opaque: api::OpaqueRoute,
    http_routes: Vec<api::HttpRoute>,
    accrual: Option<api::FailureAccrual>,
) -> api::proxy_protocol::Kind {
    api::proxy_protocol::Kind::Detect(api::proxy_protocol::Detect {
        timeout: proto_duration(timeout),
        opaque: Some(api::proxy_protocol::Opaque {
            routes: vec![opaque],
        }),
        http1: Some(api::proxy_protocol::Http1 {
            routes: http_routes.clone(),
            failure_accrual: accrual,
        }),
        http2: Some(api::proxy_protocol::Http2 {
            routes: http_routes,
            failure_accrual: accrual,
        }),
    })
}

/// The EgressNetwork `ip` falls in for a client in `namespace`: among those
/// in the client's namespace and the global egress namespace whose networks
/// hold it, the most specific network first, then the client's own
/// namespace, then by name.
fn egress_network<'s>(
    snapshot: &'s Snapshot,
    config: &PolicyConfig,
    ip: IpAddr,
    namespace: Option<&str>,
) -> Option<(&'s Key, &'s weft_api::EgressNetwork)> {
    snapshot
        .egress_networks
        .iter()
        .filter(|(k, _)| {
            k.namespace == config.egress_namespace || Some(k.namespace.as_str()) == namespace
        })
        .filter_map(|(k, e)| {
            // No networks: everything outside the cluster, the least specific.
            let specificity = if e.spec.networks.is_empty() {
                Some(0)
            } else {
                e.spec
                    .networks
                    .iter()
                    .filter(|n| n.contains(ip))
                    .map(|n| u16::from(n.cidr.prefix) + 1)
                    .max()
            }?;
            let own = Some(k.namespace.as_str()) == namespace;
            Some(((specificity, own, std::cmp::Reverse(&k.name)), (k, &**e)))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, found)| found)
}

/// Linkerd's answer for an address outside the cluster: forwarded as addressed.
fn egress_fallback(addr: SocketAddr, timeout: Duration) -> api::OutboundPolicy {
    let backend = api::Backend {
        metadata: named_default("egress-fallback"),
        queue: Some(queue()),
        kind: Some(api::backend::Kind::Forward(WeightedAddr {
            addr: Some(addr.into()),
            weight: 1,
            ..Default::default()
        })),
    };
    api::OutboundPolicy {
        metadata: named_default("egress-fallback"),
        protocol: Some(api::ProxyProtocol {
            kind: Some(detect(
                timeout,
                opaque_route(named_default("egress-fallback"), backend.clone()),
                vec![default_http_route(
                    named_default("egress-fallback"),
                    backend,
                    None,
                    &Timeouts::default(),
                )],
                None,
            )),
        }),
    }
}

/// A port the Service does not define: refused, as Linkerd does.
fn undefined_port(key: &Key, port: u16) -> api::OutboundPolicy {
    use api::opaque_route::distribution::{Empty, Kind};
    let route = api::OpaqueRoute {
        metadata: named_default("undefined-port"),
        rules: vec![api::opaque_route::Rule {
            backends: Some(api::opaque_route::Distribution {
                kind: Some(Kind::Empty(Empty {})),
            }),
            filters: vec![api::opaque_route::Filter {
                kind: Some(api::opaque_route::filter::Kind::Forbidden(
                    linkerd2_proxy_api::opaque_route::Forbidden {},
                )),
            }],
        }],
    };
    api::OutboundPolicy {
        metadata: Some(service_resource(key, port)),
        protocol: Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Opaque(
                api::proxy_protocol::Opaque {
                    routes: vec![route],
                },
            )),
        }),
    }
}

fn attaches(parents: &[weft_api::ParentRef], route_ns: &str, service: &Key, port: u16) -> bool {
    parents.iter().any(|p| {
        p.is_service()
            && p.name == service.name
            && p.namespace.as_deref().unwrap_or(route_ns) == service.namespace
            && p.port.is_none_or(|p| p == port)
    })
}

fn service_policy(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    service: &Service,
    port: u16,
) -> api::OutboundPolicy {
    let backend = service_backend(config, key, port);
    let opaque = opaque_ports(&service.metadata)
        .unwrap_or_default()
        .iter()
        .any(|&(lo, hi)| lo <= port && port <= hi);
    let opaque_default = opaque_route(named_default("opaq"), backend.clone());
    let kind = if opaque {
        api::proxy_protocol::Kind::Opaque(api::proxy_protocol::Opaque {
            routes: vec![opaque_default],
        })
    } else {
        let annotations = &service.metadata.annotations;
        let service_retry = traffic::http_retry(annotations).ok().flatten();
        let service_timeouts = traffic::timeouts(annotations).unwrap_or_default();
        let mut http_routes: Vec<api::HttpRoute> = snapshot
            .http_routes
            .iter()
            .filter(|(k, r)| {
                k.namespace == key.namespace
                    && attaches(&r.spec.parent_refs, &k.namespace, key, port)
            })
            .map(|(k, r)| {
                let retry = traffic::http_retry(&r.metadata.annotations)
                    .ok()
                    .flatten()
                    .or_else(|| service_retry.clone());
                let timeouts = traffic::timeouts(&r.metadata.annotations)
                    .ok()
                    .filter(|t| *t != Timeouts::default())
                    .unwrap_or_else(|| service_timeouts.clone());
                let defaults = RouteDefaults {
                    port,
                    backend: &backend,
                    retry,
                    timeouts,
                    egress: None,
                };
                http_route(snapshot, config, k, r, &defaults)
            })
            .collect();
        if http_routes.is_empty() {
            http_routes.push(default_http_route(
                named_default("http"),
                backend.clone(),
                service_retry.as_ref(),
                &service_timeouts,
            ));
        }
        let accrual = traffic::failure_accrual(annotations)
            .ok()
            .flatten()
            .map(failure_accrual);
        // GRPCRoutes, when any attach, are the port's routes (as in Linkerd).
        let service_grpc_retry = traffic::grpc_retry(annotations).ok().flatten();
        let grpc_routes: Vec<api::GrpcRoute> = snapshot
            .grpc_routes
            .iter()
            .filter(|(k, r)| {
                k.namespace == key.namespace
                    && attaches(&r.spec.parent_refs, &k.namespace, key, port)
            })
            .map(|(k, r)| {
                let annotations = &r.metadata.annotations;
                let retry = traffic::grpc_retry(annotations)
                    .ok()
                    .flatten()
                    .or_else(|| service_grpc_retry.clone());
                let timeouts = traffic::timeouts(annotations)
                    .ok()
                    .filter(|t| *t != Timeouts::default())
                    .unwrap_or_else(|| service_timeouts.clone());
                grpc::route(snapshot, config, k, r, port, &backend, retry, &timeouts)
            })
            .collect();
        if grpc_routes.is_empty() {
            detect(config.detect_timeout, opaque_default, http_routes, accrual)
        } else {
            api::proxy_protocol::Kind::Grpc(api::proxy_protocol::Grpc {
                routes: grpc_routes,
                failure_accrual: accrual,
            })
        }
    };
    api::OutboundPolicy {
        metadata: Some(service_resource(key, port)),
        protocol: Some(api::ProxyProtocol { kind: Some(kind) }),
    }
}

fn backoff(a: &FailureAccrual) -> api::ExponentialBackoff {
    api::ExponentialBackoff {
        min_backoff: proto_duration(a.min_penalty),
        max_backoff: proto_duration(a.max_penalty),
        jitter_ratio: a.jitter,
        respect_retry_after_hint: false,
    }
}

fn failure_accrual(a: FailureAccrual) -> api::FailureAccrual {
    api::FailureAccrual {
        kind: Some(api::failure_accrual::Kind::ConsecutiveFailures(
            api::failure_accrual::ConsecutiveFailures {
                max_failures: a.max_failures,
                backoff: Some(backoff(&a)),
            },
        )),
        ejection: None,
    }
}

/// What a route's rules take from their parent when they say nothing.
pub(super) struct RouteDefaults<'a> {
    pub port: u16,
    pub backend: &'a api::Backend,
    pub retry: Option<HttpRetry>,
    pub timeouts: Timeouts,
    /// An EgressNetwork parent: backendRefs naming it forward to the address.
    pub egress: Option<&'a Key>,
}

pub(super) fn http_route(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    route: &HttpRoute,
    defaults: &RouteDefaults,
) -> api::HttpRoute {
    let RouteDefaults {
        port,
        backend: default_backend,
        retry,
        timeouts,
        egress,
    } = defaults;
    let port = *port;
    let rule = |r: &HttpRouteRule| {
        let backends = if r.backend_refs.is_empty() {
            first_available((*default_backend).clone())
        } else {
            api::http_route::Distribution {
                kind: Some(api::http_route::distribution::Kind::RandomAvailable(
                    api::http_route::distribution::RandomAvailable {
                        backends: r
                            .backend_refs
                            .iter()
                            .map(|b| match egress {
                                Some(parent) if is_egress_ref(b) => egress::weighted_backend(
                                    parent,
                                    &key.namespace,
                                    b,
                                    default_backend,
                                ),
                                _ => weighted_backend(snapshot, config, &key.namespace, b, port),
                            })
                            .collect(),
                    },
                )),
            }
        };
        // A rule's own timeouts (Gateway API: request, backendRequest)
        // before the annotations'.
        let own = r.timeouts.as_ref();
        let parsed = |v: Option<&String>| v.and_then(|v| parse_route_duration(v).ok());
        let request = parsed(own.and_then(|t| t.request.as_ref())).or(timeouts.request);
        let response = parsed(own.and_then(|t| t.backend_request.as_ref())).or(timeouts.response);
        #[allow(deprecated)]
        api::http_route::Rule {
            matches: routes::rule_matches(&r.matches),
            filters: r.filters.iter().map(filter).collect(),
            backends: Some(backends),
            request_timeout: response.and_then(proto_duration),
            timeouts: Some(route_api::Timeouts {
                response: response.and_then(proto_duration),
                request: request.and_then(proto_duration),
                idle: timeouts.idle.and_then(proto_duration),
            }),
            retry: retry.as_ref().map(http_retry),
            allow_l5d_request_headers: false,
        }
    };
    let rules = if route.spec.rules.is_empty() {
        vec![rule(&HttpRouteRule::default())]
    } else {
        route.spec.rules.iter().map(rule).collect()
    };
    api::HttpRoute {
        metadata: Some(routes::route_metadata(key)),
        hosts: route.spec.hostnames.iter().map(|h| host_match(h)).collect(),
        rules,
    }
}

pub(super) fn host_match(host: &str) -> route_api::HostMatch {
    use route_api::host_match::{Match, Suffix};
    let host = host.to_ascii_lowercase();
    route_api::HostMatch {
        r#match: Some(match host.strip_prefix("*.") {
            Some(suffix) => Match::Suffix(Suffix {
                reverse_labels: suffix.rsplit('.').map(String::from).collect(),
            }),
            None => Match::Exact(host),
        }),
    }
}

fn http_retry(r: &HttpRetry) -> api::http_route::Retry {
    use api::http_route::retry::{Conditions, conditions::StatusRange};
    api::http_route::Retry {
        max_retries: r.limit,
        max_request_bytes: 64 * 1024,
        conditions: Some(Conditions {
            status_ranges: r
                .statuses
                .iter()
                .map(|&(start, end)| StatusRange {
                    start: u32::from(start),
                    end: u32::from(end),
                })
                .collect(),
        }),
        timeout: r.timeout.and_then(proto_duration),
        backoff: Some(retry_backoff()),
    }
}

/// Linkerd's back-off between retries: 25 ms doubling to 250 ms, jittered.
pub(super) fn retry_backoff() -> api::ExponentialBackoff {
    api::ExponentialBackoff {
        min_backoff: proto_duration(Duration::from_millis(25)),
        max_backoff: proto_duration(Duration::from_millis(250)),
        jitter_ratio: 1.0,
        respect_retry_after_hint: false,
    }
}

/// Whether a backendRef names an EgressNetwork.
fn is_egress_ref(b: &BackendRef) -> bool {
    b.kind
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case("EgressNetwork"))
}

/// What a backendRef names: a Service's port, or (missing) why not.
pub(super) enum BackendRefTarget {
    Service(Box<api::Backend>),
    Missing(String),
}

/// A backendRef resolved against the store, with its weight.
pub(super) fn backend_ref(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    route_ns: &str,
    b: &BackendRef,
    parent_port: u16,
) -> (BackendRefTarget, u32) {
    let key = Key {
        namespace: b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
        name: b.name.clone(),
    };
    let port = b.port.unwrap_or(parent_port);
    let exists = snapshot
        .services
        .get(&key)
        .is_some_and(|s| s.spec.ports.iter().any(|p| p.port == port));
    let target = if exists {
        BackendRefTarget::Service(Box::new(service_backend(config, &key, port)))
    } else {
        BackendRefTarget::Missing(format!("Service not found {key}:{port}"))
    };
    (target, b.weight.unwrap_or(1))
}

/// The backend of a missing backendRef: it has no endpoints, and its
/// failure filter answers instead.
pub(super) fn invalid_backend() -> api::Backend {
    api::Backend {
        metadata: named_default("invalid"),
        queue: Some(queue()),
        kind: None,
    }
}

/// A route backend that answers 500 with `message`, as Linkerd's do for a
/// backendRef that cannot be served.
pub(super) fn failing_backend(message: String) -> api::http_route::RouteBackend {
    api::http_route::RouteBackend {
        backend: Some(invalid_backend()),
        filters: vec![api::http_route::Filter {
            kind: Some(api::http_route::filter::Kind::FailureInjector(
                route_api::HttpFailureInjector {
                    status: 500,
                    message,
                    ratio: None,
                },
            )),
        }],
        ..Default::default()
    }
}

/// A backendRef: a Service's port if it exists; otherwise a backend that
/// answers 500 naming what is missing, as Linkerd's does.
pub(super) fn weighted_backend(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    route_ns: &str,
    b: &BackendRef,
    parent_port: u16,
) -> api::http_route::WeightedRouteBackend {
    let (target, weight) = backend_ref(snapshot, config, route_ns, b, parent_port);
    let route_backend = match target {
        BackendRefTarget::Service(backend) => api::http_route::RouteBackend {
            backend: Some(*backend),
            ..Default::default()
        },
        BackendRefTarget::Missing(message) => failing_backend(message),
    };
    api::http_route::WeightedRouteBackend {
        backend: Some(route_backend),
        weight,
    }
}

fn headers(list: &[weft_api::Header]) -> Option<linkerd2_proxy_api::http_types::Headers> {
    use linkerd2_proxy_api::http_types::{Headers, headers::Header};
    (!list.is_empty()).then(|| Headers {
        headers: list
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone().into_bytes(),
            })
            .collect(),
    })
}

pub(super) fn request_header_modifier(
    m: &weft_api::HeaderModifier,
) -> route_api::RequestHeaderModifier {
    route_api::RequestHeaderModifier {
        add: headers(&m.add),
        set: headers(&m.set),
        remove: m.remove.clone(),
    }
}

fn filter(f: &HttpRouteFilter) -> api::http_route::Filter {
    use api::http_route::filter::Kind;
    let kind = match f {
        HttpRouteFilter::RequestHeaderModifier {
            request_header_modifier: m,
        } => Kind::RequestHeaderModifier(request_header_modifier(m)),
        HttpRouteFilter::ResponseHeaderModifier {
            response_header_modifier: m,
        } => Kind::ResponseHeaderModifier(route_api::ResponseHeaderModifier {
            add: headers(&m.add),
            set: headers(&m.set),
            remove: m.remove.clone(),
        }),
        HttpRouteFilter::RequestRedirect {
            request_redirect: r,
        } => {
            use linkerd2_proxy_api::http_types::{Scheme, scheme};
            Kind::Redirect(route_api::RequestRedirect {
                scheme: r.scheme.as_deref().map(|s| Scheme {
                    r#type: Some(match s.to_ascii_lowercase().as_str() {
                        "http" => scheme::Type::Registered(scheme::Registered::Http.into()),
                        "https" => scheme::Type::Registered(scheme::Registered::Https.into()),
                        other => scheme::Type::Unregistered(other.into()),
                    }),
                }),
                host: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    use route_api::path_modifier::Replace;
                    use weft_api::PathModifier;
                    route_api::PathModifier {
                        replace: Some(match p {
                            PathModifier::ReplaceFullPath { replace_full_path } => {
                                Replace::Full(replace_full_path.clone())
                            }
                            PathModifier::ReplacePrefixMatch {
                                replace_prefix_match,
                            } => Replace::Prefix(replace_prefix_match.clone()),
                        }),
                    }
                }),
                port: r.port.map(u32::from).unwrap_or_default(),
                status: u32::from(r.status_code.unwrap_or(302)),
            })
        }
    };
    api::http_route::Filter { kind: Some(kind) }
}
