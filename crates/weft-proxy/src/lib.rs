//! weft-proxy: the sidecar that carries every TCP connection of one workload.
//!
//! Module map (see ARCHITECTURE.md for the flow):
//! - [`config`]: settings from the environment, with linkerd2-proxy aliases.
//! - [`proxy`]: listeners, original destination, detection, dispatch, drain.
//! - [`detect`]: what protocol a connection speaks.
//! - [`http`]: HTTP/1 and HTTP/2 proxying with pooled endpoint clients.
//! - [`tcp`]: opaque forwarding and endpoint connects.
//! - [`tls`]: mesh TLS, both sides: rustls configurations and peer verification.
//! - [`transport_header`]: Linkerd's header naming the target port of opaque mesh TLS.
//! - [`identity`]: the proxy's key and certificate (Certify, renewal).
//! - [`control`]: gRPC channels to the control plane, TLS when the service's identity is known.
//! - [`discovery`], [`balance`], [`profile`]: destinations, endpoint choice, routes and retries.
//! - [`metrics`], [`admin`]: Linkerd-compatible metrics and the admin server.
//! - [`init`]: iptables capture rules (`weft-proxy init`).

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
