//! The strict HTTP/1 reader on any client bytes: it never changes what it
//! passes, and passes only a prefix of what it got.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use weft_proxy::http::strict::{Limits, Shared, StrictIo};
use weft_proxy::metrics::{Direction, Metrics};

fuzz_target!(|data: &[u8]| {
    common::block_on(async {
        let shared = Shared::new(Direction::Inbound, Metrics::new(Default::default(), false));
        let limits = Limits {
            max_head: 4096,
            head_timeout: Duration::from_secs(5),
        };
        let io = tokio::io::join(data, tokio::io::sink());
        let mut strict = StrictIo::new(io, limits, shared.clone());
        // Any protocol switch is accepted, so tunnels are exercised too.
        shared.upgraded(true);
        let mut passed = Vec::new();
        strict.read_to_end(&mut passed).await.unwrap();
        assert!(data.starts_with(&passed));
    });
});
