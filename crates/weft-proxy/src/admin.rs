//! The admin server: `/metrics`, `/ready`, `/live` and `/shutdown`.
//!
//! It shares the runtime with the data plane but is not drained: it keeps
//! answering (with `/ready` turned 503) until the process exits, so probes and
//! the last scrape see the drain happen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::drain::ShutdownTrigger;
use crate::metrics::Metrics;
use crate::proxy::Readiness;

/// `shutdown` is `None` when `/shutdown` is disabled (the default).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: Option<ShutdownTrigger>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, readiness, shutdown) = (metrics.clone(), readiness.clone(), shutdown.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&req, peer, &metrics, &readiness, &shutdown);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn route(
    req: &Request<Incoming>,
    peer: SocketAddr,
    metrics: &Metrics,
    readiness: &Readiness,
    shutdown: &Option<ShutdownTrigger>,
) -> Response<Full<Bytes>> {
    let method = req.method();
    match (req.uri().path(), method) {
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let mut resp = text(StatusCode::OK, metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        ("/ready", &Method::GET | &Method::HEAD) if readiness.is_ready() => {
            text(StatusCode::OK, "ready\n")
        }
        ("/ready", &Method::GET | &Method::HEAD) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", readiness.reason()),
        ),
        ("/live", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "live\n"),
        ("/shutdown", &Method::POST) if shutdown.is_none() => {
            warn!(%peer, "refused /shutdown: the endpoint is disabled");
            text(
                StatusCode::NOT_FOUND,
                "the shutdown endpoint is disabled (WEFT_PROXY_SHUTDOWN_ENDPOINT_ENABLED=true enables it for loopback clients)\n",
            )
        }
        ("/shutdown", &Method::POST) if peer.ip().is_loopback() => {
            info!(%peer, "shutdown requested through the admin server");
            if let Some(trigger) = shutdown {
                trigger.trigger();
            }
            text(StatusCode::OK, "shutdown\n")
        }
        ("/shutdown", &Method::POST) => {
            warn!(%peer, "refused /shutdown from a non-loopback client");
            text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from loopback clients\n",
            )
        }
        ("/metrics" | "/ready" | "/live" | "/shutdown", _) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here\n"),
        ),
        (path, _) => text(
            StatusCode::NOT_FOUND,
            format!("no such admin endpoint: {path}\n"),
        ),
    }
}
