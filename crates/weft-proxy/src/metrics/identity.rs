//! The proxy's own identity: `identity_cert_expiration_timestamp_seconds`
//! and `identity_cert_refresh_total` by result.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;
use super::family::{Family, SeriesLimits};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    result: &'static str,
}

/// The identity families.
#[derive(Debug)]
pub(super) struct IdentityFamilies {
    cert_expiration_timestamp_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    cert_refresh_total: Family<RefreshLabels, Counter>,
}

impl IdentityFamilies {
    pub(super) fn register(registry: &mut Registry, limits: SeriesLimits) -> Self {
        let f = IdentityFamilies {
            cert_expiration_timestamp_seconds: Gauge::default(),
            cert_refresh_total: Family::new(limits, Counter::default),
        };
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When this proxy's certificate expires, seconds since the Unix epoch",
            f.cert_expiration_timestamp_seconds.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Certify attempts by result",
            f.cert_refresh_total.clone(),
        );
        f
    }
}

impl Metrics {
    /// Records a Certify attempt; on success, the new certificate's expiry.
    /// A Certify outcome: `Some(valid_until)` when it succeeded.
    pub fn identity_refreshed(&self, outcome: Option<SystemTime>) {
        let result = if outcome.is_some() { "ok" } else { "failure" };
        self.identity
            .cert_refresh_total
            .get_or_create(&RefreshLabels { result })
            .inc();
        if let Some(valid_until) = outcome {
            let secs = valid_until
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.identity.cert_expiration_timestamp_seconds.set(secs);
        }
    }
}
