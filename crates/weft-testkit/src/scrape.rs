//! Reading a proxy's admin server from tests: plain HTTP/1.0 GETs and
//! Prometheus text parsing.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// A blocking HTTP/1.0 GET (no keep-alive); `None` if nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Sum of the samples of `name` (exactly) whose labels include all of
/// `labels`, read with the CLI's own parser.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    weft_control::metrics_text::sum(&weft_control::metrics_text::parse(text), name, labels)
}
