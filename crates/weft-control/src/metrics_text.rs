//! Reading Prometheus text exposition (format 0.0.4), as the mesh's admin
//! servers write it: `name{key="value",...} value [timestamp]`.
//!
//! The text comes from another process, possibly a compromised one, so the
//! parser never panics, skips what it cannot read (a line, not the rest),
//! and unescapes label values (`\\`, `\"`, `\n`) as the format defines them,
//! so a value that contains `",` cannot pose as another label.

/// One sample: name, labels in the order written, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `want` is among the labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// Every sample in `text`; comments, blank lines and unreadable lines are
/// skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The sum of the samples named exactly `name` that carry all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    // A value, then an optional timestamp.
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads `key="value",...}`; returns what follows the `}`.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return None;
        }
        let mut chars = after.trim_start().strip_prefix('"')?.char_indices();
        let quoted = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = quoted[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Only the format's own spellings: Rust would also take "inf", "infinity".
        _ if text
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => text.parse().ok(),
    }
}

/// A label value written as the format requires (for tests and fuzzing:
/// whatever [`parse`] reads back must be what was written).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exposition_format() {
        let text = "# HELP request_total Total requests.\n\
                    # TYPE request_total counter\n\
                    request_total{direction=\"inbound\",authority=\"web:80\"} 12\n\
                    response_latency_ms_bucket{le=\"+Inf\"} 3 1700000000000\n\
                    process_cpu_seconds_total 1.5e0\n\
                    \n\
                    garbage line here\n\
                    nan_gauge NaN\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].name, "request_total");
        assert_eq!(samples[0].label("authority"), Some("web:80"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(samples[2].value, 1.5);
        assert!(samples[3].value.is_nan());
        assert_eq!(
            sum(&samples, "request_total", &[("direction", "inbound")]),
            12.0
        );
        assert_eq!(sum(&samples, "request", &[]), 0.0);
    }

    #[test]
    fn a_label_value_cannot_pose_as_another_label() {
        let hostile = "x\",client_id=\"admin";
        let line = format!("request_total{{authority=\"{}\"}} 1", escape(hostile));
        let samples = parse(&line);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].label("authority"), Some(hostile));
        assert_eq!(samples[0].label("client_id"), None);
    }

    #[test]
    fn unreadable_lines_are_skipped_not_fatal() {
        for bad in [
            "a{",
            "a{b=\"c\"",
            "a{b=\"c\"} ",
            "a{b=c} 1",
            "a{1b=\"c\"} 1",
            "a 1 2 3",
            "a inf",
            "a 1 notatime",
            "{b=\"c\"} 1",
            "a{b=\"\\",
        ] {
            assert_eq!(parse(bad), vec![], "{bad:?}");
        }
        assert_eq!(parse("a 1\nb{\nc 2").len(), 2);
    }
}
