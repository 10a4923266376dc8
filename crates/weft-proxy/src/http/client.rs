//! Connection pools to endpoints.
//!
//! One hyper-util client per (direction, endpoint address, protocol). Its
//! connector always dials that one address, whatever the request's authority
//! says, so the authority travels unchanged (Host / `:authority`) while the
//! pool keeps HTTP/1.1 connections alive and multiplexes HTTP/2 on one
//! connection. The pool also retries a request that never left because a
//! reused keep-alive connection closed under it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::io::Metered;
use crate::metrics::{Direction, Metrics};
use crate::tcp::{self, ConnectError};

pub type Client = hyper_util::client::legacy::Client<Connector, Incoming>;

/// Dials one endpoint.
#[derive(Clone, Debug)]
pub struct Connector {
    addr: SocketAddr,
    direction: Direction,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Connection for Metered<TcpStream> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Metered<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _authority: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            tcp::connect(&this.metrics, this.direction, this.addr, this.timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    direction: Direction,
    addr: SocketAddr,
    http2: bool,
}

/// Clients unused for this long are forgotten (their idle connections are
/// long closed by then), so a proxy that talks to many short-lived endpoints
/// does not grow.
const CLIENT_EXPIRY: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Clients {
    metrics: Arc<Metrics>,
    inbound_connect_timeout: Duration,
    outbound_connect_timeout: Duration,
    pool_idle_timeout: Duration,
    clients: Mutex<HashMap<Key, (Client, Instant)>>,
}

impl Clients {
    pub fn new(config: &crate::config::Config, metrics: Arc<Metrics>) -> Self {
        Clients {
            metrics,
            inbound_connect_timeout: config.inbound_connect_timeout,
            outbound_connect_timeout: config.outbound_connect_timeout,
            pool_idle_timeout: config.http_pool_idle_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, direction: Direction, addr: SocketAddr, http2: bool) -> Client {
        let key = Key {
            direction,
            addr,
            http2,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = now;
            return client.clone();
        }
        if clients.len() > 64 {
            clients.retain(|_, (_, used)| now.duration_since(*used) < CLIENT_EXPIRY);
        }
        let timeout = match direction {
            Direction::Inbound => self.inbound_connect_timeout,
            Direction::Outbound => self.outbound_connect_timeout,
        };
        let connector = Connector {
            addr,
            direction,
            timeout,
            metrics: self.metrics.clone(),
        };
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(http2)
            .build(connector);
        clients.insert(key, (client.clone(), now));
        client
    }
}
