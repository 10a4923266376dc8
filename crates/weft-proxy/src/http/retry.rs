//! Retries, in one place: how many attempts a request gets, how much of its
//! body is kept to send again, the budget that bounds the extra load, and
//! which failures are worth another attempt.
//!
//! A request on a route its ServiceProfile marks retryable is sent with a
//! [`Replay`] body (streamed through while a copy of up to
//! [`MAX_REPLAY_BODY`] is kept); after a failed attempt, [`RetryPolicy::next`]
//! decides whether another one goes, to another endpoint. Other requests
//! stream once. Both go through the same attempt in `http::proxy`. (The
//! re-send of a request that an idle pooled HTTP/1 connection closed under,
//! before any byte of it left, is not a retry: `http/client.rs` does it on
//! a fresh connection, invisibly, as hyper's pool would.)

use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};

use super::body::{Replay, RequestBody};
use super::error::ProxyError;

/// Attempts per request on a retryable route, the first included.
pub const MAX_ATTEMPTS: u32 = 3;
/// Largest request body kept for replay; a bigger one streams on but is
/// not retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// What a retryable request needs to be sent again.
pub struct RequestHead {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl RequestHead {
    pub fn request(&self, body: RequestBody) -> Request<RequestBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Splits a retryable request into what every attempt reuses: the head,
/// and a body that streams through while keeping a copy of up to `limit`
/// bytes for replays.
pub fn replayable(req: Request<Incoming>, limit: usize) -> (RequestHead, Replay<Incoming>) {
    let (parts, body) = req.into_parts();
    let head = RequestHead {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    (head, Replay::new(body, limit))
}

/// The retry budget: how many retries the proxy may add, shared by every
/// request to the service.
pub struct RetryBudget {
    budget: TpsBudget,
    /// (ratio, min per second, ttl): a new profile with the same values keeps
    /// the same budget.
    pub params: (f32, u32, Duration),
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("params", &self.params)
            .finish()
    }
}

impl RetryBudget {
    /// Values are clamped to what the budget supports (the profile comes
    /// from the network; it must not be able to stop the proxy).
    pub fn new(ratio: f32, min_per_second: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.2
        };
        let min_per_second = min_per_second.min(i32::MAX as u32 - 1);
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        RetryBudget {
            budget: TpsBudget::new(ttl, min_per_second, ratio),
            params: (ratio, min_per_second, ttl),
        }
    }

    /// Every original request adds to the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// A retry takes from it; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

impl Default for RetryBudget {
    /// Linkerd's default: 20% extra load, at least 10 retries a second, over 10 s.
    fn default() -> Self {
        RetryBudget::new(0.2, 10, Duration::from_secs(10))
    }
}

/// Whether a failed request gets another attempt.
pub struct RetryPolicy<'a> {
    pub budget: &'a RetryBudget,
    /// Where retryable failures, and the budget's refusals, are counted.
    pub metrics: Option<&'a crate::metrics::RouteMetrics>,
}

impl RetryPolicy<'_> {
    /// After attempt number `attempt` ended in `result` (`failed` by the
    /// route's response classes, `timed_out` when the request's deadline has
    /// passed): the body for the next attempt, or `None` when this result is
    /// the answer. A body too big to replay ends the retries before the
    /// budget pays for one.
    pub fn next(
        &self,
        attempt: u32,
        result: &Result<Response<Incoming>, ProxyError>,
        failed: bool,
        timed_out: bool,
        replay: &Replay<Incoming>,
    ) -> Option<Replay<Incoming>> {
        let retryable = match result {
            Ok(_) => failed,
            Err(e) => e.is_retryable(),
        };
        if !retryable || timed_out || attempt >= MAX_ATTEMPTS {
            return None;
        }
        let again = replay.again()?;
        let has_budget = self.budget.withdraw();
        if let Some(m) = self.metrics {
            m.retryable(has_budget);
        }
        has_budget.then_some(again)
    }
}
