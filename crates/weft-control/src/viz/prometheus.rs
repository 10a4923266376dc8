//! A client for Prometheus's HTTP API: instant queries (`/api/v1/query`),
//! answered as vectors of samples. Bounded: an answer larger than
//! [`MAX_ANSWER`] or slower than the timeout is an error, not a wait.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde::Deserialize;

/// A query's answer may be this large.
pub const MAX_ANSWER: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot reach Prometheus at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("Prometheus at {addr} refused the query {query:?}: {reason}")]
    Refused {
        addr: SocketAddr,
        query: String,
        reason: String,
    },
}

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The mesh's Prometheus.
#[derive(Clone, Debug)]
pub struct Prometheus {
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Runs an instant query; `NaN` values (an empty histogram's quantile)
    /// are left out.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, QueryError> {
        let unreachable = |reason: String| QueryError::Unreachable {
            addr: self.addr,
            reason,
        };
        let refused = |reason: String| QueryError::Refused {
            addr: self.addr,
            query: query.to_string(),
            reason,
        };
        let body = tokio::time::timeout(TIMEOUT, self.get(query))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(unreachable)?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("its answer is not the API's JSON: {e}")))?;
        if answer.status != "success" {
            return Err(refused(answer.error.unwrap_or(answer.status)));
        }
        let data = answer
            .data
            .ok_or_else(|| refused("a successful answer with no data".into()))?;
        if data.result_type != "vector" {
            return Err(refused(format!(
                "a {} where a vector was expected",
                data.result_type
            )));
        }
        Ok(data
            .result
            .into_iter()
            .filter_map(|s| {
                let value: f64 = s.value.1.parse().ok()?;
                (!value.is_nan()).then_some(Sample {
                    labels: s.metric,
                    value,
                })
            })
            .collect())
    }

    async fn get(&self, query: &str) -> Result<Bytes, String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let uri = format!("/api/v1/query?query={}", percent_encode(query));
        let req = http::Request::get(uri)
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        // Prometheus answers 400/422 with the same JSON and its reason.
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading its answer: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// Percent-encodes a query string value (RFC 3986 unreserved kept).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_whole() {
        assert_eq!(
            percent_encode(r#"up{job="x"} == 1"#),
            "up%7Bjob%3D%22x%22%7D%20%3D%3D%201"
        );
    }
}
