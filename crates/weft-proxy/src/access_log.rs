//! Access logs: one line per inbound HTTP request, with Linkerd's fields,
//! when `WEFT_PROXY_ACCESS_LOG=apache|json` (or `LINKERD2_PROXY_ACCESS_LOG`).
//!
//! The request path never waits for the log: it hands a record to a bounded
//! queue and a writer task formats and writes it to stderr. When the queue
//! is full the record is dropped and counted (`access_log_dropped_total`), so a
//! slow log reader costs lines, not latency. Every field a client chooses
//! (URI, user agent, host, trace id) is escaped and cut at
//! [`MAX_FIELD`] bytes, so a line can neither forge another nor grow without
//! bound.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 8192;
/// A client-chosen field is cut here (and marked with `...`).
pub const MAX_FIELD: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Apache,
    Json,
}

impl Format {
    pub fn parse(v: &str) -> Result<Option<Format>, String> {
        match v.trim() {
            "" => Ok(None),
            "apache" => Ok(Some(Format::Apache)),
            "json" => Ok(Some(Format::Json)),
            other => Err(format!("expected apache or json, not {other:?}")),
        }
    }
}

/// One request as the log tells it.
#[derive(Debug)]
pub struct Record {
    pub at: SystemTime,
    pub client_addr: SocketAddr,
    pub client_id: Option<Arc<str>>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub trace_id: Option<HeaderValue>,
    pub request_bytes: Option<HeaderValue>,
    pub status: u16,
    pub response_bytes: Option<HeaderValue>,
    /// From the request's arrival to the response's headers.
    pub total: Duration,
}

/// The request headers a record keeps (cheap clones of the header values).
pub struct RequestFields {
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub trace_id: Option<HeaderValue>,
    pub request_bytes: Option<HeaderValue>,
}

impl RequestFields {
    pub fn of(headers: &HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).cloned();
        RequestFields {
            host: get("host"),
            user_agent: get("user-agent"),
            // Linkerd's order: B3, then the request id, then AWS's.
            trace_id: get("x-b3-traceid")
                .or_else(|| get("x-request-id"))
                .or_else(|| get("x-amzn-trace-id")),
            request_bytes: get("content-length"),
        }
    }
}

/// The handle the request path logs through.
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Record>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer task (on the current runtime), writing to `out`.
    pub fn start<W: std::io::Write + Send + 'static>(
        format: Format,
        out: W,
        dropped: Counter,
    ) -> Arc<AccessLog> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || write_all(format, rx, out));
        Arc::new(AccessLog { tx, dropped })
    }

    /// Queues `record`, or drops and counts it when the queue is full.
    pub fn log(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer: formats records and writes them, flushing when the queue is
/// momentarily empty. Ends when every handle is gone.
fn write_all<W: std::io::Write>(format: Format, mut rx: mpsc::Receiver<Record>, out: W) {
    let mut out = std::io::BufWriter::new(out);
    let mut line = String::with_capacity(512);
    while let Some(record) = rx.blocking_recv() {
        let mut next = Some(record);
        while let Some(record) = next {
            line.clear();
            match format {
                Format::Json => json_line(&record, &mut line),
                Format::Apache => apache_line(&record, &mut line),
            }
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// A header value as text (`-` without one, or one that is not visible
/// ASCII); the writers cut it.
fn field(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn cut(text: &str) -> &str {
    if text.len() <= MAX_FIELD {
        return text;
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in cut(text).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if text.len() > MAX_FIELD {
        out.push_str("...");
    }
    out.push('"');
}

/// Linkerd's JSON fields.
fn json_line(r: &Record, out: &mut String) {
    let mut first = true;
    let mut key = |out: &mut String, k: &str| {
        out.push_str(if first { "{\"" } else { ",\"" });
        first = false;
        out.push_str(k);
        out.push_str("\":");
    };
    key(out, "timestamp");
    json_str(out, &rfc3339(r.at));
    key(out, "client.addr");
    json_str(out, &r.client_addr.to_string());
    key(out, "client.id");
    json_str(out, r.client_id.as_deref().unwrap_or("-"));
    key(out, "method");
    json_str(out, r.method.as_str());
    key(out, "uri");
    json_str(out, &r.uri.to_string());
    key(out, "version");
    json_str(out, &format!("{:?}", r.version));
    key(out, "host");
    json_str(out, field(r.host.as_ref()));
    key(out, "user_agent");
    json_str(out, field(r.user_agent.as_ref()));
    key(out, "trace_id");
    json_str(out, field(r.trace_id.as_ref()));
    key(out, "request_bytes");
    json_str(out, field(r.request_bytes.as_ref()));
    key(out, "status");
    let _ = write!(out, "{}", r.status);
    key(out, "response_bytes");
    json_str(out, field(r.response_bytes.as_ref()));
    key(out, "total_ns");
    let _ = write!(out, "{}", r.total.as_nanos());
    out.push('}');
}

/// Apache's text, escaped as Apache does it (`\"`, `\\`, `\xNN`).
fn apache_str(out: &mut String, text: &str) {
    for b in cut(text).bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if text.len() > MAX_FIELD {
        out.push_str("...");
    }
}

/// The combined format, with the client's mesh identity where Apache puts
/// the remote user: `addr - id [time] "METHOD URI VERSION" status bytes "-" "agent"`.
fn apache_line(r: &Record, out: &mut String) {
    let _ = write!(out, "{} - ", r.client_addr);
    apache_str(out, r.client_id.as_deref().unwrap_or("-"));
    let _ = write!(out, " [{}] \"{} ", rfc3339(r.at), r.method);
    apache_str(out, &r.uri.to_string());
    let _ = write!(out, " {:?}\" {} ", r.version, r.status);
    apache_str(out, field(r.response_bytes.as_ref()));
    out.push_str(" \"-\" \"");
    apache_str(out, field(r.user_agent.as_ref()));
    out.push('"');
}

/// UTC, to the millisecond: `2026-12-02T18:32:29.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uri: &str, agent: &str) -> Record {
        Record {
            at: UNIX_EPOCH + Duration::from_millis(1_796_236_349_123),
            client_addr: "198.18.0.5:40000".parse().unwrap(),
            client_id: Some("web.demo.serviceaccount.identity.weft.cluster.local".into()),
            method: Method::GET,
            uri: uri.parse().unwrap(),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("voting-svc")),
            user_agent: Some(HeaderValue::from_str(agent).unwrap()),
            trace_id: None,
            request_bytes: None,
            status: 200,
            response_bytes: Some(HeaderValue::from_static("12")),
            total: Duration::from_micros(1500),
        }
    }

    #[test]
    fn json_lines_carry_linkerds_fields_and_escape_what_clients_send() {
        let mut line = String::new();
        json_line(&record("/a?b=1", "curl/8 \"x\"\\"), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-12-02T18:32:29.123Z");
        assert_eq!(v["client.addr"], "198.18.0.5:40000");
        assert_eq!(
            v["client.id"],
            "web.demo.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(v["uri"], "/a?b=1");
        assert_eq!(v["user_agent"], "curl/8 \"x\"\\");
        assert_eq!(
            (v["status"].as_u64(), v["total_ns"].as_u64()),
            (Some(200), Some(1_500_000))
        );
        assert_eq!(v["trace_id"], "-");
    }

    #[test]
    fn a_huge_field_is_cut() {
        let mut line = String::new();
        json_line(&record("/", &"a".repeat(10_000)), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["user_agent"].as_str().unwrap().len(), MAX_FIELD + 3);
    }

    #[test]
    fn apache_lines_escape_quotes_and_bytes() {
        let mut line = String::new();
        apache_line(&record("/x", "a\"b"), &mut line);
        assert_eq!(
            line,
            "198.18.0.5:40000 - web.demo.serviceaccount.identity.weft.cluster.local \
             [2026-12-02T18:32:29.123Z] \"GET /x HTTP/1.1\" 200 12 \"-\" \"a\\\"b\""
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A writer that never finishes its first write holds the queue full.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl std::io::Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let dropped = Counter::default();
        let log = AccessLog::start(Format::Json, Stuck(stuck), dropped.clone());
        let started = std::time::Instant::now();
        for _ in 0..QUEUE * 2 {
            log.log(record("/", "x"));
        }
        // Had logging waited for the writer, this would never have ended.
        assert!(started.elapsed() < Duration::from_secs(10));
        // The writer's buffer took a few before it stuck; the rest of the
        // second half was dropped.
        assert!(dropped.get() >= QUEUE as u64 / 2, "{}", dropped.get());
        drop(release);
    }
}
