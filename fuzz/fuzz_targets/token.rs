//! Workload tokens: any text against a key bundle, and any key file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::SystemTime;
use weft_identity::token::{TokenKey, TokenKeys};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = TokenKeys::new(
        TokenKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap(),
    );
    // Without the key, nothing verifies.
    assert!(keys.verify(text, SystemTime::now()).is_err());
    let _ = TokenKeys::parse(text);
});
