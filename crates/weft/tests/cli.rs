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
