//! Inbound policy compiled for the request path: a port's Server, its
//! authorizations and routes, from the controller's `inbound::Server`,
//! turned once per update into tables that a connection or request is
//! checked against with no allocation and no regex compilation.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::meta;

use crate::Cidr;
use crate::ratelimit::RateLimit;

/// `group`, `kind` and `name` of a server, route or authorization, as
/// Linkerd's metrics label them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Ref {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

impl Ref {
    fn new(group: &str, kind: &str, name: &str) -> Self {
        Ref {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn named_default(name: &str) -> Self {
        Ref::new("", "default", name)
    }

    fn from_labels(labels: &std::collections::HashMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).map_or("", String::as_str);
        Ref::new(get("group"), get("kind"), get("name"))
    }

    fn from_meta(metadata: Option<&meta::Metadata>, fallback: &str) -> Self {
        match metadata.and_then(|m| m.kind.as_ref()) {
            Some(meta::metadata::Kind::Default(name)) => Ref::named_default(name),
            Some(meta::metadata::Kind::Resource(r)) => {
                Ref::new(&r.group, &r.kind.to_ascii_lowercase(), &r.name)
            }
            None => Ref::named_default(fallback),
        }
    }
}

/// What a port speaks, by the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Detect(Duration),
    Http1,
    Http2,
    Opaque,
    Tls,
}

impl Protocol {
    /// Carried as bytes, never detected or read as HTTP (opaque, or TLS the
    /// application terminates).
    pub fn is_opaque(self) -> bool {
        matches!(self, Protocol::Opaque | Protocol::Tls)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Detect(t) => write!(f, "detect (within {}s)", t.as_secs_f64()),
            Protocol::Http1 => f.write_str("HTTP/1"),
            Protocol::Http2 => f.write_str("HTTP/2"),
            Protocol::Opaque => f.write_str("opaque"),
            Protocol::Tls => f.write_str("TLS"),
        }
    }
}

/// One port's policy.
#[derive(Debug)]
pub struct PortPolicy {
    pub server: Ref,
    pub protocol: Protocol,
    pub authorizations: Vec<Authz>,
    pub routes: Vec<Route>,
    pub rate_limit: Option<RateLimit>,
}

/// Who a client is, as far as authorization goes.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub ip: IpAddr,
    /// Whether it came over mesh TLS.
    pub tls: bool,
    /// Its verified identity.
    pub identity: Option<&'a str>,
}

#[derive(Debug)]
pub struct Authz {
    pub reference: Ref,
    networks: Vec<(Cidr, Vec<Cidr>)>,
    authn: Authn,
}

#[derive(Debug)]
enum Authn {
    Unauthenticated,
    /// Mesh TLS, any identity or none.
    MeshTls,
    Identities {
        exact: HashSet<String>,
        /// Dot-prefixed suffixes (`.demo.serviceaccount...`); `""` is any.
        suffixes: Vec<String>,
    },
}

/// Why an authorization does not admit a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address is in none of its networks (or in an exception).
    Network,
    /// It takes mesh TLS clients only; this one came in plaintext.
    NotMeshTls,
    /// It takes named identities; this client proved none.
    NoIdentity,
    /// It takes named identities; this client's is not one of them.
    Identity,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Network => "the client's address is outside its networks",
            Refusal::NotMeshTls => "the client is not over mesh TLS",
            Refusal::NoIdentity => "the client proved no identity (plaintext)",
            Refusal::Identity => "the client's identity is not one it names",
        })
    }
}

impl Authz {
    pub fn permits(&self, client: &Client) -> bool {
        self.check(client).is_ok()
    }

    /// Whether it admits `client`, and if not, why.
    pub fn check(&self, client: &Client) -> Result<(), Refusal> {
        let in_networks = self.networks.iter().any(|(net, except)| {
            net.contains(client.ip) && !except.iter().any(|e| e.contains(client.ip))
        });
        if !in_networks {
            return Err(Refusal::Network);
        }
        match &self.authn {
            Authn::Unauthenticated => Ok(()),
            Authn::MeshTls if client.tls => Ok(()),
            Authn::MeshTls => Err(Refusal::NotMeshTls),
            Authn::Identities { exact, suffixes } => {
                let id = client.identity.ok_or(Refusal::NoIdentity)?;
                let listed = exact.contains(id)
                    || suffixes
                        .iter()
                        .any(|s| s.is_empty() || (id.ends_with(s.as_str()) && id.len() > s.len()));
                if listed {
                    Ok(())
                } else {
                    Err(Refusal::Identity)
                }
            }
        }
    }

    /// Whether it admits only named identities (not any client, or any
    /// mesh TLS client, from its networks).
    pub fn names_identities(&self) -> bool {
        matches!(self.authn, Authn::Identities { .. })
    }

    /// What it requires, for people: its clients and networks.
    pub fn requirement(&self) -> String {
        let clients = match &self.authn {
            Authn::Unauthenticated => "any client".to_string(),
            Authn::MeshTls => "any mesh TLS client".to_string(),
            Authn::Identities { exact, suffixes } => {
                let mut names: Vec<String> = exact.iter().cloned().collect();
                names.sort();
                names.extend(suffixes.iter().map(|s| {
                    if s.is_empty() {
                        "any identity".to_string()
                    } else {
                        format!("*{s}")
                    }
                }));
                format!("identity {}", names.join(" or "))
            }
        };
        let networks: Vec<String> = self
            .networks
            .iter()
            .map(|(net, except)| {
                if except.is_empty() {
                    net.to_string()
                } else {
                    let except: Vec<String> = except.iter().map(Cidr::to_string).collect();
                    format!("{net} except {}", except.join(","))
                }
            })
            .collect();
        format!("{clients} from {}", networks.join(", "))
    }

    /// Linkerd's audit policy: allowed, but what it allows would be denied.
    pub fn is_audit(&self) -> bool {
        &*self.reference.kind == "default" && &*self.reference.name == "audit"
    }
}

/// What a port's policy says about one HTTP request (before its rate limit).
#[derive(Debug)]
pub enum RequestDecision<'p> {
    /// No route of the server matches it (404).
    NoRoute,
    /// Its route's and the server's authorizations all refuse the client (403).
    Unauthorized {
        route: &'p Route,
    },
    Allowed {
        route: &'p Route,
        by: &'p Authz,
    },
}

#[derive(Debug)]
pub struct Route {
    pub reference: Ref,
    /// Any rule's any match selects the route.
    matches: Vec<RouteMatch>,
    pub authorizations: Vec<Authz>,
}

#[derive(Debug)]
pub(crate) struct RouteMatch {
    path: PathMatch,
    headers: Vec<(http::HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    method: Option<Method>,
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

#[derive(Debug)]
enum ValueMatch {
    Exact(Vec<u8>),
    Regex(regex_lite::Regex),
}

impl ValueMatch {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// Gateway API precedence: an exact path, then the longest path, then more
/// header matches, then more query matches, then a method.
pub(crate) type Precedence = (u8, usize, usize, usize, bool);

impl RouteMatch {
    pub(crate) fn precedence(&self) -> Precedence {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        (
            kind,
            len,
            self.headers.len(),
            self.query.len(),
            self.method.is_some(),
        )
    }

    pub(crate) fn matches<B>(&self, req: &http::Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| req.method() == m)
            && self.headers.iter().all(|(name, value)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| value.matches(v.as_bytes()))
            })
            && self.query.iter().all(|(name, value)| {
                req.uri().query().is_some_and(|q| {
                    q.split('&').any(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        k == name && value.matches(v.as_bytes())
                    })
                })
            })
    }
}

impl RouteMatch {
    /// The path prefix this match selects on, if it is a prefix match (a
    /// redirect's `ReplacePrefixMatch` replaces it).
    pub(crate) fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

impl Route {
    /// Whether any of its matches selects `req`.
    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        self.matches.iter().any(|m| m.matches(req))
    }
}

/// A Gateway API prefix: whole path segments (`/api` matches `/api/x`, not `/apix`).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl PortPolicy {
    /// The route a request takes: the matching one of highest precedence
    /// (the first of equals); `None` when no route matches.
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&Route> {
        let mut best: Option<(&Route, Precedence)> = None;
        for route in &self.routes {
            for m in &route.matches {
                if m.matches(req) && best.is_none_or(|(_, p)| m.precedence() > p) {
                    best = Some((route, m.precedence()));
                }
            }
        }
        best.map(|(route, _)| route)
    }

    /// The server-level authorization that admits `client` (what an opaque
    /// connection is checked against).
    pub fn permit(&self, client: &Client) -> Option<&Authz> {
        self.authorizations.iter().find(|a| a.permits(client))
    }

    /// The authorizations a request on `route` is checked against, in
    /// order: the route's own, then the server's.
    pub fn authorizations_for<'p>(&'p self, route: &'p Route) -> impl Iterator<Item = &'p Authz> {
        route.authorizations.iter().chain(&self.authorizations)
    }

    /// Checks one request: its route, then the first authorization that
    /// admits the client.
    pub fn authorize<B>(&self, client: &Client, req: &http::Request<B>) -> RequestDecision<'_> {
        let Some(route) = self.route(req) else {
            return RequestDecision::NoRoute;
        };
        match self.authorizations_for(route).find(|a| a.permits(client)) {
            Some(by) => RequestDecision::Allowed { route, by },
            None => RequestDecision::Unauthorized { route },
        }
    }

    /// What a proxy knows before the controller answers, or without one:
    /// the configured default policy, on every port, detected.
    pub fn default_policy(
        policy: &str,
        cluster_networks: &[Cidr],
        detect_timeout: Duration,
    ) -> PortPolicy {
        let all = [
            Cidr::parse("0.0.0.0/0").expect("a network"),
            Cidr::parse("::/0").expect("a network"),
        ];
        let authz = |networks: &[Cidr], authn| Authz {
            reference: Ref::named_default(policy),
            networks: networks.iter().map(|n| (*n, Vec::new())).collect(),
            authn,
        };
        let authorizations = match policy {
            "all-unauthenticated" | "audit" => vec![authz(&all, Authn::Unauthenticated)],
            "all-authenticated" => vec![authz(&all, any_identity())],
            "cluster-unauthenticated" => vec![authz(cluster_networks, Authn::Unauthenticated)],
            "cluster-authenticated" => vec![authz(cluster_networks, any_identity())],
            _ => Vec::new(),
        };
        PortPolicy {
            server: Ref::named_default(policy),
            protocol: Protocol::Detect(detect_timeout),
            authorizations,
            routes: vec![default_route()],
            rate_limit: None,
        }
    }

    /// Compiles the controller's answer; the reason when it cannot be used.
    pub fn from_proto(server: api::Server) -> Result<PortPolicy, String> {
        use api::proxy_protocol::Kind;
        let (protocol, routes, rate_limit) = match server.protocol.and_then(|p| p.kind) {
            Some(Kind::Detect(d)) => (
                Protocol::Detect(
                    d.timeout
                        .and_then(|t| Duration::try_from(t).ok())
                        .unwrap_or(Duration::from_secs(10)),
                ),
                d.http_routes,
                d.http_local_rate_limit,
            ),
            Some(Kind::Http1(h)) => (Protocol::Http1, h.routes, h.local_rate_limit),
            Some(Kind::Http2(h)) => (Protocol::Http2, h.routes, h.local_rate_limit),
            // gRPC routes come with GRPCRoute (traffic policy); every gRPC
            // request is served by the server's authorizations until then.
            Some(Kind::Grpc(_)) => (Protocol::Http2, Vec::new(), None),
            Some(Kind::Opaque(_)) => (Protocol::Opaque, Vec::new(), None),
            Some(Kind::Tls(_)) => (Protocol::Tls, Vec::new(), None),
            None => return Err("the server has no protocol".into()),
        };
        let authorizations = server
            .authorizations
            .into_iter()
            .map(compile_authz)
            .collect::<Result<_, _>>()?;
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(compile_route)
            .collect::<Result<_, _>>()?;
        if routes.is_empty() {
            // Server-level authorizations then decide every request.
            routes.push(default_route());
        }
        Ok(PortPolicy {
            server: Ref::from_labels(&server.labels),
            protocol,
            authorizations,
            routes,
            rate_limit: rate_limit.map(RateLimit::from_proto),
        })
    }
}

/// Every request, with no authorizations of its own (Linkerd's `default` route).
fn default_route() -> Route {
    Route {
        reference: Ref::named_default("default"),
        matches: vec![RouteMatch {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }],
        authorizations: Vec::new(),
    }
}

fn any_identity() -> Authn {
    Authn::Identities {
        exact: HashSet::new(),
        suffixes: vec![String::new()],
    }
}

fn compile_network(n: &linkerd2_proxy_api::net::IpNetwork) -> Result<Cidr, String> {
    let ip =
        n.ip.and_then(|ip| IpAddr::try_from(ip).ok())
            .ok_or("a network without an address")?;
    u8::try_from(n.prefix_len)
        .ok()
        .and_then(|p| Cidr::new(ip, p))
        .ok_or_else(|| format!("prefix {} is too long for {ip}", n.prefix_len))
}

fn compile_authz(a: api::Authz) -> Result<Authz, String> {
    let reference = Ref::from_meta(a.metadata.as_ref(), "unknown");
    let reference = if a.metadata.is_none() && !a.labels.is_empty() {
        Ref::from_labels(&a.labels)
    } else {
        reference
    };
    let networks = a
        .networks
        .iter()
        .map(|n| {
            let net = compile_network(n.net.as_ref().ok_or("a network without a net")?)?;
            let except = n
                .except
                .iter()
                .map(compile_network)
                .collect::<Result<_, _>>()?;
            Ok((net, except))
        })
        .collect::<Result<Vec<_>, String>>()?;
    use api::authn::Permit;
    use api::authn::permit_mesh_tls::Clients;
    let authn = match a.authentication.and_then(|a| a.permit) {
        Some(Permit::Unauthenticated(_)) => Authn::Unauthenticated,
        Some(Permit::MeshTls(m)) => match m.clients {
            Some(Clients::Unauthenticated(_)) => Authn::MeshTls,
            Some(Clients::Identities(ids)) => Authn::Identities {
                exact: ids.identities.into_iter().map(|i| i.name).collect(),
                suffixes: ids
                    .suffixes
                    .into_iter()
                    .map(|s| {
                        if s.parts.is_empty() {
                            String::new()
                        } else {
                            format!(".{}", s.parts.join("."))
                        }
                    })
                    .collect(),
            },
            None => return Err(format!("authorization {} names no clients", reference.name)),
        },
        None => {
            return Err(format!(
                "authorization {} has no authentication",
                reference.name
            ));
        }
    };
    Ok(Authz {
        reference,
        networks,
        authn,
    })
}

fn compile_route(r: api::HttpRoute) -> Result<Route, String> {
    let reference = Ref::from_meta(r.metadata.as_ref(), "default");
    let matches = r
        .rules
        .into_iter()
        .flat_map(|rule| rule.matches)
        .map(compile_match)
        .collect::<Result<_, _>>()?;
    Ok(Route {
        authorizations: r
            .authorizations
            .into_iter()
            .map(compile_authz)
            .collect::<Result<_, _>>()?,
        reference,
        matches,
    })
}

pub(crate) fn regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    // Anchored, as Gateway API regular expressions match the whole value.
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("bad regular expression {pattern:?}: {e}"))
}

pub(crate) fn compile_match(m: route_api::HttpRouteMatch) -> Result<RouteMatch, String> {
    use route_api::path_match::Kind;
    let path = match m.path.and_then(|p| p.kind) {
        None => PathMatch::Prefix("/".into()),
        Some(Kind::Exact(p)) => PathMatch::Exact(p),
        Some(Kind::Prefix(p)) => PathMatch::Prefix(p),
        Some(Kind::Regex(r)) => PathMatch::Regex(regex(&r)?),
    };
    let value = |exact: Option<Vec<u8>>, re: Option<String>| -> Result<ValueMatch, String> {
        match (exact, re) {
            (Some(e), _) => Ok(ValueMatch::Exact(e)),
            (None, Some(r)) => Ok(ValueMatch::Regex(regex(&r)?)),
            (None, None) => Err("a match without a value".into()),
        }
    };
    let headers = m
        .headers
        .into_iter()
        .map(|h| {
            let name = http::HeaderName::try_from(h.name.as_str())
                .map_err(|e| format!("header {:?}: {e}", h.name))?;
            let v = match h.value {
                Some(route_api::header_match::Value::Exact(e)) => value(Some(e), None)?,
                Some(route_api::header_match::Value::Regex(r)) => value(None, Some(r))?,
                None => value(None, None)?,
            };
            Ok((name, v))
        })
        .collect::<Result<_, String>>()?;
    let query = m
        .query_params
        .into_iter()
        .map(|q| {
            let v = match q.value {
                Some(route_api::query_param_match::Value::Exact(e)) => {
                    value(Some(e.into_bytes()), None)?
                }
                Some(route_api::query_param_match::Value::Regex(r)) => value(None, Some(r))?,
                None => value(None, None)?,
            };
            Ok((q.name, v))
        })
        .collect::<Result<_, String>>()?;
    let method = m
        .method
        .map(|m| Method::try_from(m).map_err(|e| format!("bad method: {e}")))
        .transpose()?;
    Ok(RouteMatch {
        path,
        headers,
        query,
        method,
    })
}
