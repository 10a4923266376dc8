//! A metric family with a bound: at most so many label sets, and series that
//! nothing uses are dropped after a while.
//!
//! Label values that a client can influence (an authority, a target port, a
//! client identity) must not grow the proxy's memory or its exposition without
//! limit. prometheus-client's `Family` keeps every label set forever, so the
//! proxy uses this one instead:
//!
//! - a series is *in use* while a [`Series`] handle to it lives (connections and
//!   label-set caches hold one) and *touched* whenever it is looked up;
//! - a series neither in use nor touched for the idle timeout is dropped when
//!   the family is next scraped or needs room (linkerd2-proxy keeps idle series
//!   ten minutes too); a counter that comes back starts from zero, which
//!   Prometheus' `rate()` reads as a reset;
//! - a family that holds its maximum gives further label sets one shared
//!   series labelled `overflow="true"`, and says so once in the log.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use tracing::warn;

/// How many series a family keeps, and for how long an unused one.
#[derive(Clone, Copy, Debug)]
pub struct SeriesLimits {
    pub max_series: usize,
    pub idle_timeout: Duration,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            max_series: 2000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// A handle to one series: the metric, and the mark that keeps it in use.
#[derive(Clone, Debug)]
pub struct Series<M> {
    metric: M,
    _in_use: Arc<()>,
}

impl<M> Deref for Series<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.metric
    }
}

#[derive(Debug)]
struct Entry<M> {
    metric: M,
    in_use: Arc<()>,
    /// When the series was last looked up or last seen in use.
    last_used: Instant,
}

impl<M: Clone> Entry<M> {
    fn new(metric: M) -> Self {
        Entry {
            metric,
            in_use: Arc::new(()),
            last_used: Instant::now(),
        }
    }

    fn handle(&mut self) -> Series<M> {
        self.last_used = Instant::now();
        Series {
            metric: self.metric.clone(),
            _in_use: self.in_use.clone(),
        }
    }

    /// Whether the series may go: nothing holds it and it was not used lately.
    fn expired(&mut self, now: Instant, idle: Duration) -> bool {
        if Arc::strong_count(&self.in_use) > 1 {
            self.last_used = now;
            return false;
        }
        now.duration_since(self.last_used) >= idle
    }
}

struct Inner<L, M> {
    series: HashMap<L, Entry<M>>,
    overflow: Option<Entry<M>>,
}

/// A family of series of `M` keyed by label set `L`, bounded (module docs).
pub struct Family<L, M> {
    inner: Arc<Mutex<Inner<L, M>>>,
    make: fn() -> M,
    limits: SeriesLimits,
    warned: Arc<AtomicBool>,
}

impl<L, M> Clone for Family<L, M> {
    fn clone(&self) -> Self {
        Family {
            inner: self.inner.clone(),
            make: self.make,
            limits: self.limits,
            warned: self.warned.clone(),
        }
    }
}

impl<L, M> fmt::Debug for Family<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.inner.lock().series.len();
        f.debug_struct("Family")
            .field("series", &len)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<L: Clone + Hash + Eq, M: Clone> Family<L, M> {
    pub fn new(limits: SeriesLimits, make: fn() -> M) -> Self {
        Family {
            inner: Arc::new(Mutex::new(Inner {
                series: HashMap::new(),
                overflow: None,
            })),
            make,
            limits,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The series for `labels`, made if new and there is room; else the
    /// overflow series.
    pub fn get_or_create(&self, labels: &L) -> Series<M> {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.series.get_mut(labels) {
            return entry.handle();
        }
        if inner.series.len() >= self.limits.max_series {
            self.evict(&mut inner, Instant::now());
        }
        if inner.series.len() >= self.limits.max_series {
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(
                    max_series = self.limits.max_series,
                    "a metric family is full; new label sets are counted as overflow=\"true\" (see WEFT_PROXY_METRICS_MAX_SERIES)"
                );
            }
            let make = self.make;
            return inner
                .overflow
                .get_or_insert_with(|| Entry::new(make()))
                .handle();
        }
        inner
            .series
            .entry(labels.clone())
            .or_insert_with(|| Entry::new((self.make)()))
            .handle()
    }

    fn evict(&self, inner: &mut Inner<L, M>, now: Instant) {
        let idle = self.limits.idle_timeout;
        inner.series.retain(|_, entry| !entry.expired(now, idle));
        if inner
            .overflow
            .as_mut()
            .is_some_and(|entry| entry.expired(now, idle))
        {
            inner.overflow = None;
        }
    }

    /// How many label sets the family holds now (the overflow series aside).
    pub fn len(&self) -> usize {
        self.inner.lock().series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The label set of the overflow series.
struct Overflow;

impl EncodeLabelSet for Overflow {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("overflow", "true").encode(encoder.encode_label())
    }
}

impl<L, M> Family<L, M>
where
    L: Clone + Hash + Eq + EncodeLabelSet + Send + Sync + fmt::Debug + 'static,
    M: Clone + EncodeMetric + TypedMetric + Send + Sync + fmt::Debug + 'static,
{
    /// A family registered in `registry` as `name` (prometheus-client
    /// appends `_total` to counters): a metric is one line where it is kept.
    pub fn registered(
        registry: &mut prometheus_client::registry::Registry,
        name: &str,
        help: &str,
        limits: SeriesLimits,
        make: fn() -> M,
    ) -> Self {
        let family = Family::new(limits, make);
        registry.register(name, help, family.clone());
        family
    }
}

/// Registers bounded families in one registry under one set of limits: a
/// metric is one line, `r.counter("name", "help")`.
pub struct Registrar<'a> {
    pub registry: &'a mut prometheus_client::registry::Registry,
    pub limits: SeriesLimits,
}

impl Registrar<'_> {
    pub fn family<L, M>(&mut self, name: &str, help: &str, make: fn() -> M) -> Family<L, M>
    where
        L: Clone + Hash + Eq + EncodeLabelSet + Send + Sync + fmt::Debug + 'static,
        M: Clone + EncodeMetric + TypedMetric + Send + Sync + fmt::Debug + 'static,
    {
        Family::registered(self.registry, name, help, self.limits, make)
    }

    pub fn counter<L>(&mut self, name: &str, help: &str) -> Family<L, Counter>
    where
        L: Clone + Hash + Eq + EncodeLabelSet + Send + Sync + fmt::Debug + 'static,
    {
        self.family(name, help, Counter::default)
    }

    pub fn gauge<L>(&mut self, name: &str, help: &str) -> Family<L, Gauge>
    where
        L: Clone + Hash + Eq + EncodeLabelSet + Send + Sync + fmt::Debug + 'static,
    {
        self.family(name, help, Gauge::default)
    }
}

impl<L, M> EncodeMetric for Family<L, M>
where
    L: Clone + Hash + Eq + EncodeLabelSet,
    M: Clone + EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let mut inner = self.inner.lock();
        // Scrapes are when idle series go, so the exposition shows what is live.
        self.evict(&mut inner, Instant::now());
        for (labels, entry) in &inner.series {
            entry.metric.encode(encoder.encode_family(labels)?)?;
        }
        if let Some(entry) = &inner.overflow {
            entry.metric.encode(encoder.encode_family(&Overflow)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        let inner = self.inner.lock();
        inner.series.is_empty() && inner.overflow.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct Labels {
        authority: String,
    }

    fn labels(n: usize) -> Labels {
        Labels {
            authority: format!("a{n}"),
        }
    }

    fn exposition(family: &Family<Labels, Counter>) -> String {
        let mut registry = Registry::default();
        registry.register("request", "requests", family.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_full_family_counts_new_label_sets_as_overflow() {
        let limits = SeriesLimits {
            max_series: 3,
            idle_timeout: Duration::from_secs(600),
        };
        let family: Family<Labels, Counter> = Family::new(limits, Counter::default);
        for n in 0..10 {
            family.get_or_create(&labels(n)).inc();
        }
        assert_eq!(family.len(), 3);
        let text = exposition(&family);
        assert!(
            text.contains(r#"request_total{authority="a0"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"request_total{overflow="true"} 7"#),
            "{text}"
        );
        assert!(!text.contains("a9"), "{text}");
    }

    #[test]
    fn unused_series_go_after_the_idle_timeout_and_held_ones_stay() {
        let limits = SeriesLimits {
            max_series: 100,
            idle_timeout: Duration::ZERO,
        };
        let family: Family<Labels, Counter> = Family::new(limits, Counter::default);
        let held = family.get_or_create(&labels(1));
        held.inc();
        family.get_or_create(&labels(2)).inc();
        let text = exposition(&family);
        assert!(text.contains(r#"authority="a1"} 1"#), "{text}");
        assert!(!text.contains("a2"), "{text}");
        drop(held);
        assert!(!exposition(&family).contains("a1"));
        // Back again, it counts from zero.
        family.get_or_create(&labels(2)).inc();
        assert_eq!(family.len(), 1);
    }

    #[test]
    fn a_full_family_makes_room_by_dropping_idle_series() {
        let limits = SeriesLimits {
            max_series: 2,
            idle_timeout: Duration::ZERO,
        };
        let family: Family<Labels, Counter> = Family::new(limits, Counter::default);
        let _held = family.get_or_create(&labels(0));
        family.get_or_create(&labels(1)).inc();
        family.get_or_create(&labels(2)).inc();
        let text = exposition(&family);
        assert!(!text.contains("overflow"), "{text}");
    }
}
