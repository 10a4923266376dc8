//! `weft check` on real CA directories: healthy, expiring soon, broken chain.

mod support;

use support::{Ca, weft};

fn check(ca: &Ca, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["check", "--ca-dir", ca.dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = weft(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_fresh_ca_passes_every_check() {
    let ca = Ca::create();
    let (ok, out) = check(&ca, &[]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('✔')).count(),
        4,
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&check(&ca, &["-o", "json"]).1).unwrap();
    assert!(
        json.as_array().unwrap().iter().all(|c| c["status"] == "ok"),
        "{json}"
    );
}

#[test]
fn an_issuer_near_expiry_warns_and_a_foreign_issuer_fails() {
    let ca = Ca::create();
    let rotated = weft(&[
        "identity",
        "ca",
        "rotate-issuer",
        "--dir",
        ca.dir.to_str().unwrap(),
        "--issuer-validity",
        "20d",
    ]);
    assert!(rotated.status.success());
    let (ok, out) = check(&ca, &[]);
    assert!(ok, "a warning is not a failure: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("‼ issuer") && l.contains("expires in 19 days")),
        "{out}"
    );
    assert!(
        out.contains("hint: rotate it with `weft identity ca rotate-issuer"),
        "{out}"
    );

    // Trust anchors from another CA: the issuer no longer chains.
    let other = Ca::create();
    std::fs::copy(other.dir.join("ca.crt"), ca.dir.join("ca.crt")).unwrap();
    let (ok, out) = check(&ca, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("✖ issuer chain") && l.contains("not signed by any")),
        "{out}"
    );
}
