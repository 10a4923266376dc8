//! The control plane's admin server: `/metrics` (Prometheus text), `/ready`,
//! `/live`. Linkerd's control-plane components use port 9990 for this.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tracing::{debug, info};

pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server to {addr}"))?;
    info!(addr = %listener.local_addr()?, "admin server listening");
    loop {
        let (stream, peer) = listener.accept().await?;
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(route(req.uri().path(), &registry)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        "/ready" => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/live" => (StatusCode::OK, "text/plain", "live\n".into()),
        other => (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such admin endpoint: {other}\n"),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
