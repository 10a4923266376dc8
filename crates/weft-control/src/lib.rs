//! Weft's control plane as a library: the resource store and its indexes,
//! the identity and destination services over Linkerd's gRPC APIs, their TLS
//! and admin servers, and the files that hold the CA's secrets. The `weft`
//! binary is a thin CLI over it (`weft control identity|destination`, `weft
//! up`); a Kubernetes store and the policy service will live here too.
//!
//! - [`store`]: the `Store` trait (watchable immutable snapshots of every
//!   resource, with indexes) and the files backend.
//! - [`destination`]: `Destination/Get` and `GetProfile` from a snapshot.
//! - [`identity`]: `Identity/Certify`, the mesh CA at work; [`ca_dir`]: its files.
//! - [`grpc`]: the one way a service is started (bind, TLS, admin, shutdown);
//!   [`serving_tls`]: the certificate each service presents; [`admin`]:
//!   `/metrics`, `/ready`, `/live`.
//! - [`secure_fs`]: private directories, atomic no-follow writes, key checks.
//! - [`metrics_text`]: reading the Prometheus text the mesh's admin servers
//!   export (the CLI's `stat` and `check`, and tests).

pub mod admin;
pub mod ca_dir;
pub mod destination;
pub mod grpc;
pub mod identity;
pub mod metrics_text;
pub mod policy;
pub mod secure_fs;
pub mod serving_tls;
pub mod store;
pub mod viz;
pub mod watches;

/// Resolves on SIGTERM or Ctrl-C: how every long-running part of the
/// control plane (its services, `weft up`) learns to stop cleanly.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
