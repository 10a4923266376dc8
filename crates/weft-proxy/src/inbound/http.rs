//! Inbound requests: every request of a connection goes to the one
//! application address it was accepted for. Before it does, an HTTP/1
//! request a peer proxy carried over HTTP/2 is restored, and
//! `l5d-client-id` is set from the client's verified certificate and from
//! nothing else.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::http::body::{ProxyBody, RequestBody};
use crate::http::error::ProxyError;
use crate::http::pool::Pool;
use crate::http::{Attempt, Exchange, HttpConn, headers, orig_proto, request_target, respond};

use weft_policy::{Client, RequestDecision};

use super::denials::Denial;
use super::policy::PortWatch;
use crate::metrics::{AuthorityMetrics, Decision, Tls};

/// The header that tells the application who the client is.
pub const L5D_CLIENT_ID: &str = "l5d-client-id";

/// What an inbound HTTP connection knows.
pub struct Conn {
    /// The application's address.
    pool: Arc<Pool>,
    /// The `l5d-client-id` the application sees, from the client's verified
    /// mesh certificate.
    client_id: Option<http::HeaderValue>,
    identity: Option<weft_identity::Identity>,
    caller: Caller,
}

/// Who is calling, and the port's policy that decides whether they may.
pub struct Caller {
    pub policy: PortWatch,
    pub ip: std::net::IpAddr,
    /// The client's address and port, for the access log.
    pub addr: std::net::SocketAddr,
    pub tls: Tls,
    /// The `target_addr` label.
    pub target: std::net::SocketAddr,
}

impl Conn {
    /// Who sent a request, as the access log names them.
    pub fn client(&self) -> (std::net::SocketAddr, Option<&weft_identity::Identity>) {
        (self.caller.addr, self.identity.as_ref())
    }

    pub fn new(
        pool: Arc<Pool>,
        client_id: Option<weft_identity::Identity>,
        caller: Caller,
    ) -> Self {
        Conn {
            pool,
            client_id: client_id
                .as_ref()
                .and_then(|id| http::HeaderValue::from_str(id.as_str()).ok()),
            identity: client_id,
            caller,
        }
    }

    /// Whether the policy lets this request through: its route, an
    /// authorization (the route's, then the server's) and the rate limit.
    fn authorize<B>(&self, conn: &HttpConn, req: &Request<B>) -> Result<(), ProxyError> {
        let policy = self.caller.policy.current();
        let decision = Decision {
            target: self.caller.target,
            server: &policy.server,
            tls: &self.caller.tls,
        };
        let metrics = &conn.shared.metrics;
        let identity = self.identity.as_ref().map(|i| i.as_str());
        let client = Client {
            ip: self.caller.ip,
            tls: matches!(self.caller.tls, Tls::FromClient(_)),
            identity,
        };
        let log = |reason, route: Option<&weft_policy::Ref>| {
            conn.shared.denials.refused(Denial {
                client: self.caller.ip,
                identity,
                server: &policy.server.name,
                reason,
                route: route.map(|r| &*r.name),
            })
        };
        let (route, permit) = match policy.authorize(&client, req) {
            RequestDecision::NoRoute => {
                log("route_not_found", None);
                return Err(ProxyError::RouteNotFound {
                    server: policy.server.name.to_string(),
                });
            }
            RequestDecision::Unauthorized { route } => {
                metrics.http_authz_deny(&decision, &route.reference);
                log("unauthorized", Some(&route.reference));
                return Err(ProxyError::Unauthorized {
                    server: policy.server.name.to_string(),
                    route: route.reference.name.to_string(),
                });
            }
            RequestDecision::Allowed { route, by } => (route, by),
        };
        if permit.is_audit() {
            // Allowed, and counted as allowed by `audit`; logged as what
            // deny would refuse.
            log("audit_would_deny", Some(&route.reference));
        }
        if let Some(limit) = &policy.rate_limit
            && !limit.admit(identity)
        {
            metrics.http_rate_limited(&decision, &route.reference, &limit.reference);
            log("rate_limited", Some(&route.reference));
            return Err(ProxyError::RateLimited {
                server: policy.server.name.to_string(),
                limit: limit.reference.name.to_string(),
            });
        }
        metrics.http_authz_allow(&decision, &route.reference, &permit.reference);
        Ok(())
    }

    /// Forwards one request to the application.
    pub async fn forward(
        &self,
        conn: &HttpConn,
        mut req: Request<Incoming>,
        exchange: &Exchange,
    ) -> (
        Arc<AuthorityMetrics>,
        Result<Response<ProxyBody>, ProxyError>,
    ) {
        let addr = self.pool.addr;
        let metrics = conn
            .metrics
            .for_request(exchange.authority(), addr, Default::default);
        metrics.request_total.inc();
        let result = async {
            self.authorize(conn, &req)?;
            let upgrade = headers::is_upgrade(&req);
            let is_connect = req.method() == Method::CONNECT;
            let version = req.version();
            headers::strip_hop_by_hop(req.headers_mut(), version, upgrade);
            let downgraded = conn.http2 && orig_proto::downgrade(&mut req)?;
            let absolute = conn.http2 && !downgraded;
            request_target(&mut req, absolute, exchange.authority.clone(), addr)?;
            // Only this proxy may say who the client is: whatever came from
            // outside is dropped, and the verified identity is set after every
            // other header change, so nothing the client sent (a `Connection`
            // header naming it, say) can remove it.
            let headers = req.headers_mut();
            headers.remove(L5D_CLIENT_ID);
            if let Some(id) = &self.client_id {
                headers.insert(L5D_CLIENT_ID, id.clone());
            }
            let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let timeout = conn.shared.config.response_timeout;
            let attempt = Attempt {
                conn,
                route: None,
                route_metrics: None,
                may_upgrade: false,
                deadline: timeout.map(|t| (exchange.started + t, t)),
            };
            let req = req.map(RequestBody::Streaming);
            let (result, _) = attempt.send(&self.pool, req, None).await;
            Ok(respond(
                conn,
                result?,
                on_client_upgrade,
                is_connect,
                &metrics,
                exchange,
                None,
            ))
        }
        .await;
        (metrics, result)
    }
}
