//! The Prometheus text parser the CLI reads admin servers with: any text
//! parses without panicking, and any label value, once escaped, reads back
//! exactly (so a value cannot pose as another label).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_control::metrics_text::{escape, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for sample in parse(text) {
        assert!(!sample.name.is_empty());
    }
    let line = format!(
        "request_total{{authority=\"{}\",le=\"+Inf\"}} 7",
        escape(text)
    );
    let samples = parse(&line);
    assert_eq!(samples.len(), 1, "{line:?}");
    assert_eq!(samples[0].label("authority"), Some(text));
    assert_eq!(samples[0].label("le"), Some("+Inf"));
    assert_eq!(samples[0].labels.len(), 2);
    assert_eq!(samples[0].value, 7.0);
});
