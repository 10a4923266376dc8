//! Connections to other services: directly by name, or through the
//! `http_proxy` the mesh's rootless mode sets.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// The explicit proxy, from `http_proxy` (or `HTTP_PROXY`), as host:port.
pub fn http_proxy() -> Option<String> {
    let url = std::env::var("http_proxy")
        .or_else(|_| std::env::var("HTTP_PROXY"))
        .ok()?;
    let url = url.trim();
    let hostport = url.strip_prefix("http://").unwrap_or(url);
    let hostport = hostport.trim_end_matches('/');
    (!hostport.is_empty()).then(|| hostport.to_string())
}

/// A gRPC channel to `target` (host:port). Through a proxy, the connection
/// goes to the proxy while every call still names `target` as its
/// authority. Connected lazily, reconnected as needed.
pub fn grpc_channel(target: &str) -> anyhow::Result<Channel> {
    let origin = format!("http://{target}");
    let endpoint = match http_proxy() {
        Some(proxy) => Endpoint::from_shared(format!("http://{proxy}"))
            .with_context(|| format!("http_proxy {proxy:?}"))?
            .origin(
                origin
                    .parse()
                    .with_context(|| format!("{target:?} is not host:port"))?,
            ),
        None => Endpoint::from_shared(origin.clone())
            .with_context(|| format!("{target:?} is not host:port"))?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Accepted connections with TCP_NODELAY (tonic sets it only on sockets it
/// accepts itself), for `serve_with_incoming`.
pub fn accepted(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Resolves on SIGTERM or Ctrl-C, so the runtime's stop is a clean exit.
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
