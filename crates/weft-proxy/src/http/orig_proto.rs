//! Linkerd's `l5d-orig-proto`: an HTTP/1 request carried over HTTP/2 between
//! two meshed proxies. The outbound side upgrades (to a peer whose discovery
//! entry carries the `h2` hint), the inbound side restores the request for
//! the application; either side may be linkerd2-proxy.

use std::net::SocketAddr;

use http::Request;
use http::uri::Authority;

use super::error::ProxyError;

/// Marks an HTTP/1 request carried over HTTP/2 between two proxies; the
/// value is its original version (`HTTP/1.1`, `HTTP/1.0`).
pub const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// Turns an origin-form HTTP/1 request into HTTP/2 for a peer proxy: the
/// Host header gives the authority and stays on the wire (linkerd2-proxy's
/// inbound side restores only the version, so an application behind it
/// would otherwise get a request without Host), and `l5d-orig-proto` keeps
/// the version so the peer can restore it.
pub fn upgrade<B>(mut req: Request<B>, addr: SocketAddr) -> Result<Request<B>, ProxyError> {
    let orig_proto = if req.version() == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let host = req.headers().get(http::header::HOST);
    let authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    *req.uri_mut() = super::absolute_uri(req.uri(), authority, addr)?;
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut()
        .insert(L5D_ORIG_PROTO, http::HeaderValue::from_static(orig_proto));
    Ok(req)
}

/// Restores an HTTP/1 request that a peer proxy carried over HTTP/2;
/// whether the request was one. Linkerd may append `; absolute-form`, which
/// changes nothing here: requests reach the application in origin form.
pub fn downgrade<B>(req: &mut Request<B>) -> Result<bool, ProxyError> {
    let Some(value) = req.headers_mut().remove(L5D_ORIG_PROTO) else {
        return Ok(false);
    };
    let version = value.to_str().ok().and_then(|v| v.split(';').next());
    *req.version_mut() = match version.map(str::trim) {
        Some("HTTP/1.1") => http::Version::HTTP_11,
        Some("HTTP/1.0") => http::Version::HTTP_10,
        _ => {
            return Err(ProxyError::BadRequest(format!(
                "{L5D_ORIG_PROTO} must be HTTP/1.1 or HTTP/1.0, not {value:?}"
            )));
        }
    };
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_requests_upgrade_and_downgrade_with_their_version() {
        let addr: SocketAddr = "10.1.1.1:8080".parse().unwrap();
        let req = Request::builder()
            .version(http::Version::HTTP_10)
            .uri("/a?b=1")
            .header(http::header::HOST, "web.demo:80")
            .body(())
            .unwrap();
        let mut up = upgrade(req, addr).unwrap();
        assert_eq!(up.version(), http::Version::HTTP_2);
        assert_eq!(up.uri(), "http://web.demo:80/a?b=1");
        // Host stays: a peer that restores only the version (linkerd2-proxy)
        // hands the application a complete HTTP/1 request.
        assert_eq!(up.headers()[http::header::HOST], "web.demo:80");
        assert_eq!(up.headers()[L5D_ORIG_PROTO], "HTTP/1.0");

        assert!(downgrade(&mut up).unwrap());
        assert_eq!(up.version(), http::Version::HTTP_10);
        assert!(up.headers().get(L5D_ORIG_PROTO).is_none());
        super::super::origin_form(&mut up).unwrap();
        assert_eq!(up.uri(), "/a?b=1");
        assert_eq!(up.headers()[http::header::HOST], "web.demo:80");

        // Linkerd marks absolute-form requests; plain HTTP/2 is left alone.
        let mut linkerd = Request::builder()
            .header(L5D_ORIG_PROTO, "HTTP/1.1; absolute-form")
            .body(())
            .unwrap();
        assert!(downgrade(&mut linkerd).unwrap());
        assert_eq!(linkerd.version(), http::Version::HTTP_11);
        let mut native = Request::builder()
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(!downgrade(&mut native).unwrap());
        assert_eq!(native.version(), http::Version::HTTP_2);
        let mut bad = Request::builder()
            .header(L5D_ORIG_PROTO, "HTTP/2")
            .body(())
            .unwrap();
        let err = downgrade(&mut bad).unwrap_err().to_string();
        assert!(err.contains("not \"HTTP/2\""), "{err}");
    }
}
