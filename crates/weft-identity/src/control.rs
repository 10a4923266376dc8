//! gRPC channels to the control plane (the identity and destination
//! services), shared by the proxy, the control plane's own services and the
//! CLI, so that every client reaches the control plane the same way.
//!
//! With the service's identity configured, the channel is TLS and the
//! service must prove exactly that identity against the trust anchors, as a
//! meshed peer would. The proxy presents no certificate here: it has none
//! yet when it first asks the identity service for one. Channels connect
//! lazily and reconnect as needed, so a control plane that is down at start
//! or restarts later costs nothing but failed calls, which callers retry.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::Identity;
use crate::verify::TrustAnchors;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control-plane address {0:?} is not host:port")]
    BadAddress(String),
    #[error("TLS to {0} needs trust anchors (identity settings)")]
    NoTrustAnchors(Identity),
    #[error("{0} is not a usable TLS server name")]
    BadServerName(Identity),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection failed; the cause chain on one line.
    #[error("{0}")]
    Connect(String),
}

/// How a control-plane service is reached: where, and the identity it must
/// prove (`None`: plaintext).
#[derive(Clone, Debug)]
pub struct ControlAddr {
    pub addr: String,
    pub identity: Option<Identity>,
}

/// A lazily connected channel to `target`: the proxy's way, where calls
/// retry anyway.
pub fn channel(
    target: &ControlAddr,
    anchors: Option<&TrustAnchors>,
    connect_timeout: Duration,
) -> Result<Channel, ChannelError> {
    let endpoint = endpoint(target, connect_timeout)?;
    Ok(match tls_connector(target, anchors)? {
        Some(connector) => endpoint.connect_with_connector_lazy(connector),
        None => endpoint.connect_lazy(),
    })
}

/// A channel to `target`, connected now: the CLI's way, so that a dead or
/// wrongly named service is reported as such.
pub async fn connect(
    target: &ControlAddr,
    anchors: Option<&TrustAnchors>,
    connect_timeout: Duration,
) -> Result<Channel, ChannelError> {
    let endpoint = endpoint(target, connect_timeout)?;
    let connected = match tls_connector(target, anchors)? {
        Some(connector) => endpoint.connect_with_connector(connector).await,
        None => endpoint.connect().await,
    };
    connected.map_err(|e| ChannelError::Connect(error_chain(&e)))
}

fn endpoint(target: &ControlAddr, connect_timeout: Duration) -> Result<Endpoint, ChannelError> {
    let addr = &target.addr;
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ChannelError::BadAddress(addr.clone()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Dials TCP, then TLS checking the service's identity; `None` for a
/// plaintext service.
fn tls_connector(
    target: &ControlAddr,
    anchors: Option<&TrustAnchors>,
) -> Result<
    Option<
        impl tower::Service<
            http::Uri,
            Response = TlsIo,
            Error = std::io::Error,
            Future = impl Future<Output = std::io::Result<TlsIo>> + Send,
        > + Clone
        + Send
        + 'static,
    >,
    ChannelError,
> {
    let Some(identity) = &target.identity else {
        return Ok(None);
    };
    let anchors = anchors.ok_or_else(|| ChannelError::NoTrustAnchors(identity.clone()))?;
    let config = crate::tls::server_auth_config(anchors.clone())?;
    let name = ServerName::try_from(identity.to_string())
        .map_err(|_| ChannelError::BadServerName(identity.clone()))?;
    let addr = target.addr.clone();
    Ok(Some(tower::service_fn(move |_: http::Uri| {
        let (addr, config, name) = (addr.clone(), config.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| std::io::Error::other(format!("TLS with {}: {e}", name.to_str())))?;
            Ok(TokioIo::new(tls))
        }
    })))
}

/// An error and its causes on one line. Layers that already print their
/// cause (tonic, hyper) are not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
        source = s.source();
    }
    out
}

/// A gRPC failure with its causes, for logs: tonic's own message for a
/// connection failure is only "transport error".
pub fn status_reason(status: &tonic::Status) -> String {
    let causes = std::error::Error::source(status).map(error_chain);
    match causes {
        Some(causes) => format!("{:?}: {}: {causes}", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}
