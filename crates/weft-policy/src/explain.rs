//! Why a port's policy admits or refuses a client: the same checks the
//! proxy makes ([`PortPolicy::authorize`], [`PortPolicy::permit`]), each
//! step recorded. `weft policy explain` prints it.

use crate::Client;
use crate::authz::{Authz, PortPolicy, Protocol, Ref, Refusal, RequestDecision, Route};

/// One authorization the proxy tried, in the order it tries them.
#[derive(Clone, Debug)]
pub struct Considered {
    /// `route` for a route's own authorization, `server` for the server's.
    pub scope: &'static str,
    pub authz: Ref,
    /// Its clients and networks, as text.
    pub requires: String,
    /// `None` when it admits the client.
    pub refusal: Option<Refusal>,
}

/// The outcome, as the proxy would answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted by `by`; `audit` when only the audit default admitted it
    /// (counted and logged as what deny would refuse). A rate limit may
    /// still refuse it when it is over its rate (`rate_limit`).
    Allowed {
        by: Ref,
        audit: bool,
        rate_limit: Option<Ref>,
    },
    /// 403 (gRPC PERMISSION_DENIED), or an opaque connection closed.
    Unauthorized,
    /// 404: no route of the server matches the request.
    RouteNotFound,
}

/// Every step from the server to the verdict.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub server: Ref,
    pub protocol: Protocol,
    /// Each route with whether it matches the request (none for a connection).
    pub routes: Vec<(Ref, bool)>,
    /// The route the request takes.
    pub route: Option<Ref>,
    pub considered: Vec<Considered>,
    pub verdict: Verdict,
}

fn considered<'p>(
    scope: &'static str,
    authz: impl Iterator<Item = &'p Authz>,
    client: &Client,
    out: &mut Vec<Considered>,
) -> Option<Ref> {
    for a in authz {
        let refusal = a.check(client).err();
        let admitted = refusal.is_none();
        out.push(Considered {
            scope,
            authz: a.reference.clone(),
            requires: a.requirement(),
            refusal,
        });
        if admitted {
            return Some(a.reference.clone());
        }
    }
    None
}

fn verdict(policy: &PortPolicy, by: Option<Ref>) -> Verdict {
    match by {
        Some(by) => Verdict::Allowed {
            audit: &*by.kind == "default" && &*by.name == "audit",
            by,
            rate_limit: policy.rate_limit.as_ref().map(|l| l.reference.clone()),
        },
        None => Verdict::Unauthorized,
    }
}

/// An HTTP request from `client`.
pub fn request<B>(policy: &PortPolicy, client: &Client, req: &http::Request<B>) -> Explanation {
    let routes = policy
        .routes
        .iter()
        .map(|r| (r.reference.clone(), r.matches(req)))
        .collect();
    let mut steps = Vec::new();
    let (route, verdict) = match policy.authorize(client, req) {
        RequestDecision::NoRoute => (None, Verdict::RouteNotFound),
        RequestDecision::Unauthorized { route } | RequestDecision::Allowed { route, .. } => {
            let by = steps_for(policy, route, client, &mut steps);
            (Some(route.reference.clone()), verdict(policy, by))
        }
    };
    Explanation {
        server: policy.server.clone(),
        protocol: policy.protocol,
        routes,
        route,
        considered: steps,
        verdict,
    }
}

fn steps_for(
    policy: &PortPolicy,
    route: &Route,
    client: &Client,
    steps: &mut Vec<Considered>,
) -> Option<Ref> {
    considered("route", route.authorizations.iter(), client, steps)
        .or_else(|| considered("server", policy.authorizations.iter(), client, steps))
}

/// An opaque connection from `client`: the server's authorizations only.
pub fn connection(policy: &PortPolicy, client: &Client) -> Explanation {
    let mut steps = Vec::new();
    let by = considered("server", policy.authorizations.iter(), client, &mut steps);
    debug_assert_eq!(by.is_some(), policy.permit(client).is_some());
    Explanation {
        server: policy.server.clone(),
        protocol: policy.protocol,
        routes: Vec::new(),
        route: None,
        considered: steps,
        verdict: verdict(policy, by),
    }
}
