//! Denial logs that a hostile client cannot turn into a flood: each
//! (client, server, reason) is logged when first refused, then at most once
//! a minute with how many refusals went unlogged. The metrics count every
//! one; the log says who and why. Keys are bounded: past
//! [`MAX_TRACKED`], the table starts afresh (each key logs once more).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::info;

const MAX_TRACKED: usize = 1024;
const EVERY: Duration = Duration::from_secs(60);

/// Who was refused: the identity it proved, or its address without one.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Who {
    Identity(Arc<str>),
    Address(IpAddr),
}

/// Who was refused, by which server, why.
type Key = (Who, Arc<str>, &'static str);

#[derive(Debug, Default)]
pub struct DenialLog {
    /// When each key was last logged, and how many refusals since.
    seen: Mutex<HashMap<Key, (Instant, u64)>>,
}

/// One refusal.
pub struct Denial<'a> {
    pub client: IpAddr,
    pub identity: Option<&'a str>,
    /// The Server's name (or the default policy's).
    pub server: &'a Arc<str>,
    /// `unauthorized`, `rate_limited`, `route_not_found`.
    pub reason: &'static str,
    /// The route, for HTTP.
    pub route: Option<&'a str>,
}

impl DenialLog {
    pub fn refused(&self, d: Denial) {
        let who = match d.identity {
            Some(id) => Who::Identity(id.into()),
            None => Who::Address(d.client),
        };
        let now = Instant::now();
        let suppressed = {
            let mut seen = self.seen.lock();
            if seen.len() >= MAX_TRACKED {
                seen.clear();
            }
            match seen.entry((who, d.server.clone(), d.reason)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((now, 0));
                    0
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let (logged, unlogged) = o.get_mut();
                    if now.duration_since(*logged) < EVERY {
                        *unlogged += 1;
                        return;
                    }
                    let suppressed = *unlogged;
                    *o.get_mut() = (now, 0);
                    suppressed
                }
            }
        };
        info!(
            client = %d.client,
            client_id = d.identity.unwrap_or("-"),
            server = %d.server,
            route = d.route.unwrap_or("-"),
            reason = d.reason,
            unlogged_since_last = suppressed,
            "refused by inbound policy (reason audit_would_deny: allowed by audit, refused under deny); logged once a minute per client, server and reason"
        );
    }

    #[cfg(test)]
    fn unlogged(&self) -> u64 {
        self.seen.lock().values().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_logs_once_per_key_and_stays_bounded() {
        let log = DenialLog::default();
        let server: Arc<str> = "voting-grpc".into();
        fn denial<'a>(
            server: &'a Arc<str>,
            identity: Option<&'a str>,
            reason: &'static str,
        ) -> Denial<'a> {
            Denial {
                client: [198, 18, 0, 9].into(),
                identity,
                server,
                reason,
                route: None,
            }
        }
        for _ in 0..1000 {
            log.refused(denial(&server, Some("stuffer"), "unauthorized"));
        }
        assert_eq!(log.unlogged(), 999, "one logged, the rest counted");
        log.refused(denial(&server, Some("stuffer"), "rate_limited"));
        log.refused(denial(&server, None, "unauthorized"));
        assert_eq!(log.seen.lock().len(), 3);
        for n in 0..(MAX_TRACKED * 3) {
            let id = format!("client-{n}");
            log.refused(denial(&server, Some(&id), "unauthorized"));
        }
        assert!(log.seen.lock().len() <= MAX_TRACKED);
    }
}
