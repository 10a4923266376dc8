//! Connection pools: the connections to each endpoint, kept and reused.
//!
//! HTTP/1: a client connection carries one request at a time, so it leases one
//! upstream connection ([`Lease`]) and keeps it for as long as it lives; the
//! next request goes straight out on it, with no pool look-up. When the client
//! connection ends, the upstream connection goes back to its pool's idle
//! list for other clients. A request that finds its reused connection closed by
//! the server before anything was sent is retried once on a fresh connection.
//! HTTP/1 requests that arrived multiplexed on HTTP/2 (from a peer proxy,
//! see `l5d-orig-proto`) have no connection of their own to lease: each takes
//! a ready idle connection or dials one, and puts it back at once.
//!
//! HTTP/2: one multiplexed connection per endpoint, shared by every client
//! connection, re-established when it closes.
//!
//! Idle connections older than the pool idle timeout are closed by a sweeper,
//! and pools unused for `POOL_EXPIRY` are forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::body::RequestBody;
use super::error::ProxyError;
use crate::dial::{Dialer, EndpointIo};
use crate::metrics::Direction;

type Http1Sender = http1::SendRequest<RequestBody>;
type Http2Sender = http2::SendRequest<RequestBody>;

/// Pools unused for this long are dropped from the map.
const POOL_EXPIRY: Duration = Duration::from_secs(600);

/// The connections to one endpoint in one direction.
#[derive(Debug)]
pub struct Pool {
    pub addr: SocketAddr,
    direction: Direction,
    dialer: Arc<Dialer>,
    idle_http1: Mutex<Vec<(Http1Sender, Instant)>>,
    http2: Mutex<Option<Http2Sender>>,
    /// Held while dialing HTTP/2, so concurrent first requests share one connection.
    http2_dialing: tokio::sync::Mutex<()>,
    last_used: Mutex<Instant>,
}

impl Pool {
    async fn dial(&self) -> Result<TokioIo<EndpointIo>, ProxyError> {
        let io = match self.direction {
            Direction::Inbound => self.dialer.connect_local(self.addr).await?,
            Direction::Outbound => self.dialer.connect(self.addr).await?,
        };
        Ok(TokioIo::new(io))
    }

    async fn new_http1(&self) -> Result<Http1Sender, ProxyError> {
        let io = self.dial().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.failed(&e))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "endpoint connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// An idle connection ready for a request. Connections still finishing
    /// a response stay listed (they become ready when it ends); closed ones
    /// are dropped.
    fn idle_http1(&self) -> Option<Http1Sender> {
        let mut idle = self.idle_http1.lock();
        idle.retain(|(sender, _)| !sender.is_closed());
        let ready = idle.iter().rposition(|(sender, _)| sender.is_ready())?;
        Some(idle.swap_remove(ready).0)
    }

    fn release_http1(&self, sender: Http1Sender) {
        if !sender.is_closed() {
            self.idle_http1.lock().push((sender, Instant::now()));
        }
    }

    async fn http2(&self) -> Result<Http2Sender, ProxyError> {
        if let Some(s) = self.http2.lock().as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let _dialing = self.http2_dialing.lock().await;
        if let Some(s) = self.http2.lock().as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let io = self.dial().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| self.failed(&e))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = ?e, "endpoint HTTP/2 connection ended with an error");
            }
        });
        *self.http2.lock() = Some(sender.clone());
        Ok(sender)
    }

    /// Sends one HTTP/2 request on the shared connection.
    pub async fn send_http2(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.touch();
        let mut sender = self.http2().await?;
        sender.ready().await.map_err(|e| self.failed(&e))?;
        sender.send_request(req).await.map_err(|e| self.failed(&e))
    }

    /// Sends one HTTP/1 request on an idle or new connection, which goes
    /// back to the idle list at once: it is reused when its response ends.
    /// For requests that share no client connection (HTTP/2 requests
    /// downgraded to the application's HTTP/1).
    pub async fn send_http1(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.touch();
        let idle = self.idle_http1();
        let (sender, resp) = self.send_http1_on(idle, req).await?;
        self.release_http1(sender);
        Ok(resp)
    }

    /// Sends on `reused` when it still works, else on a new connection; gives
    /// back the connection used.
    async fn send_http1_on(
        &self,
        reused: Option<Http1Sender>,
        req: Request<RequestBody>,
    ) -> Result<(Http1Sender, Response<Incoming>), ProxyError> {
        let (mut sender, req) = match reused {
            Some(mut sender) => {
                // The previous response may still be finishing on this connection.
                match sender.ready().await {
                    Ok(()) => match sender.try_send_request(req).await {
                        Ok(resp) => return Ok((sender, resp)),
                        Err(mut e) => match e.take_message() {
                            // Never sent: the server had closed the connection. Retry fresh.
                            Some(req) => (self.new_http1().await?, req),
                            None => return Err(self.failed(e.error())),
                        },
                    },
                    Err(_) => (self.new_http1().await?, req),
                }
            }
            None => (self.new_http1().await?, req),
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.failed(&e))?;
        Ok((sender, resp))
    }

    fn failed(&self, e: &hyper::Error) -> ProxyError {
        // The client's own body failed (it reset or broke its framing): not
        // the endpoint's fault, so not counted against it.
        if e.is_user() {
            return ProxyError::RequestBody(weft_identity::control::error_chain(e));
        }
        ProxyError::Upstream {
            addr: self.addr,
            reason: weft_identity::control::error_chain(e),
        }
    }

    fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    /// Closes idle HTTP/1 connections older than `max_idle`.
    fn sweep(&self, now: Instant, max_idle: Duration) {
        self.idle_http1
            .lock()
            .retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < max_idle);
    }
}

/// The HTTP/1 connection a client connection is using, returned to its
/// pool's idle list when the client connection ends.
#[derive(Debug, Default)]
pub struct Lease(Mutex<Option<(Arc<Pool>, Http1Sender)>>);

impl Lease {
    /// Sends one HTTP/1 request through `pool` on the leased connection, or on an
    /// idle or new one.
    pub async fn send_http1(
        &self,
        pool: &Arc<Pool>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let held = self.0.lock().take();
        let reused = match held {
            Some((e, sender)) if Arc::ptr_eq(&e, pool) && !sender.is_closed() => Some(sender),
            Some((other, sender)) => {
                other.release_http1(sender);
                None
            }
            None => None,
        }
        .or_else(|| {
            // A lease holds the pool alive; only a checkout counts as use.
            pool.touch();
            pool.idle_http1()
        });

        let (sender, resp) = pool.send_http1_on(reused, req).await?;
        *self.0.lock() = Some((pool.clone(), sender));
        Ok(resp)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((pool, sender)) = self.0.lock().take() {
            pool.release_http1(sender);
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    direction: Direction,
    addr: SocketAddr,
}

/// Every endpoint's pool.
#[derive(Debug)]
pub struct Pools {
    pub dialer: Arc<Dialer>,
    pools: Mutex<HashMap<Key, Arc<Pool>>>,
}

impl Pools {
    /// Creates the table and its sweeper (which ends with the table).
    pub fn new(dialer: Arc<Dialer>, pool_idle_timeout: Duration) -> Arc<Self> {
        let pools = Arc::new(Pools {
            dialer,
            pools: Mutex::new(HashMap::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&pools), pool_idle_timeout));
        pools
    }

    /// The pool of connections to the local application at `addr`.
    pub fn inbound(&self, addr: SocketAddr) -> Arc<Pool> {
        self.get(Direction::Inbound, addr)
    }

    /// The pool of connections to the endpoint `addr`.
    pub fn outbound(&self, addr: SocketAddr) -> Arc<Pool> {
        self.get(Direction::Outbound, addr)
    }

    fn get(&self, direction: Direction, addr: SocketAddr) -> Arc<Pool> {
        let key = Key { direction, addr };
        self.pools
            .lock()
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    addr,
                    direction,
                    dialer: self.dialer.clone(),
                    idle_http1: Mutex::new(Vec::new()),
                    http2: Mutex::new(None),
                    http2_dialing: tokio::sync::Mutex::new(()),
                    last_used: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }
}

async fn sweep(pools: Weak<Pools>, max_idle: Duration) {
    let period = (max_idle / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let now = Instant::now();
        pools.pools.lock().retain(|_, e| {
            e.sweep(now, max_idle);
            // Keep endpoints someone still holds (a lease, a request) or used lately.
            Arc::strong_count(e) > 1 || now.duration_since(*e.last_used.lock()) < POOL_EXPIRY
        });
    }
}
