//! `HTTPLocalRateLimitPolicy` enforcement: token buckets for the server's
//! total, for each client identity (unauthenticated clients share one), and
//! for the named clients of overrides. Limits are per proxy, as Linkerd's
//! are: a workload with N replicas admits N times the rate.

use std::collections::HashMap;
use std::time::Instant;

use linkerd2_proxy_api::inbound as api;
use parking_lot::Mutex;

use crate::authz::Ref;

/// Identities tracked for per-identity limits; beyond this the least
/// recently seen is forgotten (it starts again with a full bucket).
const MAX_TRACKED_IDENTITIES: usize = 4096;

#[derive(Debug)]
pub struct RateLimit {
    pub reference: Ref,
    total: Option<Mutex<Bucket>>,
    identity: Option<u32>,
    overrides: HashMap<String, u32>,
    per_identity: Mutex<HashMap<Option<String>, Bucket>>,
}

/// A token bucket holding at most one second of its rate.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            updated: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An outbound rate limit (`weft.io/outbound-rate-limit`): one bucket for
/// everything this proxy sends to a target.
#[derive(Debug)]
pub struct OutboundLimiter {
    pub requests_per_second: u32,
    bucket: Mutex<Bucket>,
}

impl OutboundLimiter {
    pub fn new(requests_per_second: u32) -> Self {
        OutboundLimiter {
            requests_per_second,
            bucket: Mutex::new(Bucket::new(requests_per_second, Instant::now())),
        }
    }

    /// Whether one more request may go now.
    pub fn admit(&self) -> bool {
        self.bucket.lock().take(Instant::now())
    }
}

impl RateLimit {
    pub fn from_proto(p: api::HttpLocalRateLimit) -> RateLimit {
        let now = Instant::now();
        let reference = match p.metadata.and_then(|m| m.kind) {
            Some(linkerd2_proxy_api::meta::metadata::Kind::Resource(r)) => Ref {
                group: r.group.into(),
                kind: r.kind.into(),
                name: r.name.into(),
            },
            _ => Ref::default(),
        };
        let mut overrides = HashMap::new();
        for o in p.overrides {
            let Some(limit) = o.limit else { continue };
            for id in o.clients.into_iter().flat_map(|c| c.identities) {
                overrides.insert(id.name, limit.requests_per_second);
            }
        }
        RateLimit {
            reference,
            total: p
                .total
                .map(|t| Mutex::new(Bucket::new(t.requests_per_second, now))),
            identity: p.identity.map(|l| l.requests_per_second),
            overrides,
            per_identity: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request from `identity` may go now (taking its tokens).
    pub fn admit(&self, identity: Option<&str>) -> bool {
        let now = Instant::now();
        let rate = identity
            .and_then(|id| self.overrides.get(id).copied())
            .or(self.identity);
        if let Some(rate) = rate {
            let mut buckets = self.per_identity.lock();
            let key = identity.map(str::to_string);
            if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED_IDENTITIES {
                let oldest = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    buckets.remove(&oldest);
                }
            }
            let bucket = buckets.entry(key).or_insert_with(|| Bucket::new(rate, now));
            if !bucket.take(now) {
                return false;
            }
        }
        self.total.as_ref().is_none_or(|t| t.lock().take(now))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_admits_its_rate_and_a_burst_of_one_second() {
        let start = Instant::now();
        let mut b = Bucket::new(10, start);
        let burst = (0..20).filter(|_| b.take(start)).count();
        assert_eq!(burst, 10);
        // Over the next two seconds, at one request per millisecond: 20 more.
        let later = (1..=2000)
            .filter(|ms| b.take(start + Duration::from_millis(*ms)))
            .count();
        assert_eq!(later, 20);
    }

    #[test]
    fn identities_have_their_own_buckets_and_overrides() {
        use api::http_local_rate_limit as rl;
        let limit = |n| {
            Some(rl::Limit {
                requests_per_second: n,
            })
        };
        let p = api::HttpLocalRateLimit {
            metadata: None,
            total: limit(100),
            identity: limit(2),
            overrides: vec![rl::Override {
                limit: limit(5),
                clients: Some(rl::r#override::ClientIdentities {
                    identities: vec![api::Identity { name: "bot".into() }],
                }),
            }],
        };
        let rl = RateLimit::from_proto(p);
        let admitted = |id: Option<&str>| (0..10).filter(|_| rl.admit(id)).count();
        assert_eq!(admitted(Some("web")), 2);
        assert_eq!(
            admitted(Some("emoji")),
            2,
            "another identity, another bucket"
        );
        assert_eq!(admitted(Some("bot")), 5, "an override");
        assert_eq!(admitted(None), 2, "unauthenticated clients share one");
    }

    #[test]
    fn tracked_identities_are_bounded() {
        let rl = RateLimit::from_proto(api::HttpLocalRateLimit {
            metadata: None,
            total: None,
            identity: Some(api::http_local_rate_limit::Limit {
                requests_per_second: 1,
            }),
            overrides: Vec::new(),
        });
        for n in 0..(MAX_TRACKED_IDENTITIES + 100) {
            rl.admit(Some(&format!("client-{n}")));
        }
        assert_eq!(rl.per_identity.lock().len(), MAX_TRACKED_IDENTITIES);
    }
}
