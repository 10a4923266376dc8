//! Helpers shared by the integration tests: a real weft-proxy process, real
//! servers from weft-testkit, curl, and metric parsing.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::net::SocketAddr;

use tokio::net::TcpListener;
pub use weft_testkit::scrape::{http_get, metric_sum};

pub use weft_testkit::ports::free_port;

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub use weft_testkit::curl::curl;
pub use weft_testkit::proxy::Proxy;

/// A proxy of this crate's binary with extra settings, ready.
pub fn start_proxy(env: &[(&str, String)]) -> Proxy {
    Proxy::builder(env!("CARGO_BIN_EXE_weft-proxy"))
        .envs(env)
        .start()
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test server");
    let a = l.local_addr().expect("listener address");
    (l, a)
}

/// Runs a weft-testkit server (e.g. `weft_testkit::http::serve`) on a fresh
/// loopback port in the test's runtime.
pub async fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (l, a) = listen().await;
    tokio::spawn(serve(l));
    a
}

/// testkit's HTTP server behind a proxy's inbound side.
pub async fn http_app_behind_inbound_proxy(env: &[(&str, String)]) -> Proxy {
    inbound_proxy_to(spawn_server(weft_testkit::http::serve).await, env)
}

/// A proxy whose inbound side forwards to `server` (the rootless setup).
pub fn inbound_proxy_to(server: SocketAddr, env: &[(&str, String)]) -> Proxy {
    let mut all = vec![("WEFT_PROXY_INBOUND_FORWARD_ADDR", server.to_string())];
    all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    start_proxy(&all)
}
