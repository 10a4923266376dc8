//! One way to run a control-plane gRPC service: bind, serve TLS with the
//! service's own identity (or plaintext where told), start the admin server
//! with the service's metrics, and stop on SIGTERM or Ctrl-C. Every service (identity,
//! destination, and later policy) starts through [`serve`], so they bind,
//! log, shut down and fail alike.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rustls::server::ResolvesServerCert;
use tonic::transport::server::Router;
use tracing::info;

/// What [`serve`] runs besides the service itself.
pub struct Serving {
    /// What the service is called in logs and errors ("identity service").
    pub what: &'static str,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The service's metrics, served on the admin port.
    pub registry: Registry,
    /// The certificate the service presents; `None` serves plaintext.
    pub tls: Option<Arc<dyn ResolvesServerCert>>,
}

/// Serves `router` until SIGTERM or Ctrl-C, or until the service or its admin server
/// fails.
pub async fn serve(serving: Serving, router: Router) -> anyhow::Result<()> {
    let Serving {
        what,
        listen,
        admin_listen,
        registry,
        tls,
    } = serving;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the {what} to {listen}"))?;
    info!(addr = %listener.local_addr()?, tls = tls.is_some(), "{what} listening");
    let admin = tokio::spawn(crate::admin::serve(admin_listen, Arc::new(registry)));
    let shutdown = crate::shutdown_signal();
    let server = async move {
        match tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(
                        crate::serving_tls::incoming(listener, tls)?,
                        shutdown,
                    )
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        shutdown,
                    )
                    .await
            }
        }
        .with_context(|| format!("serving the {what}"))
    };
    tokio::select! {
        served = server => served?,
        admin = admin => admin.context("the admin server task")??,
    }
    Ok(())
}
