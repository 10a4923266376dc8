//! TCP metrics: `tcp_open_total`, `tcp_close_total` (with `errno`),
//! `tcp_open_connections`, `tcp_read_bytes_total`, `tcp_write_bytes_total`,
//! `tcp_connection_duration_ms`; [`TcpConn`] resolves a connection's series
//! once and counts its bytes.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::family::{Family, Registrar, Series};
use super::{HistogramFamily, Metrics, TcpLabels, duration_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpCloseLabels {
    #[prometheus(flatten)]
    conn: TcpLabels,
    errno: String,
}

/// The TCP families.
#[derive(Debug)]
pub(super) struct TcpFamilies {
    open_total: Family<TcpLabels, Counter>,
    close_total: Family<TcpCloseLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    read_bytes_total: Family<TcpLabels, Counter>,
    write_bytes_total: Family<TcpLabels, Counter>,
    connection_duration_ms: HistogramFamily<TcpCloseLabels>,
}

impl TcpFamilies {
    pub(super) fn register(r: &mut Registrar) -> Self {
        TcpFamilies {
            open_total: r.counter("tcp_open", "Total TCP connections opened"),
            close_total: r.counter("tcp_close", "Total TCP connections closed"),
            open_connections: r.gauge("tcp_open_connections", "TCP connections currently open"),
            read_bytes_total: r.counter("tcp_read_bytes", "Bytes read from the peer"),
            write_bytes_total: r.counter("tcp_write_bytes", "Bytes written to the peer"),
            connection_duration_ms: r.family(
                "tcp_connection_duration_ms",
                "Lifetime of closed TCP connections in milliseconds",
                duration_histogram,
            ),
        }
    }
}

impl Metrics {
    /// Opens the per-connection accounting for one TCP connection; dropping the
    /// last clone of the returned handle records the close.
    pub fn tcp_open(self: &Arc<Self>, labels: TcpLabels) -> Arc<TcpConn> {
        let conn = self.tcp_accepted(labels.clone());
        conn.label(labels);
        conn
    }

    /// Accounting for an accepted connection whose labels are not known yet
    /// (its TLS identity and real target come from the handshake and the
    /// transport header): bytes are counted from the start and attributed at
    /// [`TcpConn::label`]. A connection that ends before that is recorded
    /// under `fallback`.
    pub fn tcp_accepted(self: &Arc<Self>, fallback: TcpLabels) -> Arc<TcpConn> {
        Arc::new(TcpConn {
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            errno: AtomicI32::new(0),
            opened_at: Instant::now(),
            labelled: OnceLock::new(),
            fallback,
            metrics: self.clone(),
        })
    }
}

/// Byte counts and lifetime of one TCP connection.
#[derive(Debug)]
pub struct TcpConn {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errno: AtomicI32,
    opened_at: Instant,
    labelled: OnceLock<LabelledConn>,
    fallback: TcpLabels,
    metrics: Arc<Metrics>,
}

/// A connection's series, resolved once its labels are known.
#[derive(Debug)]
struct LabelledConn {
    labels: TcpLabels,
    read: Series<Counter>,
    written: Series<Counter>,
    open: Series<Gauge>,
}

impl TcpConn {
    /// Attributes the connection (and the bytes it has moved so far) to
    /// `labels`. Only the first call counts.
    pub fn label(&self, labels: TcpLabels) {
        let m = &self.metrics;
        let mut fresh = false;
        let labelled = self.labelled.get_or_init(|| {
            fresh = true;
            m.tcp.open_total.get_or_create(&labels).inc();
            let open = m.tcp.open_connections.get_or_create(&labels);
            open.inc();
            LabelledConn {
                read: m.tcp.read_bytes_total.get_or_create(&labels),
                written: m.tcp.write_bytes_total.get_or_create(&labels),
                open,
                labels,
            }
        });
        if fresh {
            // Until now only the raw totals moved; one task drives the
            // connection at this point, so nothing is counted twice.
            labelled.read.inc_by(self.bytes_read());
            labelled.written.inc_by(self.bytes_written());
        }
    }

    pub fn add_read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(l) = self.labelled.get() {
            l.read.inc_by(n as u64);
        }
    }

    pub fn add_written(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(l) = self.labelled.get() {
            l.written.inc_by(n as u64);
        }
    }

    /// Total bytes moved either way; idle detection compares successive values.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_read() + self.bytes_written()
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Marks the connection as ended by an I/O error (the `errno` label on close).
    pub fn set_error(&self, err: &std::io::Error) {
        if let Some(code) = err.raw_os_error() {
            self.errno.store(code, Ordering::Relaxed);
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        if self.labelled.get().is_none() {
            self.label(self.fallback.clone());
        }
        let Some(labelled) = self.labelled.get() else {
            return;
        };
        labelled.open.dec();
        let errno = match self.errno.load(Ordering::Relaxed) {
            0 => String::new(),
            code => errno_name(code),
        };
        let labels = TcpCloseLabels {
            conn: labelled.labels.clone(),
            errno,
        };
        self.metrics.tcp.close_total.get_or_create(&labels).inc();
        let ms = self.opened_at.elapsed().as_secs_f64() * 1e3;
        self.metrics
            .tcp
            .connection_duration_ms
            .get_or_create(&labels)
            .observe(ms);
    }
}

fn errno_name(code: i32) -> String {
    match code {
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        other => other.to_string(),
    }
}
