//! Hop-by-hop header handling (RFC 9110 section 7.6.1).
//!
//! Connection-specific headers describe one transport hop; a proxy must not
//! forward them. The exception is a protocol upgrade (WebSocket), where
//! `Connection: upgrade` and `Upgrade` are exactly what the next hop needs.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

/// Headers that are always hop-by-hop, besides those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether an HTTP/1 request asks to switch protocols (RFC 9110 section 7.8)
/// or to open a tunnel; either hands the connection over after the response.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 {
        return false;
    }
    req.method() == Method::CONNECT
        || (req.headers().contains_key(header::UPGRADE) && connection_has(req.headers(), "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers; with `upgrade`, keeps what the upgrade needs.
/// `TE` is dropped except `te: trailers` on HTTP/2, which gRPC requires.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, version: Version, upgrade: bool) {
    let upgrade_value = if upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let keep_te = version == Version::HTTP_2
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !keep_te {
        headers.remove(header::TE);
    }
    if let Some(value) = upgrade_value {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, Version::HTTP_11, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn keeps_upgrade_and_h2_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, Version::HTTP_11, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, Version::HTTP_2, false);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn recognises_upgrade_requests() {
        let ws = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&ws));
        let plain = Request::builder()
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&plain));
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("a:1")
            .body(())
            .unwrap();
        assert!(is_upgrade(&connect));
    }
}
