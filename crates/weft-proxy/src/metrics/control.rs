//! Control-plane client metrics: `control_request_total`,
//! `control_stream_failures_total`, `control_updates_total`,
//! `control_streams_active`, by control-plane address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Metrics;
use super::family::{Family, Registrar, Series};

/// The control-plane address a client talks to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControlLabels {
    addr: String,
}

/// An open control-plane stream; dropping it ends the count.
pub struct ActiveStream(Series<Gauge>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The control-plane families.
#[derive(Debug)]
pub(super) struct ControlFamilies {
    request_total: Family<ControlLabels, Counter>,
    stream_failures_total: Family<ControlLabels, Counter>,
    updates_total: Family<ControlLabels, Counter>,
    streams_active: Family<ControlLabels, Gauge>,
}

impl ControlFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        ControlFamilies {
            request_total: r.counter(
                "control_request",
                "Discovery streams opened to the control plane",
            ),
            stream_failures_total: r.counter(
                "control_stream_failures",
                "Discovery streams that failed or ended (each is retried with back-off)",
            ),
            updates_total: r.counter("control_updates", "Discovery updates received"),
            streams_active: r.gauge("control_streams_active", "Discovery streams open now"),
        }
    }
}

impl Metrics {
    pub fn control_request(&self, addr: &str) {
        self.control
            .request_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_failure(&self, addr: &str) {
        self.control
            .stream_failures_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_update(&self, addr: &str) {
        self.control
            .updates_total
            .get_or_create(&ControlLabels { addr: addr.into() })
            .inc();
    }

    pub fn control_stream_active(&self, addr: &str) -> ActiveStream {
        let gauge = self
            .control
            .streams_active
            .get_or_create(&ControlLabels { addr: addr.into() })
            .clone();
        gauge.inc();
        ActiveStream(gauge)
    }
}
