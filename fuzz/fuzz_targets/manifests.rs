//! Manifests of every kind (seeded from fuzz/seeds/manifests): any text is
//! parsed and checked without panicking, and every problem names the file
//! and a line inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (_, problems) = weft_api::parse_manifests(Path::new("fuzz.yaml"), text);
    let lines = weft_api::yaml_lines(text).count().max(1);
    for p in &problems {
        assert_eq!(p.file, "fuzz.yaml", "{p}");
        assert!(
            p.line >= 1 && p.line <= lines + 1,
            "{p} (the text has {lines} lines)"
        );
        assert!(!p.reason.is_empty(), "{p}");
    }
});
