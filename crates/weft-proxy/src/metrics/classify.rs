//! How a response is classified, Linkerd's way, for `response_total` and the
//! profile route families: `classification` (`success`/`failure`), with
//! `grpc_status` for a gRPC outcome or `error` for a stream that broke.
//!
//! The class is partly known at the response headers (a 5xx, a profile's
//! response class, a trailers-only gRPC answer) and otherwise only at the
//! end of the stream, from the trailers: [`Eos`] carries what the headers
//! decided to the end. Label values are bounded: gRPC codes above 16 count
//! as UNKNOWN, and stream errors take a fixed set of names.

use std::fmt;
use std::hash::Hash;

use http::HeaderMap;
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;

use super::family::{Family, Series};

/// The outcome of one response.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Class {
    /// Classified by HTTP status or by a profile's response class.
    Http { failure: bool },
    /// Classified by `grpc-status`.
    Grpc { failure: bool, code: u32 },
    /// The stream failed before it completed.
    Stream { error: &'static str },
}

const GRPC_UNKNOWN: u32 = 2;
const GRPC_MAX_CODE: u32 = 16;
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

impl Class {
    pub fn is_failure(self) -> bool {
        match self {
            Class::Http { failure } | Class::Grpc { failure, .. } => failure,
            Class::Stream { .. } => true,
        }
    }

    /// A gRPC status, as Linkerd classifies it: UNKNOWN, DEADLINE_EXCEEDED,
    /// INTERNAL, UNAVAILABLE and DATA_LOSS are failures, the other codes
    /// (NOT_FOUND, PERMISSION_DENIED, ...) are the server's answer.
    pub fn grpc(code: u32) -> Class {
        let code = if code > GRPC_MAX_CODE {
            GRPC_UNKNOWN
        } else {
            code
        };
        Class::Grpc {
            failure: matches!(code, 2 | 4 | 13 | 14 | 15),
            code,
        }
    }

    /// The class of an HTTP/2 stream that broke with `reason`.
    pub fn stream(error: Option<h2::Reason>) -> Class {
        Class::Stream {
            error: error.map_or("unclassified", h2_reason_label),
        }
    }
}

/// `grpc-status` as a class, from headers (trailers-only) or trailers.
pub fn grpc_class(headers: &HeaderMap) -> Option<Class> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Class::grpc(code))
}

/// Names from RFC 9113 section 7, in Linkerd's `h2(NAME)` form; the set is
/// closed so the `error` label stays bounded.
fn h2_reason_label(reason: h2::Reason) -> &'static str {
    match u32::from(reason) {
        0x0 => "h2(NO_ERROR)",
        0x1 => "h2(PROTOCOL_ERROR)",
        0x2 => "h2(INTERNAL_ERROR)",
        0x3 => "h2(FLOW_CONTROL_ERROR)",
        0x4 => "h2(SETTINGS_TIMEOUT)",
        0x5 => "h2(STREAM_CLOSED)",
        0x6 => "h2(FRAME_SIZE_ERROR)",
        0x7 => "h2(REFUSED_STREAM)",
        0x8 => "h2(CANCEL)",
        0x9 => "h2(COMPRESSION_ERROR)",
        0xa => "h2(CONNECT_ERROR)",
        0xb => "h2(ENHANCE_YOUR_CALM)",
        0xc => "h2(INADEQUATE_SECURITY)",
        0xd => "h2(HTTP_1_1_REQUIRED)",
        _ => "unclassified",
    }
}

impl EncodeLabelSet for Class {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        let classification = if self.is_failure() {
            "failure"
        } else {
            "success"
        };
        ("classification", classification).encode(encoder.encode_label())?;
        match self {
            Class::Http { .. } => Ok(()),
            Class::Grpc { code, .. } => {
                let code = GRPC_CODES.get(*code as usize).copied().unwrap_or("2");
                ("grpc_status", code).encode(encoder.encode_label())
            }
            Class::Stream { error } => ("error", *error).encode(encoder.encode_label()),
        }
    }
}

/// A label set `L` with a class's labels after it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Classified<L> {
    labels: L,
    class: Class,
}

impl<L: EncodeLabelSet> EncodeLabelSet for Classified<L> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.labels.encode(encoder)?;
        self.class.encode(encoder)
    }
}

/// Response counters of one label set, by class, each series made the first
/// time its class is seen: no series says a response that never happened.
#[derive(Debug)]
pub struct ByClass<L> {
    labels: L,
    family: Family<Classified<L>, Counter>,
    seen: Mutex<Vec<(Class, Series<Counter>)>>,
}

impl<L: Clone + Hash + Eq> ByClass<L> {
    pub fn new(family: &Family<Classified<L>, Counter>, labels: L) -> Self {
        ByClass {
            labels,
            family: family.clone(),
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn count(&self, class: Class) {
        let mut seen = self.seen.lock();
        if let Some((_, counter)) = seen.iter().find(|(c, _)| *c == class) {
            counter.inc();
            return;
        }
        let counter = self.family.get_or_create(&Classified {
            labels: self.labels.clone(),
            class,
        });
        counter.inc();
        seen.push((class, counter));
    }
}

/// What the response headers decided about the class.
#[derive(Clone, Copy, Debug)]
pub enum Eos {
    /// Known already: the trailers do not change it.
    Decided(Class),
    /// An HTTP response below 500: a success unless its trailers carry a
    /// failing `grpc-status`.
    Open,
    /// A gRPC response whose status comes in the trailers: without one, OK.
    Grpc,
}

impl Eos {
    /// At the response headers: `grpc` when the request was a gRPC call;
    /// `profile` is the failure a matching profile response class gives.
    pub fn start(status: u16, headers: &HeaderMap, grpc: bool, profile: Option<bool>) -> Eos {
        if let Some(failure) = profile {
            return Eos::Decided(Class::Http { failure });
        }
        if let Some(class) = grpc_class(headers) {
            return Eos::Decided(class);
        }
        if status >= 500 {
            return Eos::Decided(Class::Http { failure: true });
        }
        if grpc { Eos::Grpc } else { Eos::Open }
    }

    /// At the end of a stream that completed, with its trailers if any.
    pub fn end(self, trailers: Option<&HeaderMap>) -> Class {
        match self {
            Eos::Decided(class) => class,
            Eos::Open => trailers
                .and_then(grpc_class)
                .unwrap_or(Class::Http { failure: false }),
            Eos::Grpc => trailers.and_then(grpc_class).unwrap_or(Class::Grpc {
                failure: false,
                code: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(grpc_status: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", grpc_status.parse().unwrap());
        h
    }

    #[test]
    fn grpc_failures_are_linkerds_five_codes() {
        let failing: Vec<u32> = (0..=16).filter(|c| Class::grpc(*c).is_failure()).collect();
        assert_eq!(failing, [2, 4, 13, 14, 15]);
        // A server cannot grow the label set with made-up codes.
        assert_eq!(
            Class::grpc(4_000_000),
            Class::Grpc {
                failure: true,
                code: 2
            }
        );
    }

    #[test]
    fn the_trailers_decide_an_open_response() {
        let ok = HeaderMap::new();
        assert_eq!(
            Eos::start(200, &ok, true, None).end(Some(&headers("14"))),
            Class::Grpc {
                failure: true,
                code: 14
            }
        );
        assert_eq!(
            Eos::start(200, &ok, true, None).end(None),
            Class::Grpc {
                failure: false,
                code: 0
            }
        );
        assert_eq!(
            Eos::start(200, &ok, false, None).end(None),
            Class::Http { failure: false }
        );
        // A 5xx is decided at the headers; a trailers-only gRPC answer too.
        assert_eq!(
            Eos::start(503, &ok, false, None).end(Some(&headers("0"))),
            Class::Http { failure: true }
        );
        assert_eq!(
            Eos::start(200, &headers("5"), true, None).end(None),
            Class::Grpc {
                failure: false,
                code: 5
            }
        );
        // A profile's response class wins over everything.
        assert_eq!(
            Eos::start(200, &headers("13"), true, Some(false)).end(None),
            Class::Http { failure: false }
        );
    }

    #[test]
    fn labels_name_the_outcome() {
        let encode = |class: Class| {
            let mut registry = prometheus_client::registry::Registry::default();
            let family = prometheus_client::metrics::family::Family::<
                Class,
                prometheus_client::metrics::counter::Counter,
            >::default();
            family.get_or_create(&class).inc();
            registry.register("response", "r", family);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        assert!(
            encode(Class::grpc(14))
                .contains(r#"response_total{classification="failure",grpc_status="14"} 1"#)
        );
        assert!(
            encode(Class::stream(Some(h2::Reason::CANCEL)))
                .contains(r#"response_total{classification="failure",error="h2(CANCEL)"} 1"#)
        );
        assert!(
            encode(Class::Http { failure: false })
                .contains(r#"response_total{classification="success"} 1"#)
        );
    }
}
