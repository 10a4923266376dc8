//! weft-proxy: the sidecar that carries every TCP connection of one workload.
//!
//! Module map (see ARCHITECTURE.md for the flow):
//! - [`config`]: settings from the environment, with linkerd2-proxy aliases.
//! - [`proxy`]: listeners, accepted connections, dispatch to a side, drain.
//! - [`inbound`]: connections to the application: mesh TLS, transport header,
//!   admission (where authorization goes), `l5d-client-id`.
//! - [`outbound`]: connections from the application: service → backend →
//!   endpoint, routes, retries, explicit proxy.
//! - [`detect`]: what protocol a connection speaks.
//! - [`http`]: HTTP mechanics both sides share: server, attempts, pools, bodies, errors.
//! - [`dial`]: every connection the proxy opens, with mesh TLS to meshed endpoints.
//! - [`tls`]: mesh TLS, both sides: rustls configurations and peer verification.
//! - [`transport_header`]: Linkerd's header naming the target port of opaque mesh TLS.
//! - [`discovery`], [`balance`], [`profile`]: destinations, endpoint choice, routes.
//! - [`metrics`], [`admin`]: Linkerd-compatible metrics and the admin server.
//! - [`io`]: byte counting and opaque copying.
//! - [`init`]: iptables capture rules (`weft-proxy init`).

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod detect;
pub mod dial;
pub mod discovery;
pub mod drain;
pub mod http;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod profile;
pub mod proxy;
pub mod tls;
pub mod transport_header;
