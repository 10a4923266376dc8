//! Protocol detection and the ClientHello SNI peek on any first bytes.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let (_, prefix) = common::block_on(weft_proxy::detect::detect(
        &mut input,
        Duration::from_secs(1),
    ))
    .unwrap();
    // Detection keeps every byte it read, in order.
    assert!(data.starts_with(&prefix));
    let _ = weft_proxy::detect::client_hello_sni(data);
});
