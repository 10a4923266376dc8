//! Errors the proxy answers itself, and how they look to the client.
//!
//! Every such response carries `l5d-proxy-error` naming the cause, so a client
//! can tell a proxy failure from one of its server. gRPC clients get a
//! trailers-only response with a `grpc-status`, which is what their libraries
//! understand.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use crate::dial::{ConnectError, DialError};
use crate::tls::MeshConnectError;

impl From<DialError> for ProxyError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Connect(e) => ProxyError::Connect(e),
            DialError::Mesh(e) => ProxyError::Mesh(e),
        }
    }
}

pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Mesh(#[from] MeshConnectError),
    #[error("no response from {addr} within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    #[error("request to {addr} failed: {reason}")]
    Upstream { addr: SocketAddr, reason: String },
    #[error("cannot resolve {authority}: {reason}")]
    Resolve { authority: String, reason: String },
    #[error("request would loop back to the proxy itself at {0}")]
    Loop(SocketAddr),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request body failed: {0}")]
    RequestBody(String),
    #[error("{target} has no ready endpoints")]
    NoEndpoints { target: String },
    #[error("all {count} endpoints of {target} are failing and ejected; retry later")]
    AllEjected { target: String, count: usize },
    #[error("the destination service did not answer for {target} within {timeout:?}")]
    DiscoveryTimeout { target: String, timeout: Duration },
    #[error("unauthorized request on route {route} of server {server}")]
    Unauthorized { server: String, route: String },
    #[error("rate limit {limit} of server {server} exceeded")]
    RateLimited { server: String, limit: String },
    #[error(
        "this proxy's outbound rate limit of {requests_per_second} requests per second to {parent} is exceeded"
    )]
    OutboundRateLimited {
        parent: String,
        requests_per_second: u32,
    },
    #[error("no route of server {server} matches the request")]
    RouteNotFound { server: String },
    #[error("no route of {parent} matches the request")]
    NoRoute { parent: String },
    #[error("the request did not complete within its route's timeout of {timeout:?}")]
    RequestTimeout { timeout: Duration },
    /// A route's or backend's failure filter, e.g. a backend that names a
    /// Service that does not exist; a gRPC route's names its `grpc-status`.
    #[error("{message}")]
    Injected {
        status: StatusCode,
        grpc: Option<u32>,
        message: String,
    },
    #[error("the outbound policy of {parent} refuses the connection: {reason}")]
    Refused {
        parent: String,
        reason: String,
        /// linkerd2-proxy's `error` label of the closed connection:
        /// `forbidden`, `invalid_policy` or `invalid_backend`.
        error: &'static str,
    },
}

impl ProxyError {
    /// Whether another attempt could succeed: not when the time is up, nor
    /// when the client's own request is at fault.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ProxyError::ResponseTimeout { .. }
                | ProxyError::RequestTimeout { .. }
                | ProxyError::NoRoute { .. }
                | ProxyError::Injected { .. }
                | ProxyError::Refused { .. }
                | ProxyError::BadRequest(_)
                | ProxyError::RequestBody(_)
                | ProxyError::Unauthorized { .. }
                | ProxyError::RateLimited { .. }
                | ProxyError::OutboundRateLimited { .. }
                | ProxyError::RouteNotFound { .. }
        )
    }

    /// Whether the endpoint itself failed (for failure accrual), as opposed
    /// to the request or the proxy.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_) | ProxyError::Mesh(_) | ProxyError::Upstream { .. }
        )
    }
}

/// gRPC status codes used here (grpc/status.h).
const GRPC_INVALID_ARGUMENT: u8 = 3;
const GRPC_DEADLINE_EXCEEDED: u8 = 4;
const GRPC_NOT_FOUND: u8 = 5;
const GRPC_PERMISSION_DENIED: u8 = 7;
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;
const GRPC_UNAVAILABLE: u8 = 14;

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(ConnectError::Timeout { .. })
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::RequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_)
            | ProxyError::Mesh(_)
            | ProxyError::Upstream { .. }
            | ProxyError::Resolve { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Loop(_) | ProxyError::BadRequest(_) | ProxyError::RequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoEndpoints { .. }
            | ProxyError::AllEjected { .. }
            | ProxyError::DiscoveryTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unauthorized { .. } | ProxyError::Refused { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } | ProxyError::OutboundRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::RouteNotFound { .. } | ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Injected { status, .. } => *status,
        }
    }

    /// The `grpc-status` a gRPC client is answered with.
    pub fn grpc_status(&self) -> u32 {
        if let ProxyError::Injected {
            grpc: Some(code), ..
        } = self
        {
            return *code;
        }
        let code = match self.status() {
            StatusCode::GATEWAY_TIMEOUT => GRPC_DEADLINE_EXCEEDED,
            StatusCode::BAD_REQUEST => GRPC_INVALID_ARGUMENT,
            StatusCode::FORBIDDEN => GRPC_PERMISSION_DENIED,
            StatusCode::TOO_MANY_REQUESTS => GRPC_RESOURCE_EXHAUSTED,
            StatusCode::NOT_FOUND => GRPC_NOT_FOUND,
            _ => GRPC_UNAVAILABLE,
        };
        u32::from(code)
    }

    /// The `error` label of `{inbound,outbound}_http_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect(ConnectError::Timeout { .. }) => "connect_timeout",
            ProxyError::Connect(ConnectError::Failed { .. }) => "connect_failed",
            ProxyError::Mesh(MeshConnectError::NoCertificate) => "no_certificate",
            ProxyError::Mesh(_) => "tls_failed",
            ProxyError::ResponseTimeout { .. } => "response_timeout",
            ProxyError::Upstream { .. } => "upstream_failed",
            ProxyError::Resolve { .. } => "resolve_failed",
            ProxyError::Loop(_) => "loop",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::RequestBody(_) => "request_body_failed",
            ProxyError::NoEndpoints { .. } => "no_endpoints",
            ProxyError::AllEjected { .. } => "all_endpoints_ejected",
            ProxyError::DiscoveryTimeout { .. } => "discovery_timeout",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::RateLimited { .. } | ProxyError::OutboundRateLimited { .. } => {
                "rate_limited"
            }
            ProxyError::RouteNotFound { .. } | ProxyError::NoRoute { .. } => "route_not_found",
            ProxyError::RequestTimeout { .. } => "request_timeout",
            ProxyError::Injected { .. } => "injected_failure",
            ProxyError::Refused { .. } => "forbidden",
        }
    }

    /// The response the client sees.
    pub fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        let message = self.to_string();
        let header = header_value(&message);
        let mut builder = Response::builder().header(L5D_PROXY_ERROR, header.clone());
        if grpc {
            builder = builder
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.grpc_status().to_string())
                .header("grpc-message", grpc_message(&message));
        } else {
            builder = builder.status(self.status());
        }
        builder.body(ProxyBody::empty()).unwrap_or_else(|_| {
            let mut r = Response::new(ProxyBody::empty());
            *r.status_mut() = self.status();
            r
        })
    }
}

/// A header value from arbitrary text: anything that is not visible ASCII becomes '?'.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(&header_safe(text))
        .unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

/// Text made safe for a header value: anything that is not visible ASCII or a
/// space becomes '?'.
pub(crate) fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Percent-encodes a grpc-message as the gRPC HTTP/2 spec requires.
fn grpc_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_status_and_grpc_codes() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::Connect(ConnectError::Failed {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        let r = refused.to_response(false);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(
            r.headers()[L5D_PROXY_ERROR]
                .to_str()
                .unwrap()
                .contains("127.0.0.1:1")
        );

        let timeout = ProxyError::ResponseTimeout {
            addr,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            timeout.to_response(false).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let g = timeout.to_response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "4");
        assert_eq!(refused.to_response(true).headers()["grpc-status"], "14");

        let denied = ProxyError::Unauthorized {
            server: "voting-grpc".into(),
            route: "voting-vote".into(),
        };
        assert_eq!(denied.to_response(false).status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.to_response(true).headers()["grpc-status"], "7");
        let limited = ProxyError::RateLimited {
            server: "web".into(),
            limit: "web-limit".into(),
        };
        assert_eq!(
            limited.to_response(false).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(limited.to_response(true).headers()["grpc-status"], "8");
    }

    #[test]
    fn messages_are_made_header_safe() {
        assert_eq!(grpc_message("50% naïve"), "50%25 na%C3%AFve");
        assert_eq!(header_value("bad\nline"), "bad?line");
    }
}
