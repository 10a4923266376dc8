//! Authorization metrics with Linkerd's names and labels:
//! `inbound_http_authz_allow_total` / `_deny_total`,
//! `inbound_tcp_authz_allow_total` / `_deny_total`, and
//! `inbound_http_local_ratelimit_rejected_total`, by target, server
//! (`srv_group`, `srv_kind`, `srv_name`, `srv_port`), route, authorization
//! and TLS.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;

use super::family::{Family, Registrar};
use super::labels::{ServerLabel, TargetAddr};
use super::{Metrics, Tls};
use weft_policy::Ref;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    #[prometheus(flatten)]
    target: TargetAddr,
    #[prometheus(flatten)]
    server: ServerLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route_group: String,
    route_kind: String,
    route_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    authz_group: String,
    authz_kind: String,
    authz_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpAllow {
    #[prometheus(flatten)]
    server: ServerLabels,
    #[prometheus(flatten)]
    route: RouteLabels,
    #[prometheus(flatten)]
    authz: AuthzLabels,
    #[prometheus(flatten)]
    tls: Tls,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpDeny {
    #[prometheus(flatten)]
    server: ServerLabels,
    #[prometheus(flatten)]
    route: RouteLabels,
    #[prometheus(flatten)]
    tls: Tls,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpAllow {
    #[prometheus(flatten)]
    server: ServerLabels,
    #[prometheus(flatten)]
    authz: AuthzLabels,
    #[prometheus(flatten)]
    tls: Tls,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpDeny {
    #[prometheus(flatten)]
    server: ServerLabels,
    #[prometheus(flatten)]
    tls: Tls,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimited {
    #[prometheus(flatten)]
    server: ServerLabels,
    #[prometheus(flatten)]
    route: RouteLabels,
    ratelimit_name: String,
    #[prometheus(flatten)]
    tls: Tls,
}

#[derive(Debug)]
pub(super) struct AuthzFamilies {
    http_allow: Family<HttpAllow, Counter>,
    http_deny: Family<HttpDeny, Counter>,
    tcp_allow: Family<TcpAllow, Counter>,
    tcp_deny: Family<TcpDeny, Counter>,
    rate_limited: Family<RateLimited, Counter>,
}

impl AuthzFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        AuthzFamilies {
            http_allow: r.counter(
                "inbound_http_authz_allow",
                "Inbound HTTP requests that were authorized",
            ),
            http_deny: r.counter(
                "inbound_http_authz_deny",
                "Inbound HTTP requests refused by authorization policy",
            ),
            tcp_allow: r.counter(
                "inbound_tcp_authz_allow",
                "Inbound TCP connections that were authorized",
            ),
            tcp_deny: r.counter(
                "inbound_tcp_authz_deny",
                "Inbound TCP connections refused by authorization policy",
            ),
            rate_limited: r.counter(
                "inbound_http_local_ratelimit_rejected",
                "Inbound HTTP requests refused by an HTTPLocalRateLimitPolicy",
            ),
        }
    }
}

fn server(target: SocketAddr, s: &Ref) -> ServerLabels {
    ServerLabels {
        target: TargetAddr(target),
        server: ServerLabel {
            server: s.clone(),
            port: target.port(),
        },
    }
}

fn route(r: &Ref) -> RouteLabels {
    RouteLabels {
        route_group: r.group.to_string(),
        route_kind: r.kind.to_string(),
        route_name: r.name.to_string(),
    }
}

fn authz(a: &Ref) -> AuthzLabels {
    AuthzLabels {
        authz_group: a.group.to_string(),
        authz_kind: a.kind.to_string(),
        authz_name: a.name.to_string(),
    }
}

/// Where an authorization decision was made: the target, server and TLS of
/// the connection.
pub struct Decision<'a> {
    pub target: SocketAddr,
    pub server: &'a Ref,
    pub tls: &'a Tls,
}

impl Metrics {
    pub fn http_authz_allow(&self, d: &Decision, r: &Ref, a: &Ref) {
        self.authz
            .http_allow
            .get_or_create(&HttpAllow {
                server: server(d.target, d.server),
                route: route(r),
                authz: authz(a),
                tls: d.tls.clone(),
            })
            .inc();
    }

    pub fn http_authz_deny(&self, d: &Decision, r: &Ref) {
        self.authz
            .http_deny
            .get_or_create(&HttpDeny {
                server: server(d.target, d.server),
                route: route(r),
                tls: d.tls.clone(),
            })
            .inc();
    }

    pub fn tcp_authz_allow(&self, d: &Decision, a: &Ref) {
        self.authz
            .tcp_allow
            .get_or_create(&TcpAllow {
                server: server(d.target, d.server),
                authz: authz(a),
                tls: d.tls.clone(),
            })
            .inc();
    }

    pub fn tcp_authz_deny(&self, d: &Decision) {
        self.authz
            .tcp_deny
            .get_or_create(&TcpDeny {
                server: server(d.target, d.server),
                tls: d.tls.clone(),
            })
            .inc();
    }

    pub fn http_rate_limited(&self, d: &Decision, r: &Ref, limit: &Ref) {
        self.authz
            .rate_limited
            .get_or_create(&RateLimited {
                server: server(d.target, d.server),
                route: route(r),
                ratelimit_name: limit.name.to_string(),
                tls: d.tls.clone(),
            })
            .inc();
    }
}
