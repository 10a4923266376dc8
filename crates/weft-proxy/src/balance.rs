//! Per-request load balancing over a discovered endpoint set:
//! power-of-two-choices on a peak-EWMA latency estimate, with failure accrual.
//!
//! Written here rather than with tower's `Balance` because the proxy's
//! request path is a plain async function over shared endpoint pools: a pick
//! is two random draws and two atomic loads, with no `poll_ready`, no buffer
//! task and no channel hop per request.
//!
//! - **Cost** of an endpoint = its latency estimate × (requests in flight + 1).
//!   The estimate jumps up to any slower response at once (peak), moves
//!   towards faster ones as an EWMA, and decays with a 10 s time constant
//!   while idle, so a slow replica loses traffic immediately and is tried
//!   again gradually.
//! - **Failure accrual**: after [`EJECT_AFTER`] consecutive failures
//!   (connection errors or 5xx), an endpoint is ejected for a back-off that
//!   starts at 1 s and doubles up to 60 s; when it expires, the endpoint is
//!   tried again (probed) and one success clears its record. A backend of an
//!   outbound policy uses the policy's circuit breaker instead
//!   ([`Balancer::set_accrual`]), or none when the policy names none, as
//!   Linkerd does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use weft_policy::outbound::{Accrual, Backoff};

/// Consecutive failures that eject an endpoint (Linkerd's default).
pub const EJECT_AFTER: u32 = 7;

/// The circuit breaker of a balancer no policy configures: Linkerd's
/// defaults.
pub const DEFAULT_ACCRUAL: Accrual = Accrual {
    max_failures: EJECT_AFTER,
    backoff: Backoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.0,
    },
};
/// The decay time constant of the latency estimate.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint that has not answered yet.
const DEFAULT_RTT_NS: f64 = 1_000_000.0;
/// The least latency a failure counts as.
const FAILURE_MIN_NS: f64 = 10_000_000.0;

/// The load and health of one endpoint, kept across endpoint-set updates.
#[derive(Debug)]
pub struct EndpointLoad {
    pub addr: SocketAddr,
    pending: AtomicU32,
    /// The latency estimate in ns, as f64 bits, and when it was last updated.
    rtt: Mutex<(f64, Instant)>,
    consecutive_failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the endpoint is ejected (0: not).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    epoch: Instant,
}

impl EndpointLoad {
    fn new(addr: SocketAddr, epoch: Instant) -> Self {
        EndpointLoad {
            addr,
            pending: AtomicU32::new(0),
            rtt: Mutex::new((DEFAULT_RTT_NS, Instant::now())),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            epoch,
        }
    }

    fn cost(&self, now: Instant) -> f64 {
        let (rtt, at) = *self.rtt.lock();
        let decayed = decay(rtt, now.duration_since(at));
        decayed * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && (now.duration_since(self.epoch).as_nanos() as u64) < until
    }

    /// Records how a request ended at `now`: its latency to response headers
    /// and whether it failed.
    fn observe(&self, now: Instant, rtt: Duration, failed: bool, accrual: Option<&Accrual>) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        {
            let mut est = self.rtt.lock();
            // A fast failure (a refused connection) must not look attractive:
            // it counts as twice the current estimate, at least 10 ms.
            let sample = if failed {
                (rtt.as_nanos() as f64).max(est.0 * 2.0).max(FAILURE_MIN_NS)
            } else {
                rtt.as_nanos() as f64
            };
            let since = now.duration_since(est.1);
            est.0 = if sample > est.0 {
                sample
            } else {
                let w = (-since.as_secs_f64() / DECAY.as_secs_f64()).exp();
                est.0 * w + sample * (1.0 - w)
            };
            est.1 = now;
        }
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            return;
        }
        let Some(accrual) = accrual else { return };
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= accrual.max_failures {
            let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
            let backoff = accrual.backoff.delay(n, fastrand::f32());
            let until = now.duration_since(self.epoch) + backoff;
            self.ejected_until
                .store(until.as_nanos() as u64, Ordering::Relaxed);
            // The probe after the back-off gets one chance before the next ejection.
            self.consecutive_failures
                .store(accrual.max_failures - 1, Ordering::Relaxed);
            tracing::info!(endpoint = %self.addr, ?backoff, "endpoint ejected after consecutive failures");
        }
    }
}

/// Without samples, the estimate decays towards zero, so an endpoint that
/// was slow once is tried again after a while instead of being starved.
fn decay(rtt: f64, since: Duration) -> f64 {
    rtt * (-since.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The service has no endpoints at all.
    Empty,
    /// Every endpoint is ejected for failing.
    AllEjected(usize),
}

/// A request in flight on an endpoint; report how it went with [`Pick::done`].
/// Dropped without a report (the request was cancelled), it only ends the
/// in-flight count.
#[derive(Debug)]
pub struct Pick {
    load: Arc<EndpointLoad>,
    started: Instant,
    reported: bool,
    accrual: Option<Accrual>,
}

impl Pick {
    pub fn addr(&self) -> SocketAddr {
        self.load.addr
    }

    pub fn done(self, failed: bool) {
        let now = Instant::now();
        let rtt = now.duration_since(self.started);
        self.finish(now, rtt, failed);
    }

    fn finish(mut self, now: Instant, rtt: Duration, failed: bool) {
        self.reported = true;
        self.load.observe(now, rtt, failed, self.accrual.as_ref());
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if !self.reported {
            self.load.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The endpoints of one target and their loads.
#[derive(Debug)]
pub struct Balancer {
    epoch: Instant,
    endpoints: Mutex<Arc<Vec<Arc<EndpointLoad>>>>,
    accrual: Mutex<Option<Accrual>>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            epoch: Instant::now(),
            endpoints: Mutex::new(Arc::new(Vec::new())),
            accrual: Mutex::new(Some(DEFAULT_ACCRUAL)),
        }
    }
}

impl Balancer {
    /// The circuit breaker from now on (`None`: failures never eject);
    /// what each endpoint has learned is kept.
    pub fn set_accrual(&self, accrual: Option<Accrual>) {
        *self.accrual.lock() = accrual;
    }

    /// Replaces the endpoint set; endpoints still present keep their load and
    /// health, so an update never resets what was learned.
    pub fn update(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut current = self.endpoints.lock();
        let known: HashMap<SocketAddr, Arc<EndpointLoad>> =
            current.iter().map(|e| (e.addr, e.clone())).collect();
        let next: Vec<_> = addrs
            .into_iter()
            .map(|a| {
                known
                    .get(&a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointLoad::new(a, self.epoch)))
            })
            .collect();
        *current = Arc::new(next);
    }

    pub fn len(&self) -> usize {
        self.endpoints.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a pick could succeed now: an endpoint that is not ejected.
    pub fn has_available(&self) -> bool {
        let now = Instant::now();
        self.endpoints.lock().iter().any(|e| !e.is_ejected(now))
    }

    /// Chooses an endpoint: the cheaper of two random healthy ones.
    pub fn pick(&self) -> Result<Pick, NoEndpoint> {
        self.pick_at(Instant::now(), None)
    }

    /// Chooses an endpoint other than `avoid` (the one a retry just failed
    /// on) when another healthy one exists.
    pub fn pick_avoiding(&self, avoid: SocketAddr) -> Result<Pick, NoEndpoint> {
        self.pick_at(Instant::now(), Some(avoid))
    }

    fn pick_at(&self, now: Instant, avoid: Option<SocketAddr>) -> Result<Pick, NoEndpoint> {
        let endpoints = self.endpoints.lock().clone();
        let usable = |e: &Arc<EndpointLoad>| !e.is_ejected(now) && Some(e.addr) != avoid;
        let mut candidates = endpoints.iter().filter(|e| usable(e)).count();
        let mut eligible: &dyn Fn(&Arc<EndpointLoad>) -> bool = &usable;
        let healthy = |e: &Arc<EndpointLoad>| !e.is_ejected(now);
        if candidates == 0 && avoid.is_some() {
            // Only the endpoint to avoid is healthy: better it than nothing.
            candidates = endpoints.iter().filter(|e| healthy(e)).count();
            eligible = &healthy;
        }
        // The n-th eligible endpoint, without collecting them (this runs per request).
        let nth = |n: usize| endpoints.iter().filter(|e| eligible(e)).nth(n);
        let chosen = match candidates {
            0 if endpoints.is_empty() => return Err(NoEndpoint::Empty),
            0 => return Err(NoEndpoint::AllEjected(endpoints.len())),
            1 => nth(0),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                match (nth(a), nth(b)) {
                    (Some(ea), Some(eb)) => {
                        Some(if ea.cost(now) <= eb.cost(now) { ea } else { eb })
                    }
                    (one, other) => one.or(other),
                }
            }
        };
        let Some(chosen) = chosen else {
            return Err(NoEndpoint::AllEjected(endpoints.len()));
        };
        chosen.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Pick {
            load: chosen.clone(),
            started: now,
            reported: false,
            accrual: *self.accrual.lock(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([198, 18, 1, i], 8080)))
            .collect()
    }

    /// Sends `n` sequential requests one `interval` apart, each taking
    /// `latency(addr)`, on a simulated clock; returns the picks per endpoint.
    fn simulate(
        b: &Balancer,
        n: usize,
        latency: impl Fn(SocketAddr) -> Duration,
    ) -> HashMap<SocketAddr, u32> {
        let mut now = Instant::now();
        let mut counts = HashMap::new();
        for _ in 0..n {
            let p = b.pick_at(now, None).unwrap();
            let rtt = latency(p.addr());
            *counts.entry(p.addr()).or_default() += 1;
            now += rtt;
            p.finish(now, rtt, false);
        }
        counts
    }

    #[test]
    fn equal_endpoints_share_evenly() {
        // Seeded: the shares are noisy by nature (peak-EWMA follows jitter),
        // and a test must not depend on luck.
        fastrand::seed(7);
        let b = Balancer::default();
        b.update(addrs(3));
        // The same latency with jitter, as real replicas have.
        let counts = simulate(&b, 3000, |_| {
            Duration::from_micros(1000 + fastrand::u64(..200))
        });
        // Within 20%..47% each.
        for (addr, n) in counts {
            assert!((600..=1410).contains(&n), "{addr}: {n}");
        }
    }

    #[test]
    fn a_slow_endpoint_gets_less() {
        let b = Balancer::default();
        let all = addrs(3);
        b.update(all.clone());
        let slow = all[0];
        let counts = simulate(&b, 3000, |a| {
            Duration::from_millis(if a == slow { 20 } else { 1 })
        });
        let slow_picks = counts.get(&slow).copied().unwrap_or(0);
        assert!(slow_picks < 300, "slow endpoint got {slow_picks} of 3000");
    }

    #[test]
    fn failing_endpoints_are_ejected_and_all_ejected_fails_fast() {
        let b = Balancer::default();
        let all = addrs(2);
        b.update(all.clone());
        // Fail the first endpoint until it is ejected.
        for _ in 0..EJECT_AFTER {
            let p = b.pick_avoiding(all[1]).unwrap();
            assert_eq!(p.addr(), all[0]);
            p.done(true);
        }
        for _ in 0..100 {
            let p = b.pick().unwrap();
            assert_eq!(p.addr(), all[1], "ejected endpoints get no traffic");
            p.done(false);
        }
        for _ in 0..EJECT_AFTER {
            b.pick().unwrap().done(true);
        }
        assert_eq!(b.pick().unwrap_err(), NoEndpoint::AllEjected(2));
        b.update(Vec::new());
        assert_eq!(b.pick().unwrap_err(), NoEndpoint::Empty);
    }

    #[test]
    fn updates_keep_what_was_learned() {
        let b = Balancer::default();
        let all = addrs(2);
        b.update(all.clone());
        for _ in 0..EJECT_AFTER {
            b.pick_avoiding(all[1]).unwrap().done(true);
        }
        b.update(addrs(3));
        for _ in 0..50 {
            assert_ne!(b.pick().unwrap().addr(), all[0]);
        }
    }
}
