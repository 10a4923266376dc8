//! Inbound policy as a proxy enforces it.
//!
//! The policy controller streams a port's `inbound::Server`; [`PortPolicy`]
//! compiles it once per update into tables that a connection
//! ([`PortPolicy::permit`]) or a request ([`PortPolicy::route`], then the
//! route's authorizations, then the [`RateLimit`]) is checked against.
//! The proxy enforces with these, and `weft policy explain` evaluates with
//! the same code ([`explain`]), so an explanation can never disagree with
//! what a proxy would do.

mod authz;
mod cidr;
pub mod explain;
pub mod outbound;
mod ratelimit;
pub mod wire;

pub use authz::{Authz, Client, PortPolicy, Protocol, Ref, Refusal, RequestDecision, Route};
pub use cidr::Cidr;
pub use ratelimit::{OutboundLimiter, RateLimit};
