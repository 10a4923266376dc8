//! Restoring an HTTP/1 request carried over HTTP/2 (`l5d-orig-proto`) from any header value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut req = http::Request::builder()
        .version(http::Version::HTTP_2)
        .header("l5d-orig-proto", value)
        .body(())
        .unwrap();
    if let Ok(true) = weft_proxy::http::orig_proto::downgrade(&mut req) {
        assert!(matches!(
            req.version(),
            http::Version::HTTP_10 | http::Version::HTTP_11
        ));
    }
});
