//! Outbound policy compiled for the request path: the controller's
//! `OutboundPolicy` for one target (a Service and port, or an address
//! outside the mesh) turned once per update into routes whose matches,
//! filters and weighted backends a request is decided against.
//!
//! The proxy keeps its own state beside each route and backend (metric
//! handles, a backend's resolution and balancer): [`ClientPolicy`] is
//! generic over them, built by [`ClientPolicy::from_proto`] with one call
//! per backend, so the CLI compiles the same answer with `()` and decides
//! exactly as a proxy would.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound as api;

use crate::authz::{Precedence, RouteMatch, compile_match};

/// A parent, route or backend as Linkerd's outbound metrics label it
/// (`parent_*`, `route_*`, `backend_*`): kinds keep their case (`Service`,
/// `HTTPRoute`), a default is `kind="default"` with its name.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Meta {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Empty when the resource has none.
    pub port: String,
    pub section: String,
}

impl Meta {
    fn from_proto(m: Option<&meta::Metadata>, fallback: &str) -> Self {
        match m.and_then(|m| m.kind.as_ref()) {
            Some(meta::metadata::Kind::Resource(r)) => Meta {
                group: r.group.clone(),
                kind: r.kind.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                port: if r.port == 0 {
                    String::new()
                } else {
                    r.port.to_string()
                },
                section: r.section.clone(),
            },
            Some(meta::metadata::Kind::Default(name)) => Meta::named_default(name),
            None => Meta::named_default(fallback),
        }
    }

    fn named_default(name: &str) -> Self {
        Meta {
            kind: "default".into(),
            name: name.into(),
            ..Meta::default()
        }
    }
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "default" {
            return write!(f, "default/{}", self.name);
        }
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// How the target's traffic is to be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Detect HTTP within this time; otherwise opaque.
    Detect(Duration),
    Opaque,
    Http1,
    Http2,
    Grpc,
}

/// One target's outbound policy. `R` is the proxy's state per route, `B`
/// per backend.
#[derive(Debug)]
pub struct ClientPolicy<R, B> {
    pub parent: Meta,
    pub protocol: Protocol,
    /// Routes for HTTP/1 requests, and for HTTP/2 ones (the controller may
    /// send different lists; Weft's sends the same).
    pub http1: Vec<HttpRoute<R, B>>,
    pub http2: Vec<HttpRoute<R, B>>,
    pub opaque: Vec<OpaqueRoute<R, B>>,
    /// The circuit breaker of the parent's backends for HTTP.
    pub accrual: Option<Accrual>,
    /// Weft's outbound rate limit: requests per second from this proxy.
    pub rate_limit: Option<u32>,
}

#[derive(Debug)]
pub struct HttpRoute<R, B> {
    pub meta: Meta,
    hosts: Vec<HostMatch>,
    pub rules: Vec<Rule<B>>,
    /// Weft's per-route circuit breaker for the route's backends, over the
    /// parent's.
    pub accrual: Option<Accrual>,
    pub state: R,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` as the labels after the wildcard, e.g. `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
pub struct Rule<B> {
    matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Distribution<B>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

#[derive(Debug)]
pub struct OpaqueRoute<R, B> {
    pub meta: Meta,
    /// Forbidden or invalid: the connection is refused.
    pub refusal: Option<Refusal>,
    pub backends: Distribution<B>,
    pub state: R,
}

/// Why an opaque route refuses its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Policy forbids it (an undefined port, denied egress).
    Forbidden,
    /// The controller says the route is invalid, and why.
    Invalid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden => f.write_str("forbidden by policy"),
            Refusal::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

/// Request and response timeouts of a rule (`timeouts.request`: the whole
/// request, retries included; `timeouts.backendRequest`, sent as
/// `response`: each attempt, to its response headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub max_retries: u32,
    pub max_request_bytes: usize,
    /// Response statuses worth another attempt (inclusive ranges).
    pub statuses: Vec<(u16, u16)>,
    /// gRPC status codes worth another attempt (gRPC routes).
    pub grpc_codes: Vec<u32>,
    /// Each attempt's own timeout; a timed-out attempt is retried.
    pub timeout: Option<Duration>,
    pub backoff: Backoff,
}

impl Retry {
    /// Whether a response with this status, and this `grpc-status` in its
    /// headers (a trailers-only gRPC answer), is worth another attempt.
    pub fn retries(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        let s = status.as_u16();
        self.statuses.iter().any(|(lo, hi)| *lo <= s && s <= *hi)
            || grpc_status.is_some_and(|c| self.grpc_codes.contains(&c))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub jitter: f32,
}

impl Backoff {
    /// The wait before retry number `n` (1-based): doubling from `min` to
    /// `max`, with up to `jitter` of it added from `roll` (0.0..1.0).
    pub fn delay(&self, n: u32, roll: f32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max);
        let extra = f64::from(self.jitter.clamp(0.0, 1.0) * roll.clamp(0.0, 1.0));
        if extra > 0.0 {
            base.mul_f64(1.0 + extra)
        } else {
            base
        }
    }
}

/// Consecutive-failures circuit breaking: after `max_failures` failures in a
/// row an endpoint is ejected for a back-off, then probed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accrual {
    pub max_failures: u32,
    pub backoff: Backoff,
}

/// A rule's or backend's filter.
#[derive(Debug)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    /// Answer with this status and message instead of forwarding, for a
    /// share of requests (`numerator`/`denominator`).
    Fail {
        status: StatusCode,
        /// A gRPC route's failure: this `grpc-status` instead.
        grpc: Option<u32>,
        message: String,
        numerator: u32,
        denominator: u32,
    },
}

#[derive(Debug, Default)]
pub struct HeaderModifier {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Gateway API order: set replaces, add appends, remove last.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Debug)]
pub struct Redirect {
    scheme: Option<http::uri::Scheme>,
    host: Option<String>,
    path: Option<PathModifier>,
    port: Option<u16>,
    pub status: StatusCode,
}

#[derive(Debug)]
enum PathModifier {
    Full(String),
    Prefix(String),
}

/// The weighted backends of a rule or opaque route.
#[derive(Debug)]
pub struct Distribution<B> {
    /// Weight 0 never chosen; `first_available` takes the first available.
    pub backends: Vec<(RouteBackend<B>, u32)>,
    first_available: bool,
}

#[derive(Debug)]
pub struct RouteBackend<B> {
    pub meta: Meta,
    pub target: BackendTarget,
    pub filters: Vec<Filter>,
    pub state: B,
}

/// Where a backend's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// Balanced over the endpoints `Destination/Get` answers for `path`.
    Balanced { path: String },
    /// The address as given (egress).
    Forward(SocketAddr),
}

/// The rule a request takes, and the match that selected it.
pub struct Routed<'p, R, B> {
    pub route: &'p HttpRoute<R, B>,
    pub rule: &'p Rule<B>,
    matched: &'p RouteMatch,
}

impl<R: Default, B> ClientPolicy<R, B> {
    /// Compiles an answer; `backend` makes the proxy's state for each backend
    /// (it may subscribe to the backend's endpoints). An answer that cannot
    /// be used is refused whole, so the last good policy keeps serving.
    pub fn from_proto(
        p: api::OutboundPolicy,
        mut backend: impl FnMut(&BackendTarget) -> B,
    ) -> Result<Self, String> {
        use api::proxy_protocol::Kind;
        let parent = Meta::from_proto(p.metadata.as_ref(), "unknown");
        let kind = p
            .protocol
            .and_then(|p| p.kind)
            .ok_or("the policy names no protocol")?;
        let mut policy = ClientPolicy {
            parent,
            protocol: Protocol::Opaque,
            http1: Vec::new(),
            http2: Vec::new(),
            opaque: Vec::new(),
            accrual: None,
            rate_limit: None,
        };
        let http = |routes: Vec<api::HttpRoute>, b: &mut dyn FnMut(&BackendTarget) -> B| {
            routes
                .into_iter()
                .map(|r| http_route(r, b))
                .collect::<Result<Vec<_>, String>>()
        };
        match kind {
            Kind::Detect(d) => {
                policy.protocol = Protocol::Detect(
                    d.timeout
                        .and_then(|t| Duration::try_from(t).ok())
                        .unwrap_or(Duration::from_secs(10)),
                );
                if let Some(o) = d.opaque {
                    policy.opaque = opaque_routes(o.routes, &mut backend)?;
                }
                if let Some(h) = d.http1 {
                    policy.accrual = h.failure_accrual.as_ref().and_then(accrual);
                    policy.http1 = http(h.routes, &mut backend)?;
                }
                if let Some(h) = d.http2 {
                    policy.accrual = policy
                        .accrual
                        .or_else(|| h.failure_accrual.as_ref().and_then(accrual));
                    policy.http2 = http(h.routes, &mut backend)?;
                }
            }
            Kind::Opaque(o) => policy.opaque = opaque_routes(o.routes, &mut backend)?,
            Kind::Http1(h) => {
                policy.protocol = Protocol::Http1;
                policy.accrual = h.failure_accrual.as_ref().and_then(accrual);
                policy.http1 = http(h.routes, &mut backend)?;
            }
            Kind::Http2(h) => {
                policy.protocol = Protocol::Http2;
                policy.accrual = h.failure_accrual.as_ref().and_then(accrual);
                policy.http2 = http(h.routes, &mut backend)?;
            }
            Kind::Grpc(g) => {
                policy.protocol = Protocol::Grpc;
                policy.accrual = g.failure_accrual.as_ref().and_then(accrual);
                // gRPC is HTTP/2; an HTTP/1 request to it takes the same
                // routes (and matches none of a call's paths, so gets 404).
                policy.http2 = g
                    .routes
                    .iter()
                    .cloned()
                    .map(|r| grpc_route(r, &mut backend))
                    .collect::<Result<_, String>>()?;
                policy.http1 = g
                    .routes
                    .into_iter()
                    .map(|r| grpc_route(r, &mut backend))
                    .collect::<Result<_, String>>()?;
            }
            Kind::Tls(_) => return Err("TLS route policies are not supported".into()),
        }
        Ok(policy)
    }
}

impl<R: Default, B> ClientPolicy<R, B> {
    /// Compiles Weft's controller's answer: Linkerd's, and the rate limit.
    pub fn from_wire(
        p: crate::wire::OutboundPolicy,
        backend: impl FnMut(&BackendTarget) -> B,
    ) -> Result<Self, String> {
        let rate_limit = p
            .weft_rate_limit
            .map(|l| l.requests_per_second)
            .filter(|rps| *rps > 0);
        let linkerd = api::OutboundPolicy {
            protocol: p.protocol,
            metadata: p.metadata,
        };
        let mut policy = Self::from_proto(linkerd, backend)?;
        policy.rate_limit = rate_limit;
        for r in p.weft_route_accruals {
            let Some(breaker) = r.accrual.as_ref().and_then(accrual) else {
                continue;
            };
            let meta = Meta::from_proto(r.route.as_ref(), "default");
            for route in policy.http1.iter_mut().chain(policy.http2.iter_mut()) {
                if route.meta == meta {
                    route.accrual = Some(breaker);
                }
            }
        }
        Ok(policy)
    }
}

impl<R, B> ClientPolicy<R, B> {
    /// The rule a request takes: among routes whose hosts admit its
    /// authority, the match of highest Gateway API precedence (the first of
    /// equals). `None`: no route matches, and Linkerd answers 404.
    pub fn route<T>(&self, req: &http::Request<T>, http2: bool) -> Option<Routed<'_, R, B>> {
        let routes = if http2 { &self.http2 } else { &self.http1 };
        let host = request_host(req);
        let mut best: Option<(Routed<'_, R, B>, Precedence)> = None;
        for route in routes {
            if !route.admits_host(host) {
                continue;
            }
            for rule in &route.rules {
                for m in &rule.matches {
                    if m.matches(req) && best.as_ref().is_none_or(|(_, p)| m.precedence() > *p) {
                        best = Some((
                            Routed {
                                route,
                                rule,
                                matched: m,
                            },
                            m.precedence(),
                        ));
                    }
                }
            }
        }
        best.map(|(r, _)| r)
    }

    /// Every route a request is decided among, and whether it matches (its
    /// hosts admit the request and one of its rules' matches holds): what
    /// `weft policy explain` shows beside the route taken.
    pub fn candidates<T>(
        &self,
        req: &http::Request<T>,
        http2: bool,
    ) -> Vec<(&HttpRoute<R, B>, bool)> {
        let routes = if http2 { &self.http2 } else { &self.http1 };
        let host = request_host(req);
        routes
            .iter()
            .map(|route| {
                let matches = route.admits_host(host)
                    && route
                        .rules
                        .iter()
                        .any(|rule| rule.matches.iter().any(|m| m.matches(req)));
                (route, matches)
            })
            .collect()
    }

    /// Every backend, for callers that hold them (each route's, each rule's).
    pub fn backends(&self) -> impl Iterator<Item = &RouteBackend<B>> {
        let http = self
            .http1
            .iter()
            .chain(&self.http2)
            .flat_map(|r| &r.rules)
            .flat_map(|rule| &rule.backends.backends);
        let opaque = self.opaque.iter().flat_map(|r| &r.backends.backends);
        http.chain(opaque).map(|(b, _)| b)
    }
}

impl<R, B> HttpRoute<R, B> {
    fn admits_host(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        self.hosts.iter().any(|h| match h {
            HostMatch::Exact(e) => e.eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host.to_ascii_lowercase().ends_with(s.as_str())
            }
        })
    }
}

impl<R, B> Routed<'_, R, B> {
    /// Where a redirect filter sends this request: its status and Location.
    pub fn redirect_location<T>(
        &self,
        redirect: &Redirect,
        req: &http::Request<T>,
    ) -> Result<HeaderValue, String> {
        let uri = req.uri();
        let scheme = redirect
            .scheme
            .clone()
            .or_else(|| uri.scheme().cloned())
            .unwrap_or(http::uri::Scheme::HTTP);
        let host = redirect
            .host
            .clone()
            .or_else(|| request_host(req).map(str::to_string))
            .ok_or("the request names no host to redirect to")?;
        // Gateway API: an explicit port, else the scheme's own when the
        // scheme changes, else the request's port.
        let port = redirect.port.or_else(|| {
            if redirect.scheme.is_some() {
                None
            } else {
                request_port(req)
            }
        });
        let path = uri.path();
        let path = match &redirect.path {
            None => path.to_string(),
            Some(PathModifier::Full(full)) => full.clone(),
            Some(PathModifier::Prefix(replacement)) => {
                let matched = self.matched.prefix().unwrap_or("/").trim_end_matches('/');
                let rest = path.strip_prefix(matched).unwrap_or(path);
                let joined = format!(
                    "{}/{}",
                    replacement.trim_end_matches('/'),
                    rest.trim_start_matches('/')
                );
                if rest.is_empty() && joined.len() > 1 {
                    joined.trim_end_matches('/').to_string()
                } else {
                    joined
                }
            }
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let port = match port {
            Some(p) if !is_default_port(&scheme, p) => format!(":{p}"),
            _ => String::new(),
        };
        HeaderValue::try_from(format!("{scheme}://{host}{port}{path}{query}"))
            .map_err(|e| format!("the redirect location is not a header value: {e}"))
    }
}

impl<B> Distribution<B> {
    /// The backend for one request or connection: by weight among those
    /// `available` says can serve, else by weight among all (which then
    /// fail as they must). `roll` is a uniform random number.
    pub fn choose(&self, roll: u32, available: impl Fn(&B) -> bool) -> Option<&RouteBackend<B>> {
        if self.first_available {
            return self
                .backends
                .iter()
                .find(|(b, _)| available(&b.state))
                .or(self.backends.first())
                .map(|(b, _)| b);
        }
        let pick = |usable: &dyn Fn(&RouteBackend<B>) -> bool| {
            let total: u64 = self
                .backends
                .iter()
                .filter(|(b, _)| usable(b))
                .map(|(_, w)| u64::from(*w))
                .sum();
            if total == 0 {
                return None;
            }
            let mut at = u64::from(roll) % total;
            for (b, w) in self.backends.iter().filter(|(b, _)| usable(b)) {
                if at < u64::from(*w) {
                    return Some(b);
                }
                at -= u64::from(*w);
            }
            None
        };
        pick(&|b| available(&b.state)).or_else(|| pick(&|_| true))
    }

    /// Whether it has no backend that can ever be chosen.
    pub fn is_empty(&self) -> bool {
        self.backends.iter().all(|(_, w)| *w == 0)
    }
}

fn request_host<T>(req: &http::Request<T>) -> Option<&str> {
    let host = req.uri().host().or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
    })?;
    Some(host.trim_end_matches('.'))
}

fn request_port<T>(req: &http::Request<T>) -> Option<u16> {
    req.uri().port_u16().or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
    })
}

fn is_default_port(scheme: &http::uri::Scheme, port: u16) -> bool {
    (scheme == &http::uri::Scheme::HTTP && port == 80)
        || (scheme == &http::uri::Scheme::HTTPS && port == 443)
}

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
}

fn backoff(b: Option<&api::ExponentialBackoff>, min: Duration, max: Duration) -> Backoff {
    Backoff {
        min: b.and_then(|b| duration(b.min_backoff)).unwrap_or(min),
        max: b
            .and_then(|b| duration(b.max_backoff))
            .unwrap_or(max)
            .max(min),
        jitter: b
            .map(|b| b.jitter_ratio)
            .filter(|j| j.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0),
    }
}

fn accrual(a: &api::FailureAccrual) -> Option<Accrual> {
    use api::failure_accrual::Kind;
    match a.kind.as_ref()? {
        Kind::ConsecutiveFailures(c) => Some(Accrual {
            max_failures: c.max_failures.max(1),
            backoff: backoff(
                c.backoff.as_ref(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
        }),
        Kind::Unified(u) => Some(Accrual {
            max_failures: u.max_consecutive_failures.max(1),
            backoff: backoff(
                u.backoff.as_ref(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
        }),
    }
}

fn host_matches(hosts: Vec<route_api::HostMatch>) -> Vec<HostMatch> {
    hosts
        .into_iter()
        .filter_map(|h| match h.r#match? {
            route_api::host_match::Match::Exact(e) => Some(HostMatch::Exact(e)),
            route_api::host_match::Match::Suffix(s) => {
                let labels: Vec<_> = s.reverse_labels.into_iter().rev().collect();
                Some(HostMatch::Suffix(
                    format!(".{}", labels.join(".")).to_ascii_lowercase(),
                ))
            }
        })
        .collect()
}

/// A rule's timeouts; an old controller sends only the deprecated
/// `request_timeout`.
fn rule_timeouts(
    timeouts: Option<route_api::Timeouts>,
    legacy: Option<prost_types::Duration>,
) -> Timeouts {
    timeouts.map_or(
        Timeouts {
            request: duration(legacy),
            ..Timeouts::default()
        },
        |t| Timeouts {
            request: duration(t.request),
            response: duration(t.response),
            idle: duration(t.idle),
        },
    )
}

fn http_route<R: Default, B>(
    r: api::HttpRoute,
    backend: &mut dyn FnMut(&BackendTarget) -> B,
) -> Result<HttpRoute<R, B>, String> {
    let meta = Meta::from_proto(r.metadata.as_ref(), "default");
    let hosts = host_matches(r.hosts);
    let rules = r
        .rules
        .into_iter()
        .map(|rule| {
            let matches = if rule.matches.is_empty() {
                vec![compile_match(route_api::HttpRouteMatch::default())?]
            } else {
                rule.matches
                    .into_iter()
                    .map(compile_match)
                    .collect::<Result<_, _>>()?
            };
            #[allow(deprecated)]
            let timeouts = rule_timeouts(rule.timeouts, rule.request_timeout);
            Ok(Rule {
                matches,
                filters: filters(rule.filters)?,
                backends: distribution(http_entries(rule.backends)?, backend)
                    .map_err(|e| format!("route {meta}: {e}"))?,
                timeouts,
                retry: rule.retry.map(retry),
            })
        })
        .collect::<Result<_, String>>()
        .map_err(|e| format!("route {meta}: {e}"))?;
    Ok(HttpRoute {
        meta,
        hosts,
        rules,
        accrual: None,
        state: R::default(),
    })
}

/// Retries per request at most, whatever a controller asks (Weft's allows 10).
const MAX_RETRIES: u32 = 10;

fn retry(r: api::http_route::Retry) -> Retry {
    Retry {
        max_retries: r.max_retries.min(MAX_RETRIES),
        max_request_bytes: usize::try_from(r.max_request_bytes).unwrap_or(usize::MAX),
        statuses: r
            .conditions
            .map(|c| {
                c.status_ranges
                    .into_iter()
                    .map(|s| {
                        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                        match (s.start, s.end) {
                            (0, 0) => (100, 599),
                            (start, 0) => (clamp(start), clamp(start)),
                            (start, end) => (clamp(start), clamp(end)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        grpc_codes: Vec::new(),
        timeout: duration(r.timeout),
        backoff: backoff(
            r.backoff.as_ref(),
            Duration::from_millis(25),
            Duration::from_millis(250),
        ),
    }
}

fn header_list(
    h: Option<linkerd2_proxy_api::http_types::Headers>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    h.map(|h| h.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let name = HeaderName::try_from(h.name.as_str())
                .map_err(|e| format!("header name {:?}: {e}", h.name))?;
            let value =
                HeaderValue::try_from(h.value).map_err(|e| format!("header {name} value: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

fn header_modifier(
    add: Option<linkerd2_proxy_api::http_types::Headers>,
    set: Option<linkerd2_proxy_api::http_types::Headers>,
    remove: Vec<String>,
) -> Result<HeaderModifier, String> {
    Ok(HeaderModifier {
        add: header_list(add)?,
        set: header_list(set)?,
        remove: remove
            .iter()
            .map(|n| {
                HeaderName::try_from(n.as_str()).map_err(|e| format!("header name {n:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn filters(list: Vec<api::http_route::Filter>) -> Result<Vec<Filter>, String> {
    use api::http_route::filter::Kind;
    list.into_iter()
        .filter_map(|f| f.kind)
        .map(|kind| {
            Ok(match kind {
                Kind::RequestHeaderModifier(m) => {
                    Filter::RequestHeaders(header_modifier(m.add, m.set, m.remove)?)
                }
                Kind::ResponseHeaderModifier(m) => {
                    Filter::ResponseHeaders(header_modifier(m.add, m.set, m.remove)?)
                }
                Kind::Redirect(r) => Filter::Redirect(redirect(r)?),
                Kind::FailureInjector(f) => {
                    let (numerator, denominator) = fail_ratio(f.ratio);
                    Filter::Fail {
                        status: u16::try_from(f.status)
                            .ok()
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        grpc: None,
                        message: f.message,
                        numerator,
                        denominator,
                    }
                }
            })
        })
        .collect()
}

fn fail_ratio(ratio: Option<route_api::Ratio>) -> (u32, u32) {
    ratio.map_or((1, 1), |r| (r.numerator, r.denominator.max(1)))
}

fn grpc_filters(list: Vec<api::grpc_route::Filter>) -> Result<Vec<Filter>, String> {
    use api::grpc_route::filter::Kind;
    list.into_iter()
        .filter_map(|f| f.kind)
        .map(|kind| {
            Ok(match kind {
                Kind::RequestHeaderModifier(m) => {
                    Filter::RequestHeaders(header_modifier(m.add, m.set, m.remove)?)
                }
                Kind::FailureInjector(f) => {
                    let (numerator, denominator) = fail_ratio(f.ratio);
                    Filter::Fail {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        grpc: Some(f.code),
                        message: f.message,
                        numerator,
                        denominator,
                    }
                }
            })
        })
        .collect()
}

/// A gRPC call's service and method as the `:path` it is sent on
/// (`/package.Service/Method`), so gRPC routes are decided as HTTP routes.
fn grpc_match(m: linkerd2_proxy_api::grpc_route::GrpcRouteMatch) -> route_api::HttpRouteMatch {
    use route_api::path_match::Kind;
    let rpc = m.rpc.unwrap_or_default();
    let path = match (rpc.service.as_str(), rpc.method.as_str()) {
        ("", "") => Kind::Prefix("/".into()),
        (service, "") => Kind::Prefix(format!("/{service}")),
        ("", method) => Kind::Regex(format!("/[^/]+/{}", regex_lite::escape(method))),
        (service, method) => Kind::Exact(format!("/{service}/{method}")),
    };
    route_api::HttpRouteMatch {
        path: Some(route_api::PathMatch { kind: Some(path) }),
        headers: m.headers,
        ..Default::default()
    }
}

fn grpc_route<R: Default, B>(
    r: api::GrpcRoute,
    backend: &mut dyn FnMut(&BackendTarget) -> B,
) -> Result<HttpRoute<R, B>, String> {
    let meta = Meta::from_proto(r.metadata.as_ref(), "default");
    let rules = r
        .rules
        .into_iter()
        .map(|rule| {
            let matches = if rule.matches.is_empty() {
                vec![compile_match(route_api::HttpRouteMatch::default())?]
            } else {
                rule.matches
                    .into_iter()
                    .map(|m| compile_match(grpc_match(m)))
                    .collect::<Result<_, _>>()?
            };
            #[allow(deprecated)]
            let timeouts = rule_timeouts(rule.timeouts, rule.request_timeout);
            Ok(Rule {
                matches,
                filters: grpc_filters(rule.filters)?,
                backends: distribution(grpc_entries(rule.backends)?, backend)?,
                timeouts,
                retry: rule.retry.map(grpc_retry),
            })
        })
        .collect::<Result<_, String>>()
        .map_err(|e| format!("route {meta}: {e}"))?;
    Ok(HttpRoute {
        meta,
        hosts: host_matches(r.hosts),
        rules,
        accrual: None,
        state: R::default(),
    })
}

/// gRPC status codes (grpc/status.h) a gRPC retry may name.
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

fn grpc_retry(r: api::grpc_route::Retry) -> Retry {
    let c = r.conditions.unwrap_or_default();
    let grpc_codes = [
        (c.cancelled, GRPC_CANCELLED),
        (c.deadine_exceeded, GRPC_DEADLINE_EXCEEDED),
        (c.resource_exhausted, GRPC_RESOURCE_EXHAUSTED),
        (c.internal, GRPC_INTERNAL),
        (c.unavailable, GRPC_UNAVAILABLE),
    ]
    .into_iter()
    .filter_map(|(on, code)| on.then_some(code))
    .collect();
    Retry {
        max_retries: r.max_retries.min(MAX_RETRIES),
        max_request_bytes: usize::try_from(r.max_request_bytes).unwrap_or(usize::MAX),
        statuses: Vec::new(),
        grpc_codes,
        timeout: duration(r.timeout),
        backoff: backoff(
            r.backoff.as_ref(),
            Duration::from_millis(25),
            Duration::from_millis(250),
        ),
    }
}

fn redirect(r: route_api::RequestRedirect) -> Result<Redirect, String> {
    let scheme = r
        .scheme
        .map(http::uri::Scheme::try_from)
        .transpose()
        .map_err(|e| format!("redirect scheme: {e}"))?;
    let path = r.path.and_then(|p| p.replace).map(|p| match p {
        route_api::path_modifier::Replace::Full(f) => PathModifier::Full(f),
        route_api::path_modifier::Replace::Prefix(p) => PathModifier::Prefix(p),
    });
    let status = match r.status {
        0 => StatusCode::FOUND,
        s => u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(StatusCode::is_redirection)
            .ok_or(format!("redirect status {s} is not a 3xx"))?,
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host).filter(|h| !h.is_empty()),
        path,
        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
        status,
    })
}

fn backend_target(b: &api::Backend) -> Result<Option<BackendTarget>, String> {
    use api::backend::Kind;
    use api::backend::endpoint_discovery::Kind as Discovery;
    Ok(match &b.kind {
        Some(Kind::Forward(addr)) => {
            let addr = addr
                .addr
                .and_then(|a| SocketAddr::try_from(a).ok())
                .ok_or("a forward backend without an address")?;
            Some(BackendTarget::Forward(addr))
        }
        Some(Kind::Balancer(p2c)) => match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
            Some(Discovery::Dst(dst)) if !dst.path.is_empty() => Some(BackendTarget::Balanced {
                path: dst.path.clone(),
            }),
            _ => return Err("a balanced backend without a discovery path".into()),
        },
        // A backend with neither: only its filters (a failure injector) answer.
        None => None,
    })
}

/// A backend as a distribution lists it, before the proxy's state is made.
type Entry = (api::Backend, Vec<Filter>, u32);

/// The backends of an HTTP or gRPC route's distribution, with their
/// filters and weights, and whether the first available one is taken. The
/// proto has one distribution type per route kind, of the same shape.
macro_rules! entries {
    ($kind:ident, $d:expr, $filters:expr) => {{
        use api::$kind::distribution::Kind;
        let entry = |b: api::$kind::RouteBackend, weight| -> Result<Entry, String> {
            Ok((b.backend.unwrap_or_default(), $filters(b.filters)?, weight))
        };
        Ok(match $d.and_then(|d| d.kind) {
            None | Some(Kind::Empty(_)) => (Vec::new(), false),
            Some(Kind::FirstAvailable(f)) => (
                f.backends
                    .into_iter()
                    .map(|b| entry(b, 1))
                    .collect::<Result<_, _>>()?,
                true,
            ),
            Some(Kind::RandomAvailable(r)) => (
                r.backends
                    .into_iter()
                    .map(|w| {
                        entry(
                            w.backend.ok_or("a weighted backend without a backend")?,
                            w.weight,
                        )
                    })
                    .collect::<Result<_, _>>()?,
                false,
            ),
        })
    }};
}

fn http_entries(d: Option<api::http_route::Distribution>) -> Result<(Vec<Entry>, bool), String> {
    entries!(http_route, d, filters)
}

fn grpc_entries(d: Option<api::grpc_route::Distribution>) -> Result<(Vec<Entry>, bool), String> {
    entries!(grpc_route, d, grpc_filters)
}

fn distribution<B>(
    (entries, first_available): (Vec<Entry>, bool),
    backend: &mut dyn FnMut(&BackendTarget) -> B,
) -> Result<Distribution<B>, String> {
    let backends = entries
        .into_iter()
        .map(|(proto, filters, weight)| {
            let meta = Meta::from_proto(proto.metadata.as_ref(), "default");
            let target = match backend_target(&proto)? {
                Some(t) => t,
                None if filters.iter().any(|f| matches!(f, Filter::Fail { .. })) => {
                    // Never dialled: its failure filter answers first.
                    BackendTarget::Forward(SocketAddr::from(([0, 0, 0, 0], 0)))
                }
                None => return Err(format!("backend {meta} has no target")),
            };
            Ok((
                RouteBackend {
                    state: backend(&target),
                    meta,
                    target,
                    filters,
                },
                weight,
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(Distribution {
        backends,
        first_available,
    })
}

fn opaque_routes<R: Default, B>(
    routes: Vec<api::OpaqueRoute>,
    backend: &mut dyn FnMut(&BackendTarget) -> B,
) -> Result<Vec<OpaqueRoute<R, B>>, String> {
    use api::opaque_route::distribution::Kind;
    use api::opaque_route::filter::Kind as F;
    routes
        .into_iter()
        .map(|r| {
            let meta = Meta::from_proto(r.metadata.as_ref(), "opaq");
            let rule = r.rules.into_iter().next().unwrap_or_default();
            let refusal = rule.filters.into_iter().find_map(|f| match f.kind? {
                F::Invalid(i) => Some(Refusal::Invalid(i.message)),
                F::Forbidden(_) => Some(Refusal::Forbidden),
            });
            let mut one = |b: api::opaque_route::RouteBackend| -> Result<RouteBackend<B>, String> {
                let proto = b.backend.unwrap_or_default();
                let meta = Meta::from_proto(proto.metadata.as_ref(), "default");
                let target = backend_target(&proto)?
                    .ok_or_else(|| format!("backend {meta} has no target"))?;
                Ok(RouteBackend {
                    state: backend(&target),
                    meta,
                    target,
                    filters: Vec::new(),
                })
            };
            let (backends, first_available) = match rule.backends.and_then(|d| d.kind) {
                None | Some(Kind::Empty(_)) => (Vec::new(), false),
                Some(Kind::FirstAvailable(f)) => (
                    f.backends
                        .into_iter()
                        .map(|b| Ok((one(b)?, 1)))
                        .collect::<Result<_, String>>()?,
                    true,
                ),
                Some(Kind::RandomAvailable(r)) => (
                    r.backends
                        .into_iter()
                        .filter_map(|w| Some((w.backend?, w.weight)))
                        .map(|(b, w)| Ok((one(b)?, w)))
                        .collect::<Result<_, String>>()?,
                    false,
                ),
            };
            Ok(OpaqueRoute {
                meta,
                refusal,
                backends: Distribution {
                    backends,
                    first_available,
                },
                state: R::default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> RouteBackend<bool> {
        RouteBackend {
            meta: Meta::named_default(name),
            target: BackendTarget::Balanced {
                path: format!("{name}:80"),
            },
            filters: Vec::new(),
            state: true,
        }
    }

    #[test]
    fn weights_are_honoured_and_unavailable_backends_skipped() {
        let d = Distribution {
            backends: vec![(backend("v1"), 90), (backend("v2"), 10), (backend("v3"), 0)],
            first_available: false,
        };
        let mut counts = std::collections::HashMap::new();
        // Every roll modulo the total: exactly the weights.
        for roll in 0..1000u32 {
            let b = d.choose(roll, |_| true).unwrap();
            *counts.entry(b.meta.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("v1"), Some(&900));
        assert_eq!(counts.get("v2"), Some(&100));
        assert_eq!(counts.get("v3"), None, "weight 0 is never chosen");
        // v1 unavailable: v2 takes everything, whatever its weight.
        let mut d = d;
        d.backends[0].0.state = false;
        assert!((0..100).all(|r| d.choose(r, |up| *up).unwrap().meta.name == "v2"));
        // None available: chosen by weight anyway (it then fails as it must).
        d.backends[1].0.state = false;
        assert!(d.choose(5, |up| *up).is_some());
        let empty: Distribution<bool> = Distribution {
            backends: vec![(backend("v1"), 0)],
            first_available: false,
        };
        assert!(empty.is_empty() && empty.choose(1, |_| true).is_none());
    }

    #[test]
    fn backoff_doubles_within_bounds_and_jitters_upward() {
        let b = Backoff {
            min: Duration::from_millis(25),
            max: Duration::from_millis(250),
            jitter: 0.5,
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(25));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(10, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(1, 1.0), Duration::from_micros(37_500));
    }

    #[test]
    fn redirects_replace_the_matched_prefix_and_keep_the_query() {
        use route_api::path_match::Kind;
        let matched = compile_match(route_api::HttpRouteMatch {
            path: Some(route_api::PathMatch {
                kind: Some(Kind::Prefix("/old".into())),
            }),
            ..Default::default()
        })
        .unwrap();
        let route: HttpRoute<(), ()> = HttpRoute {
            meta: Meta::named_default("r"),
            hosts: Vec::new(),
            rules: Vec::new(),
            accrual: None,
            state: (),
        };
        let rule: Rule<()> = Rule {
            matches: Vec::new(),
            filters: Vec::new(),
            backends: Distribution {
                backends: Vec::new(),
                first_available: false,
            },
            timeouts: Timeouts::default(),
            retry: None,
        };
        let routed = Routed {
            route: &route,
            rule: &rule,
            matched: &matched,
        };
        let redirect = |path, port, scheme: Option<http::uri::Scheme>| Redirect {
            scheme,
            host: None,
            path,
            port,
            status: StatusCode::MOVED_PERMANENTLY,
        };
        let req = http::Request::get("/old/a/b?x=1")
            .header("host", "web.demo:8080")
            .body(())
            .unwrap();
        let at = |r: &Redirect| routed.redirect_location(r, &req).unwrap();
        assert_eq!(
            at(&redirect(
                Some(PathModifier::Prefix("/new".into())),
                None,
                None
            )),
            "http://web.demo:8080/new/a/b?x=1"
        );
        assert_eq!(
            at(&redirect(
                Some(PathModifier::Full("/x".into())),
                Some(80),
                None
            )),
            "http://web.demo/x?x=1"
        );
        // A scheme change drops the request's port for the scheme's own.
        assert_eq!(
            at(&redirect(None, None, Some(http::uri::Scheme::HTTPS))),
            "https://web.demo/old/a/b?x=1"
        );
        let bare = http::Request::get("/old")
            .header("host", "web")
            .body(())
            .unwrap();
        assert_eq!(
            routed
                .redirect_location(
                    &redirect(Some(PathModifier::Prefix("/new".into())), None, None),
                    &bare
                )
                .unwrap(),
            "http://web/new"
        );
    }
}
