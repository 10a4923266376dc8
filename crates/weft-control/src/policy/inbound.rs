//! One workload port's inbound policy, computed from a snapshot.
//!
//! The Server that selects the port decides (the first by name when several
//! do); without one, the workload's `config.linkerd.io/default-inbound-policy`
//! or the mesh-wide default does. Authorizations come from the
//! AuthorizationPolicies that target the Server, its namespace or one of
//! its routes; a policy whose authentications do not all exist is left out
//! (it cannot be satisfied). Linkerd's conventions are kept so that
//! linkerd2-proxy reads the answer as it reads its own controller's:
//! labels `group`/`kind`/`name` on servers and authorizations, a `default`
//! route when no HTTPRoute attaches, cluster networks where an
//! authorization names none.

use std::collections::HashMap;

use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::meta::{self, Metadata};
use linkerd2_proxy_api::net::IpNetwork;
use weft_api::{
    AuthorizationPolicy, Cidr, DEFAULT_INBOUND_POLICY_ANNOTATION, DefaultPolicy, ExternalWorkload,
    HttpRoute, IdentityMatch, Key, POLICY_GROUP, ProxyProtocol, REQUIRE_IDENTITY_PORTS_ANNOTATION,
    RefKind, Server, ServerPort, TargetRef, opaque_ports,
};

use super::{PolicyConfig, routes};
use crate::store::Snapshot;

/// The policy for `port` of `workload`; `None` when the store has no such workload.
pub fn server(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    workload: &Key,
    port: u16,
) -> Option<api::Server> {
    let w = snapshot.workloads.get(workload)?;
    let server = selecting_server(snapshot, w, port);
    Some(match server {
        Some((key, server)) => from_server(snapshot, config, &key, server),
        None => default_server(config, w, port),
    })
}

/// The Server in the workload's namespace that selects it and names `port`.
fn selecting_server<'a>(
    snapshot: &'a Snapshot,
    w: &ExternalWorkload,
    port: u16,
) -> Option<(Key, &'a Server)> {
    let ns = &w.metadata.namespace;
    snapshot
        .servers
        .iter()
        .filter(|(key, _)| &key.namespace == ns)
        .find(|(_, s)| {
            s.spec.selector().matches(&w.metadata.labels)
                && match &s.spec.port {
                    ServerPort::Number(n) => *n == port,
                    ServerPort::Name(name) => w
                        .spec
                        .ports
                        .iter()
                        .any(|p| p.port == port && p.name.as_deref() == Some(name)),
                }
        })
        .map(|(key, s)| (key.clone(), &**s))
}

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".into(), group.into()),
        ("kind".into(), kind.into()),
        ("name".into(), name.into()),
    ])
}

fn ports_in(list: Option<&String>, port: u16) -> bool {
    list.is_some_and(|l| {
        l.split(',').map(str::trim).any(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= port && port <= hi)
        })
    })
}

/// A port no Server selects.
fn default_server(config: &PolicyConfig, w: &ExternalWorkload, port: u16) -> api::Server {
    let annotations = &w.metadata.annotations;
    let policy = annotations
        .get(DEFAULT_INBOUND_POLICY_ANNOTATION)
        .and_then(|p| p.parse().ok())
        .unwrap_or(config.default_policy);
    // Ports that require identity take only meshed clients, whatever the
    // default says about unauthenticated ones.
    let require_identity = ports_in(annotations.get(REQUIRE_IDENTITY_PORTS_ANNOTATION), port);
    let opaque = opaque_ports(&w.metadata)
        .unwrap_or_default()
        .iter()
        .any(|&(lo, hi)| lo <= port && port <= hi);
    let authorizations = default_authorizations(config, policy, require_identity);
    let protocol = if opaque {
        api::proxy_protocol::Kind::Opaque(api::proxy_protocol::Opaque {})
    } else {
        detect(config, vec![default_route(&[])], None)
    };
    api::Server {
        protocol: Some(api::ProxyProtocol {
            kind: Some(protocol),
        }),
        server_ips: Vec::new(),
        authorizations,
        labels: labels("", "default", policy.as_str()),
    }
}

fn detect(
    config: &PolicyConfig,
    http_routes: Vec<api::HttpRoute>,
    http_local_rate_limit: Option<api::HttpLocalRateLimit>,
) -> api::proxy_protocol::Kind {
    api::proxy_protocol::Kind::Detect(api::proxy_protocol::Detect {
        timeout: prost_types::Duration::try_from(config.detect_timeout).ok(),
        http_routes,
        http_local_rate_limit,
    })
}

fn all_networks() -> Vec<Cidr> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .map(|n| n.parse().expect("a CIDR"))
        .collect()
}

fn network(cidr: &Cidr) -> IpNetwork {
    IpNetwork {
        ip: Some(cidr.addr.into()),
        prefix_len: u32::from(cidr.prefix),
    }
}

/// The authorization a default policy grants, named after it.
fn default_authorizations(
    config: &PolicyConfig,
    policy: DefaultPolicy,
    require_identity: bool,
) -> Vec<api::Authz> {
    let (networks, authenticated) = match policy {
        DefaultPolicy::Deny => return Vec::new(),
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => (all_networks(), false),
        DefaultPolicy::AllAuthenticated => (all_networks(), true),
        DefaultPolicy::ClusterUnauthenticated => (config.cluster_networks.clone(), false),
        DefaultPolicy::ClusterAuthenticated => (config.cluster_networks.clone(), true),
    };
    let authentication = if authenticated || require_identity {
        any_identity()
    } else {
        unauthenticated()
    };
    vec![api::Authz {
        networks: networks
            .iter()
            .map(|n| api::Network {
                net: Some(network(n)),
                except: Vec::new(),
            })
            .collect(),
        authentication: Some(authentication),
        labels: labels("", "default", policy.as_str()),
        metadata: Some(Metadata {
            kind: Some(meta::metadata::Kind::Default(policy.as_str().into())),
        }),
    }]
}

fn unauthenticated() -> api::Authn {
    api::Authn {
        permit: Some(api::authn::Permit::Unauthenticated(
            api::authn::PermitUnauthenticated {},
        )),
    }
}

fn any_identity() -> api::Authn {
    identities(Vec::new(), vec![api::IdentitySuffix { parts: Vec::new() }])
}

fn identities(exact: Vec<String>, suffixes: Vec<api::IdentitySuffix>) -> api::Authn {
    api::Authn {
        permit: Some(api::authn::Permit::MeshTls(api::authn::PermitMeshTls {
            clients: Some(api::authn::permit_mesh_tls::Clients::Identities(
                api::authn::permit_mesh_tls::PermitClientIdentities {
                    identities: exact
                        .into_iter()
                        .map(|name| api::Identity { name })
                        .collect(),
                    suffixes,
                },
            )),
        })),
    }
}

fn from_server(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    server: &Server,
) -> api::Server {
    let ns = &key.namespace;
    let targets =
        |r: &TargetRef, kind: RefKind, name: &str| r.kind() == Some(kind) && r.name == name;
    let policies = |matches: &dyn Fn(&TargetRef) -> bool| -> Vec<api::Authz> {
        snapshot
            .authorization_policies
            .iter()
            .filter(|(k, p)| &k.namespace == ns && matches(&p.spec.target_ref))
            .filter_map(|(k, p)| authz(snapshot, config, k, p))
            .collect()
    };
    let mut authorizations = policies(&|t: &TargetRef| {
        targets(t, RefKind::Server, &key.name) || targets(t, RefKind::Namespace, ns)
    });
    authorizations.extend(default_authorizations(
        config,
        server.spec.access_policy(),
        false,
    ));
    let mut routes: Vec<api::HttpRoute> = snapshot
        .http_routes
        .iter()
        .filter(|(k, r)| &k.namespace == ns && attaches(r, &key.name))
        .map(|(k, r)| {
            http_route(
                k,
                r,
                policies(&|t: &TargetRef| targets(t, RefKind::HttpRoute, &k.name)),
            )
        })
        .collect();
    if routes.is_empty() {
        routes.push(default_route(&[]));
    }
    let rate_limit = snapshot
        .rate_limits
        .iter()
        .find(|(k, l)| &k.namespace == ns && l.spec.target_ref.name == key.name)
        .map(|(k, l)| rate_limit(config, k, l));
    use api::proxy_protocol as pp;
    let protocol = match server.spec.proxy_protocol {
        ProxyProtocol::Unknown => detect(config, routes, rate_limit),
        ProxyProtocol::Http1 => pp::Kind::Http1(pp::Http1 {
            routes,
            local_rate_limit: rate_limit,
        }),
        ProxyProtocol::Http2 => pp::Kind::Http2(pp::Http2 {
            routes,
            local_rate_limit: rate_limit,
        }),
        // gRPC routes are GRPCRoutes (the traffic policy issue); until then a
        // gRPC Server is served as HTTP/2, whose routes match gRPC paths.
        ProxyProtocol::Grpc => pp::Kind::Http2(pp::Http2 {
            routes,
            local_rate_limit: rate_limit,
        }),
        ProxyProtocol::Opaque => pp::Kind::Opaque(pp::Opaque {}),
        ProxyProtocol::Tls => pp::Kind::Tls(pp::Tls {}),
    };
    api::Server {
        protocol: Some(api::ProxyProtocol {
            kind: Some(protocol),
        }),
        server_ips: Vec::new(),
        authorizations,
        labels: labels(POLICY_GROUP, "server", &key.name),
    }
}

fn attaches(route: &HttpRoute, server: &str) -> bool {
    route
        .spec
        .parent_refs
        .iter()
        .any(|p| p.is_server() && p.name == server)
}

/// One AuthorizationPolicy as an `Authz`; `None` when one of its required
/// authentications does not exist.
fn authz(
    snapshot: &Snapshot,
    config: &PolicyConfig,
    key: &Key,
    policy: &AuthorizationPolicy,
) -> Option<api::Authz> {
    let ns = &key.namespace;
    let mut networks: Option<Vec<api::Network>> = None;
    let mut authentication = None;
    for r in &policy.spec.required_authentication_refs {
        let in_ns = Key {
            namespace: r.namespace.clone().unwrap_or_else(|| ns.clone()),
            name: r.name.clone(),
        };
        match r.kind()? {
            RefKind::NetworkAuthentication => {
                let auth = snapshot.network_authentications.get(&in_ns)?;
                networks = Some(
                    auth.spec
                        .networks
                        .iter()
                        .map(|n| api::Network {
                            net: Some(network(&n.cidr)),
                            except: n.except.iter().map(network).collect(),
                        })
                        .collect(),
                );
            }
            RefKind::MeshTlsAuthentication => {
                let auth = snapshot.meshtls_authentications.get(&in_ns)?;
                let (mut exact, mut suffixes) = (Vec::new(), Vec::new());
                for id in &auth.spec.identities {
                    match IdentityMatch::parse(id).ok()? {
                        IdentityMatch::Any => {
                            suffixes.push(api::IdentitySuffix { parts: Vec::new() })
                        }
                        IdentityMatch::Suffix(s) => suffixes.push(api::IdentitySuffix {
                            parts: s.split('.').map(String::from).collect(),
                        }),
                        IdentityMatch::Exact(id) => exact.push(id),
                    }
                }
                for id in &auth.spec.identity_refs {
                    match id.kind()? {
                        RefKind::ServiceAccount => {
                            let sa_ns = id.namespace.as_deref().unwrap_or(&auth.metadata.namespace);
                            exact.push(config.identity(&id.name, sa_ns));
                        }
                        RefKind::Namespace => suffixes.push(api::IdentitySuffix {
                            parts: config.namespace_suffix(&id.name),
                        }),
                        _ => return None,
                    }
                }
                authentication = Some(identities(exact, suffixes));
            }
            RefKind::ServiceAccount => {
                authentication = Some(identities(
                    vec![config.identity(&in_ns.name, &in_ns.namespace)],
                    Vec::new(),
                ));
            }
            _ => return None,
        }
    }
    let networks = networks.unwrap_or_else(|| {
        config
            .cluster_networks
            .iter()
            .map(|n| api::Network {
                net: Some(network(n)),
                except: Vec::new(),
            })
            .collect()
    });
    Some(api::Authz {
        networks,
        authentication: Some(authentication.unwrap_or_else(unauthenticated)),
        labels: labels(POLICY_GROUP, "authorizationpolicy", &key.name),
        metadata: Some(Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: POLICY_GROUP.into(),
                kind: "authorizationpolicy".into(),
                name: key.name.clone(),
                ..Default::default()
            })),
        }),
    })
}

/// Linkerd's route for servers no HTTPRoute attaches to: every request.
fn default_route(authorizations: &[api::Authz]) -> api::HttpRoute {
    api::HttpRoute {
        metadata: Some(Metadata {
            kind: Some(meta::metadata::Kind::Default("default".into())),
        }),
        hosts: Vec::new(),
        authorizations: authorizations.to_vec(),
        rules: vec![api::http_route::Rule {
            matches: vec![routes::any_path()],
            filters: Vec::new(),
        }],
    }
}

fn http_route(key: &Key, route: &HttpRoute, authorizations: Vec<api::Authz>) -> api::HttpRoute {
    let rules = if route.spec.rules.is_empty() {
        vec![api::http_route::Rule {
            matches: vec![routes::any_path()],
            filters: Vec::new(),
        }]
    } else {
        route
            .spec
            .rules
            .iter()
            .map(|rule| api::http_route::Rule {
                matches: routes::rule_matches(&rule.matches),
                filters: Vec::new(),
            })
            .collect()
    };
    api::HttpRoute {
        metadata: Some(routes::route_metadata(key)),
        hosts: Vec::new(),
        authorizations,
        rules,
    }
}

fn rate_limit(
    config: &PolicyConfig,
    key: &Key,
    policy: &weft_api::HttpLocalRateLimitPolicy,
) -> api::HttpLocalRateLimit {
    use api::http_local_rate_limit as rl;
    let limit = |l: &weft_api::Limit| rl::Limit {
        requests_per_second: l.requests_per_second,
    };
    api::HttpLocalRateLimit {
        metadata: Some(Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: POLICY_GROUP.into(),
                kind: "HTTPLocalRateLimitPolicy".into(),
                name: key.name.clone(),
                ..Default::default()
            })),
        }),
        total: policy.spec.total.as_ref().map(limit),
        identity: policy.spec.identity.as_ref().map(limit),
        overrides: policy
            .spec
            .overrides
            .iter()
            .map(|o| rl::Override {
                limit: Some(rl::Limit {
                    requests_per_second: o.requests_per_second,
                }),
                clients: Some(rl::r#override::ClientIdentities {
                    identities: o
                        .client_refs
                        .iter()
                        .map(|r| api::Identity {
                            name: config.identity(
                                &r.name,
                                r.namespace.as_deref().unwrap_or(&key.namespace),
                            ),
                        })
                        .collect(),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::http_route as route_api;
    use std::path::Path;

    use linkerd2_proxy_api::inbound::proxy_protocol::Kind;
    use weft_api::parse_manifests;

    use super::*;

    const POLICY: &str = include_str!("../../../../fuzz/seeds/manifests/policy.yaml");

    fn workload(name: &str, app: &str, annotations: &str) -> String {
        format!(
            "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}, annotations: {{{annotations}}}}}\nspec:\n  ports: [{{name: grpc, port: 8080}}]\n  workloadIPs: [{{ip: 198.18.3.4}}]\n"
        )
    }

    fn snapshot(extra: &str) -> Snapshot {
        let text = format!("{POLICY}{extra}");
        let (m, errors) = parse_manifests(Path::new("m.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        Snapshot::new(1, m, Vec::new())
    }

    fn key(name: &str) -> Key {
        Key {
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    fn names(authz: &[api::Authz]) -> Vec<String> {
        authz.iter().map(|a| a.labels["name"].clone()).collect()
    }

    #[test]
    fn a_server_with_routes_and_policies_is_served_as_linkerd_serves_it() {
        let s = snapshot(&workload("voting-0", "voting-svc", ""));
        let config = PolicyConfig::default();
        let server = server(&s, &config, &key("voting-0"), 8080).unwrap();
        assert_eq!(server.labels["kind"], "server");
        assert_eq!(server.labels["name"], "voting-grpc");
        // `demo-reads` targets the namespace; accessPolicy deny adds nothing.
        assert_eq!(names(&server.authorizations), ["demo-reads"]);
        let Some(Kind::Http2(http2)) = server.protocol.unwrap().kind else {
            panic!("a gRPC Server is served as HTTP/2")
        };
        let routes: Vec<(String, Vec<String>)> = http2
            .routes
            .iter()
            .map(|r| {
                let Some(meta::metadata::Kind::Resource(res)) = &r.metadata.as_ref().unwrap().kind
                else {
                    panic!("a route resource")
                };
                (res.name.clone(), names(&r.authorizations))
            })
            .collect();
        assert_eq!(
            routes,
            [
                ("voting-results".to_string(), vec![]),
                ("voting-vote".to_string(), vec!["web-votes".to_string()])
            ]
        );
        // web-votes: web's identity, from the mesh network less its exception.
        let vote = &http2.routes[1];
        let authz = &vote.authorizations[0];
        let Some(api::authn::Permit::MeshTls(mtls)) =
            &authz.authentication.as_ref().unwrap().permit
        else {
            panic!("mesh TLS")
        };
        let Some(api::authn::permit_mesh_tls::Clients::Identities(ids)) = &mtls.clients else {
            panic!("identities")
        };
        let web = "web.demo.serviceaccount.identity.weft.cluster.local";
        assert_eq!(
            ids.identities
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            [web, web],
            "the literal identity and the ServiceAccount reference"
        );
        assert_eq!(authz.networks.len(), 2);
        assert_eq!(authz.networks[0].except.len(), 1);
        let m = &vote.rules[0].matches[0];
        assert_eq!(
            m.path.as_ref().unwrap().kind,
            Some(route_api::path_match::Kind::Exact(
                "/weft.demo.VotingService/Vote".into()
            ))
        );
        assert!(m.method.is_some());
    }

    #[test]
    fn a_port_no_server_selects_gets_the_default_policy() {
        let s = snapshot(&format!(
            "{}{}{}",
            workload("emoji-0", "emoji-svc", ""),
            workload(
                "locked-0",
                "locked",
                "config.linkerd.io/default-inbound-policy: deny"
            ),
            workload(
                "strict-0",
                "strict",
                "config.linkerd.io/proxy-require-identity-inbound-ports: \"8080\", config.linkerd.io/opaque-ports: \"8080\""
            ),
        ));
        let mut config = PolicyConfig::default();
        let emoji = server(&s, &config, &key("emoji-0"), 8080).unwrap();
        assert_eq!(emoji.labels["kind"], "default");
        assert_eq!(emoji.labels["name"], "all-unauthenticated");
        assert_eq!(names(&emoji.authorizations), ["all-unauthenticated"]);
        assert!(matches!(
            emoji.authorizations[0]
                .authentication
                .as_ref()
                .unwrap()
                .permit,
            Some(api::authn::Permit::Unauthenticated(_))
        ));
        let Some(Kind::Detect(detect)) = emoji.protocol.unwrap().kind else {
            panic!("detected")
        };
        assert_eq!(detect.timeout.unwrap().seconds, 10);
        assert_eq!(detect.http_routes.len(), 1, "Linkerd's default route");

        let locked = server(&s, &config, &key("locked-0"), 8080).unwrap();
        assert_eq!(locked.labels["name"], "deny");
        assert!(locked.authorizations.is_empty());

        let strict = server(&s, &config, &key("strict-0"), 8080).unwrap();
        assert!(matches!(
            strict.authorizations[0]
                .authentication
                .as_ref()
                .unwrap()
                .permit,
            Some(api::authn::Permit::MeshTls(_))
        ));
        assert!(matches!(
            strict.protocol.unwrap().kind,
            Some(Kind::Opaque(_))
        ));

        config.default_policy = DefaultPolicy::ClusterAuthenticated;
        let emoji = server(&s, &config, &key("emoji-0"), 8080).unwrap();
        assert_eq!(emoji.labels["name"], "cluster-authenticated");
        assert_eq!(
            emoji.authorizations[0].networks.len(),
            config.cluster_networks.len()
        );
        assert!(server(&s, &config, &key("nobody-0"), 8080).is_none());
    }

    #[test]
    fn a_policy_whose_authentication_is_missing_authorizes_nobody() {
        let s = snapshot(&format!(
            "{}---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: dangling, namespace: demo}}\nspec:\n  targetRef: {{group: policy.linkerd.io, kind: Server, name: voting-grpc}}\n  requiredAuthenticationRefs:\n  - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: missing}}\n",
            workload("voting-0", "voting-svc", "")
        ));
        let server = server(&s, &PolicyConfig::default(), &key("voting-0"), 8080).unwrap();
        assert_eq!(names(&server.authorizations), ["demo-reads"]);
    }

    #[test]
    fn rate_limits_name_their_clients_by_identity() {
        let s = snapshot(
            "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: web-0, namespace: demo, labels: {app: web-svc}}\nspec:\n  ports: [{name: http, port: 8080}]\n  workloadIPs: [{ip: 198.18.3.5}]\n",
        );
        let server = server(&s, &PolicyConfig::default(), &key("web-0"), 8080).unwrap();
        assert_eq!(server.labels["name"], "external-http");
        let Some(Kind::Http1(http1)) = server.protocol.unwrap().kind else {
            panic!("HTTP/1")
        };
        let limit = http1.local_rate_limit.unwrap();
        assert_eq!(limit.total.unwrap().requests_per_second, 100);
        assert_eq!(limit.identity.unwrap().requests_per_second, 20);
        assert_eq!(
            limit.overrides[0].clients.as_ref().unwrap().identities[0].name,
            "vote-bot.demo.serviceaccount.identity.weft.cluster.local"
        );
    }
}
