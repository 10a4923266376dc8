//! The identity service end to end: the real `weft` binary makes a CA, mints
//! tokens and serves Certify; the real linkerd2-proxy-api gRPC client asks.

mod support;

use std::time::{Duration, SystemTime};

use support::{Ca, WEB, weft};

use linkerd2_proxy_api::identity::CertifyRequest;
use weft_identity::Identity;
use weft_identity::csr::new_key_and_csr;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const DB: &str = "db.demo.serviceaccount.identity.weft.cluster.local";

#[tokio::test]
async fn certify_signs_a_leaf_for_the_proven_identity() {
    let ca = Ca::create();
    let (server, url) = ca.serve(support::free_port(), "1h");
    let mut client = ca.client(&url).await;
    let web: Identity = WEB.parse().unwrap();
    let (key, csr) = new_key_and_csr(&web).unwrap();
    let resp = client
        .certify(CertifyRequest {
            identity: WEB.into(),
            token: ca.token(WEB, "10m"),
            certificate_signing_request: csr,
        })
        .await
        .expect("certified")
        .into_inner();

    let (_, leaf) = X509Certificate::from_der(&resp.leaf_certificate).unwrap();
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::URI(u) => u.to_string(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(names, [WEB, "spiffe://cluster.local/ns/demo/sa/web"]);
    assert_eq!(
        &*leaf.public_key().subject_public_key.data,
        key.public_key_raw(),
        "the leaf certifies our key"
    );
    let (_, issuer) = X509Certificate::from_der(&resp.intermediate_certificates[0]).unwrap();
    leaf.verify_signature(Some(issuer.public_key()))
        .expect("signed by the issuer in the chain");
    let until = resp.valid_until.unwrap().seconds as u64;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        server.metric("identity_certify_total", &[("result", "ok")]),
        1.0
    );
    assert!(
        (3590..=3610).contains(&(until - now)),
        "leaf lifetime is --leaf-lifetime 1h"
    );
}

#[tokio::test]
async fn certify_refuses_with_a_status_that_says_why() {
    let ca = Ca::create();
    let (server, url) = ca.serve(support::free_port(), "1h");
    let mut client = ca.client(&url).await;
    let web: Identity = WEB.parse().unwrap();
    let csr = new_key_and_csr(&web).unwrap().1;
    let ask = |identity: &str, token: Vec<u8>, csr: Vec<u8>| CertifyRequest {
        identity: identity.into(),
        token,
        certificate_signing_request: csr,
    };

    // A token for db cannot get a certificate for web.
    let err = client
        .certify(ask(WEB, ca.token(DB, "10m"), csr.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(DB), "{err:?}");

    // Garbage and expired tokens.
    let err = client
        .certify(ask(WEB, b"not-a-token".to_vec(), csr.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let short = ca.token(WEB, "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = client
        .certify(ask(WEB, short, csr.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");

    // A CSR asking for another name than the proven identity.
    let db_csr = new_key_and_csr(&DB.parse().unwrap()).unwrap().1;
    let err = client
        .certify(ask(WEB, ca.token(WEB, "10m"), db_csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bad CSR"), "{err:?}");

    // Not an identity name at all.
    let err = client
        .certify(ask("web", ca.token(WEB, "10m"), csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Every refusal is counted by reason on the admin server.
    let expected = [
        ("identity_mismatch", 1.0),
        ("unauthenticated", 2.0),
        ("bad_csr", 1.0),
        ("bad_request", 1.0),
        ("ok", 0.0),
    ];
    for (result, n) in expected {
        assert_eq!(
            server.metric("identity_certify_total", &[("result", result)]),
            n,
            "{result}"
        );
    }
}

#[test]
fn the_cli_refuses_to_overwrite_a_ca_and_explains_missing_files() {
    let ca = Ca::create();
    let out = weft(&[
        "identity",
        "ca",
        "create",
        "--dir",
        ca.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists; use --force"));
    let out = weft(&[
        "identity",
        "token",
        "--dir",
        "/nonexistent-weft-ca",
        "--identity",
        WEB,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weft identity ca create"));
    let out = weft(&[
        "control",
        "identity",
        "--dir",
        "/nonexistent-weft-ca",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn issuer_rotation_is_picked_up_without_restarting_the_service() {
    let ca = Ca::create();
    let (_server, url) = ca.serve(support::free_port(), "1h");
    let mut client = ca.client(&url).await;
    let web: Identity = WEB.parse().unwrap();
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    let anchors = weft_identity::verify::TrustAnchors::from_pem(&anchors).unwrap();
    let issuer_der = || {
        let pem = std::fs::read_to_string(ca.dir.join("issuer.crt")).unwrap();
        weft_identity::ca::pem_certificates(&pem, "issuer")
            .unwrap()
            .remove(0)
    };
    let mut certify = async |expected_issuer: Vec<u8>| {
        let request = CertifyRequest {
            identity: WEB.into(),
            token: ca.token(WEB, "10m"),
            certificate_signing_request: new_key_and_csr(&web).unwrap().1,
        };
        let resp = client
            .certify(request)
            .await
            .expect("certified")
            .into_inner();
        assert_eq!(
            resp.intermediate_certificates,
            vec![expected_issuer],
            "signed by the expected issuer"
        );
        anchors
            .verify(
                &resp.leaf_certificate,
                &resp.intermediate_certificates,
                &web,
                SystemTime::now(),
            )
            .expect("the leaf chains to the same trust anchor");
    };

    let first = issuer_der();
    certify(first.clone()).await;
    let out = weft(&[
        "identity",
        "ca",
        "rotate-issuer",
        "--dir",
        ca.dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = issuer_der();
    assert_ne!(first, second);
    certify(second.clone()).await;

    // A broken issuer file does not stop signing: the last good issuer stays.
    std::fs::write(
        ca.dir.join("issuer.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    certify(second).await;
}

#[tokio::test]
async fn ca_files_are_private_tokens_are_capped_and_token_keys_rotate_live() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::create();
    let mode = |f: &str| {
        std::fs::metadata(ca.dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the CA directory");
    for key in ["ca.key", "issuer.key", "token.key"] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_eq!(mode("ca.crt"), 0o644);

    // No token lives longer than 90 days.
    let dir = ca.dir.to_str().unwrap();
    let forever = weft(&[
        "identity",
        "token",
        "--dir",
        dir,
        "--identity",
        WEB,
        "--ttl",
        "1000000000000days",
    ]);
    assert!(!forever.status.success());
    assert!(
        String::from_utf8_lossy(&forever.stderr).contains("at most 90 days"),
        "{forever:?}"
    );

    let (_server, url) = ca.serve(support::free_port(), "1h");
    let mut client = ca.client(&url).await;
    let web: Identity = WEB.parse().unwrap();
    let certify = |token: Vec<u8>| CertifyRequest {
        identity: WEB.into(),
        token,
        certificate_signing_request: new_key_and_csr(&web).unwrap().1,
    };
    let old_token = ca.token(WEB, "10m");
    client
        .certify(certify(old_token.clone()))
        .await
        .expect("old key");

    // A new key signs; the old one still verifies until retired, without a restart.
    // (Sleep past the file-time granularity so the change is seen.)
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rotate = weft(&["identity", "ca", "rotate-token-key", "--dir", dir]);
    assert!(rotate.status.success(), "{rotate:?}");
    assert!(String::from_utf8_lossy(&rotate.stdout).contains("2 key(s) verify"));
    let new_token = ca.token(WEB, "10m");
    client
        .certify(certify(new_token.clone()))
        .await
        .expect("new key");
    client
        .certify(certify(old_token.clone()))
        .await
        .expect("old key, not retired");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retire = weft(&[
        "identity",
        "ca",
        "rotate-token-key",
        "--dir",
        dir,
        "--retire",
    ]);
    assert!(retire.status.success(), "{retire:?}");
    let err = client.certify(certify(old_token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("no longer holds"), "{err:?}");
    let err = client.certify(certify(new_token)).await.unwrap_err();
    assert!(
        err.message().contains("no longer holds"),
        "retired too: {err:?}"
    );
    client
        .certify(certify(ca.token(WEB, "10m")))
        .await
        .expect("the newest key");

    // A key others can read is refused, with the fix.
    std::fs::set_permissions(
        ca.dir.join("issuer.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let refused = weft(&["identity", "ca", "rotate-issuer", "--dir", dir]);
    assert!(
        refused.status.success(),
        "rotation rewrites the key: {refused:?}"
    );
    assert_eq!(mode("issuer.key"), 0o600);
    std::fs::set_permissions(
        ca.dir.join("token.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let refused = weft(&["identity", "token", "--dir", dir, "--identity", WEB]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("readable by its group or others") && err.contains("chmod 600"),
        "{err}"
    );
}
