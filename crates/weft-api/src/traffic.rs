//! Linkerd's traffic annotations on Services and outbound routes: retries
//! (`retry.linkerd.io/*`), timeouts (`timeout.linkerd.io/*`) and circuit
//! breaking (`balancer.linkerd.io/failure-accrual*`). Parsed once here, so
//! a manifest with a bad value is reported where it is written, and the
//! controller reads only good ones.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::route::parse_route_duration;

pub const RETRY_HTTP: &str = "retry.linkerd.io/http";
pub const RETRY_GRPC: &str = "retry.linkerd.io/grpc";
pub const RETRY_LIMIT: &str = "retry.linkerd.io/limit";
pub const RETRY_TIMEOUT: &str = "retry.linkerd.io/timeout";
pub const TIMEOUT_REQUEST: &str = "timeout.linkerd.io/request";
pub const TIMEOUT_RESPONSE: &str = "timeout.linkerd.io/response";
pub const TIMEOUT_IDLE: &str = "timeout.linkerd.io/idle";
/// Weft's outbound rate limit: the most requests per second each client's
/// proxy sends to the Service or EgressNetwork it is written on.
pub const OUTBOUND_RATE_LIMIT: &str = "weft.io/outbound-rate-limit";
pub const FAILURE_ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
pub const FAILURE_ACCRUAL_MAX_FAILURES: &str =
    "balancer.linkerd.io/failure-accrual-consecutive-max-failures";
pub const FAILURE_ACCRUAL_MIN_PENALTY: &str =
    "balancer.linkerd.io/failure-accrual-consecutive-min-penalty";
pub const FAILURE_ACCRUAL_MAX_PENALTY: &str =
    "balancer.linkerd.io/failure-accrual-consecutive-max-penalty";
pub const FAILURE_ACCRUAL_JITTER: &str =
    "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio";

/// Retries of HTTP responses with these statuses (inclusive ranges).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRetry {
    pub statuses: Vec<(u16, u16)>,
    /// Retries after the first attempt (Linkerd's default: 1).
    pub limit: u32,
    /// Each attempt's timeout.
    pub timeout: Option<Duration>,
}

/// Retries of gRPC calls that end with these status codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRetry {
    pub codes: Vec<GrpcRetryCode>,
    pub limit: u32,
    pub timeout: Option<Duration>,
}

/// The gRPC statuses Linkerd's outbound API can name as retryable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcRetryCode {
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    Internal,
    Unavailable,
}

/// Request, response and idle timeouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
}

/// Consecutive-failures circuit breaking: after `max_failures` in a row an
/// endpoint is ejected for a penalty growing from `min_penalty` to
/// `max_penalty`, with `jitter` of it random.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureAccrual {
    pub max_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    pub jitter: f32,
}

fn duration(
    annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<Duration>, String> {
    annotations
        .get(name)
        .map(|v| parse_route_duration(v.trim()).map_err(|e| format!("annotation {name}: {e}")))
        .transpose()
}

/// The retry annotations; `None` without `retry.linkerd.io/http`.
pub fn http_retry(annotations: &BTreeMap<String, String>) -> Result<Option<HttpRetry>, String> {
    let Some(list) = annotations.get(RETRY_HTTP) else {
        return Ok(None);
    };
    let mut statuses = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.to_ascii_lowercase().as_str() {
            "5xx" => (500, 599),
            "gateway-error" => (502, 504),
            other => {
                let (lo, hi) = other.split_once('-').unwrap_or((other, other));
                match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                    (Ok(lo @ 100..=599), Ok(hi @ 100..=599)) if lo <= hi => (lo, hi),
                    _ => {
                        return Err(format!(
                            "annotation {RETRY_HTTP}: {part:?} is not 5xx, gateway-error, a status or a range of them"
                        ));
                    }
                }
            }
        };
        statuses.push(range);
    }
    if statuses.is_empty() {
        return Err(format!("annotation {RETRY_HTTP} names no status"));
    }
    Ok(Some(HttpRetry {
        statuses,
        limit: retry_limit(annotations)?,
        timeout: duration(annotations, RETRY_TIMEOUT)?,
    }))
}

/// `retry.linkerd.io/limit`: retries after the first attempt (default 1).
fn retry_limit(annotations: &BTreeMap<String, String>) -> Result<u32, String> {
    match annotations.get(RETRY_LIMIT) {
        None => Ok(1),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= 10)
            .ok_or_else(|| format!("annotation {RETRY_LIMIT}: {v:?} is not a number from 0 to 10")),
    }
}

/// The gRPC retry annotations; `None` without `retry.linkerd.io/grpc`.
/// Codes are written as Linkerd writes them: `cancelled`,
/// `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`.
pub fn grpc_retry(annotations: &BTreeMap<String, String>) -> Result<Option<GrpcRetry>, String> {
    let Some(list) = annotations.get(RETRY_GRPC) else {
        return Ok(None);
    };
    let mut codes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        codes.push(match part.to_ascii_lowercase().as_str() {
            "cancelled" => GrpcRetryCode::Cancelled,
            "deadline-exceeded" => GrpcRetryCode::DeadlineExceeded,
            "internal" => GrpcRetryCode::Internal,
            "resource-exhausted" => GrpcRetryCode::ResourceExhausted,
            "unavailable" => GrpcRetryCode::Unavailable,
            _ => {
                return Err(format!(
                    "annotation {RETRY_GRPC}: {part:?} is not one of cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"
                ));
            }
        });
    }
    if codes.is_empty() {
        return Err(format!("annotation {RETRY_GRPC} names no status"));
    }
    Ok(Some(GrpcRetry {
        codes,
        limit: retry_limit(annotations)?,
        timeout: duration(annotations, RETRY_TIMEOUT)?,
    }))
}

/// The timeout annotations.
pub fn timeouts(annotations: &BTreeMap<String, String>) -> Result<Timeouts, String> {
    Ok(Timeouts {
        request: duration(annotations, TIMEOUT_REQUEST)?,
        response: duration(annotations, TIMEOUT_RESPONSE)?,
        idle: duration(annotations, TIMEOUT_IDLE)?,
    })
}

/// The failure-accrual annotations of a Service; `None` unless
/// `balancer.linkerd.io/failure-accrual: consecutive`. Linkerd's defaults:
/// 7 failures, penalties from 1 s to 1 min, half of each random.
pub fn failure_accrual(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<FailureAccrual>, String> {
    match annotations.get(FAILURE_ACCRUAL).map(|v| v.trim()) {
        None => return Ok(None),
        Some("consecutive") => {}
        Some(other) => {
            return Err(format!(
                "annotation {FAILURE_ACCRUAL}: {other:?} is not \"consecutive\""
            ));
        }
    }
    let max_failures = match annotations.get(FAILURE_ACCRUAL_MAX_FAILURES) {
        None => 7,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("annotation {FAILURE_ACCRUAL_MAX_FAILURES}: {v:?} is not a positive number")
            })?,
    };
    let min_penalty =
        duration(annotations, FAILURE_ACCRUAL_MIN_PENALTY)?.unwrap_or(Duration::from_secs(1));
    let max_penalty =
        duration(annotations, FAILURE_ACCRUAL_MAX_PENALTY)?.unwrap_or(Duration::from_secs(60));
    if max_penalty < min_penalty {
        return Err(format!(
            "annotation {FAILURE_ACCRUAL_MAX_PENALTY}: {max_penalty:?} is less than the minimum penalty {min_penalty:?}"
        ));
    }
    let jitter = match annotations.get(FAILURE_ACCRUAL_JITTER) {
        None => 0.5,
        Some(v) => v
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|j| (0.0..=100.0).contains(j))
            .ok_or_else(|| {
                format!("annotation {FAILURE_ACCRUAL_JITTER}: {v:?} is not a ratio from 0 to 100")
            })?,
    };
    Ok(Some(FailureAccrual {
        max_failures,
        min_penalty,
        max_penalty,
        jitter,
    }))
}

/// `weft.io/outbound-rate-limit`: requests per second, 1 to 1,000,000.
pub fn outbound_rate_limit(annotations: &BTreeMap<String, String>) -> Result<Option<u32>, String> {
    annotations
        .get(OUTBOUND_RATE_LIMIT)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    format!(
                        "annotation {OUTBOUND_RATE_LIMIT}: {v:?} is not a number of requests per second from 1 to 1000000"
                    )
                })
        })
        .transpose()
}

/// Every traffic annotation of a Service or route, checked.
pub(crate) fn check_annotations(annotations: &BTreeMap<String, String>) -> Result<(), String> {
    http_retry(annotations)?;
    grpc_retry(annotations)?;
    timeouts(annotations)?;
    failure_accrual(annotations)?;
    outbound_rate_limit(annotations)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn retries_timeouts_and_accrual_read_as_linkerd_writes_them() {
        let r = http_retry(&of(&[
            (RETRY_HTTP, "5xx, 429"),
            (RETRY_LIMIT, "3"),
            (RETRY_TIMEOUT, "300ms"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r.statuses, [(500, 599), (429, 429)]);
        assert_eq!((r.limit, r.timeout), (3, Some(Duration::from_millis(300))));
        assert_eq!(http_retry(&of(&[])).unwrap(), None);
        let g = grpc_retry(&of(&[(RETRY_GRPC, "Unavailable, internal")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (g.codes.as_slice(), g.limit),
            (
                &[GrpcRetryCode::Unavailable, GrpcRetryCode::Internal][..],
                1
            )
        );
        assert_eq!(
            timeouts(&of(&[(TIMEOUT_REQUEST, "2s")])).unwrap().request,
            Some(Duration::from_secs(2))
        );
        let a = failure_accrual(&of(&[
            (FAILURE_ACCRUAL, "consecutive"),
            (FAILURE_ACCRUAL_MAX_FAILURES, "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((a.max_failures, a.min_penalty), (3, Duration::from_secs(1)));
        for bad in [
            of(&[(RETRY_HTTP, "4xx")]),
            of(&[(RETRY_HTTP, "700")]),
            of(&[(RETRY_HTTP, "5xx"), (RETRY_LIMIT, "many")]),
            of(&[(TIMEOUT_IDLE, "soon")]),
            of(&[(RETRY_GRPC, "unavailable,not-found")]),
            of(&[(RETRY_GRPC, " , ")]),
            of(&[(OUTBOUND_RATE_LIMIT, "0")]),
            of(&[(OUTBOUND_RATE_LIMIT, "fast")]),
            of(&[(FAILURE_ACCRUAL, "always")]),
            of(&[
                (FAILURE_ACCRUAL, "consecutive"),
                (FAILURE_ACCRUAL_MIN_PENALTY, "1m"),
                (FAILURE_ACCRUAL_MAX_PENALTY, "1s"),
            ]),
        ] {
            assert!(check_annotations(&bad).is_err(), "{bad:?}");
        }
    }
}
