//! EgressNetworks as outbound policy: for an address outside the cluster
//! in an EgressNetwork, the HTTPRoutes attached to it, then Linkerd's
//! default egress route, which forwards the request (`Allow`) or answers
//! 403 (`Deny`); opaque traffic forwarded or refused the same way.
//!
//! The default route matches every request with the lowest precedence, so
//! an attached route with any match takes the requests it matches: under
//! `Deny`, the routes are what is let out.

use std::net::SocketAddr;

use linkerd2_proxy_api::destination::WeightedAddr;
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta::{self, Metadata};
use linkerd2_proxy_api::outbound as api;
use weft_api::traffic;
use weft_api::{BackendRef, EgressNetwork, Key, POLICY_GROUP, TrafficPolicy};

use super::PolicyConfig;
use super::outbound::{
    RouteDefaults, detect, failing_backend, first_available, http_route, named_default, queue,
};
use crate::store::Snapshot;

fn egress_resource(key: &Key, port: u16) -> Metadata {
    Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: POLICY_GROUP.into(),
            kind: "EgressNetwork".into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

/// The address itself, as the EgressNetwork's backend.
fn forward(key: &Key, addr: SocketAddr) -> api::Backend {
    api::Backend {
        metadata: Some(egress_resource(key, addr.port())),
        queue: Some(queue()),
        kind: Some(api::backend::Kind::Forward(WeightedAddr {
            addr: Some(addr.into()),
            weight: 1,
            ..Default::default()
        })),
    }
}

/// The policy of `addr`, which falls in EgressNetwork `key`.
pub(super) fn policy(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    network: &EgressNetwork,
    addr: SocketAddr,
) -> api::OutboundPolicy {
    let backend = forward(key, addr);
    let deny = network.spec.traffic_policy == TrafficPolicy::Deny;
    let mut http_routes: Vec<api::HttpRoute> = snapshot
        .http_routes
        .iter()
        .filter(|(k, r)| {
            r.spec.parent_refs.iter().any(|p| {
                p.is_egress_network()
                    && p.name == key.name
                    && p.namespace.as_deref().unwrap_or(&k.namespace) == key.namespace
                    && p.port.is_none_or(|p| p == addr.port())
            })
        })
        .map(|(k, r)| {
            let annotations = &r.metadata.annotations;
            let defaults = RouteDefaults {
                port: addr.port(),
                backend: &backend,
                retry: traffic::http_retry(annotations).ok().flatten(),
                timeouts: traffic::timeouts(annotations).unwrap_or_default(),
                egress: Some(key),
            };
            http_route(snapshot, config, k, r, &defaults)
        })
        .collect();
    http_routes.push(default_route(backend.clone(), deny));
    api::OutboundPolicy {
        metadata: Some(egress_resource(key, addr.port())),
        protocol: Some(api::ProxyProtocol {
            kind: Some(detect(
                config.detect_timeout,
                opaque_route(backend, deny),
                http_routes,
                None,
            )),
        }),
    }
}

/// Every request not taken by an attached route: forwarded, or refused
/// with Linkerd's 403.
fn default_route(backend: api::Backend, deny: bool) -> api::HttpRoute {
    let (name, filters) = if deny {
        (
            "http-egress-deny",
            vec![api::http_route::Filter {
                kind: Some(api::http_route::filter::Kind::FailureInjector(
                    route_api::HttpFailureInjector {
                        status: 403,
                        message: "traffic not allowed".into(),
                        ratio: None,
                    },
                )),
            }],
        )
    } else {
        ("http-egress-allow", Vec::new())
    };
    api::HttpRoute {
        metadata: named_default(name),
        hosts: Vec::new(),
        rules: vec![api::http_route::Rule {
            matches: vec![super::routes::any_path()],
            filters,
            backends: Some(first_available(backend)),
            ..Default::default()
        }],
    }
}

fn opaque_route(backend: api::Backend, deny: bool) -> api::OpaqueRoute {
    use api::opaque_route::distribution::{Empty, FirstAvailable, Kind};
    let (name, rule) = if deny {
        (
            "tcp-egress-deny",
            api::opaque_route::Rule {
                backends: Some(api::opaque_route::Distribution {
                    kind: Some(Kind::Empty(Empty {})),
                }),
                filters: vec![api::opaque_route::Filter {
                    kind: Some(api::opaque_route::filter::Kind::Forbidden(
                        linkerd2_proxy_api::opaque_route::Forbidden {},
                    )),
                }],
            },
        )
    } else {
        (
            "tcp-egress-allow",
            api::opaque_route::Rule {
                backends: Some(api::opaque_route::Distribution {
                    kind: Some(Kind::FirstAvailable(FirstAvailable {
                        backends: vec![api::opaque_route::RouteBackend {
                            backend: Some(backend),
                            filters: Vec::new(),
                        }],
                    })),
                }),
                filters: Vec::new(),
            },
        )
    };
    api::OpaqueRoute {
        metadata: named_default(name),
        rules: vec![rule],
    }
}

/// An attached route's backendRef to an EgressNetwork: the parent itself
/// forwards to the address; any other is refused with a 500, as Linkerd's.
pub(super) fn weighted_backend(
    parent: &Key,
    route_ns: &str,
    b: &BackendRef,
    forward: &api::Backend,
) -> api::http_route::WeightedRouteBackend {
    let named = Key {
        namespace: b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
        name: b.name.clone(),
    };
    let backend = if named == *parent {
        api::http_route::RouteBackend {
            backend: Some(forward.clone()),
            ..Default::default()
        }
    } else {
        failing_backend(format!(
            "a route's EgressNetwork backend must be its parent {parent}, not {named}"
        ))
    };
    api::http_route::WeightedRouteBackend {
        backend: Some(backend),
        weight: b.weight.unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_denies_or_forwards() {
        let key = Key {
            namespace: "demo".into(),
            name: "internet".into(),
        };
        let addr: SocketAddr = "203.0.113.7:443".parse().unwrap();
        let deny = default_route(forward(&key, addr), true);
        assert!(matches!(
            deny.rules[0].filters[0].kind,
            Some(api::http_route::filter::Kind::FailureInjector(ref f)) if f.status == 403
        ));
        assert!(
            default_route(forward(&key, addr), false).rules[0]
                .filters
                .is_empty()
        );
    }
}
