//! The CLI as scripts and terminals meet it: closed pipes, logs without
//! colour codes, targets written the Linkerd way and refused with a reason.

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/emojivoto");

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `weft diagnostics plan -o json | head -c 0`: the reader is gone before
    // the first write.
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["diagnostics", "plan", DEMO, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {stderr}"
    );
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("weft-cli-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // It logs, then cannot bind a port that is taken, and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["control", "destination", "--manifests"])
        .arg(&dir)
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("WEFT_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("manifests loaded"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn targets_that_make_no_sense_are_refused_with_the_reason() {
    let state = std::env::temp_dir().join(format!("weft-cli-targets-{}", std::process::id()));
    for (args, says) in [
        (&["stat", "gizmo", "web"][..], "unknown kind \"gizmo\""),
        (&["stat", "deploy/web", "extra"][..], "one too many"),
        (&["stat", "demo/web", "-n", "prod"][..], "not prod"),
        (&["scale", "svc/web", "2"][..], "is not one Deployment"),
    ] {
        let out = support::weft(&[args, &["--state-root", state.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn every_output_format_prints_the_same_data() {
    let plan = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["diagnostics", "plan", DEMO, "-o", format])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-o {format}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&plan("json")).unwrap();
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&plan("yaml")).unwrap();
    assert_eq!(json, yaml);
    assert!(
        json["pods"].as_array().is_some_and(|p| !p.is_empty()),
        "{json}"
    );

    // Wide adds columns; the narrow table has none of them.
    let table = plan("table");
    let wide = plan("wide");
    let header = |text: &str, first: &str| {
        text.lines()
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no {first} header in:\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(header(&table, "POD"), ["POD", "IP", "IDENTITY", "COMMAND"]);
    assert_eq!(
        header(&wide, "POD"),
        ["POD", "IP", "IDENTITY", "COMMAND", "DEPLOYMENT", "PORTS"]
    );
    let web = wide
        .lines()
        .find(|l| l.starts_with("demo/web-0"))
        .unwrap_or_else(|| panic!("no web pod in:\n{wide}"));
    let cells: Vec<&str> = web.split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2..], ["demo/web", "http:8080"], "{web}");
    assert!(!table.contains("http:8080"), "{table}");

    let bad = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["diagnostics", "plan", DEMO, "-o", "xml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("table, wide, json, yaml"), "{stderr}");
}
