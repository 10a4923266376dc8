//! A real weft-proxy gets its certificate from a real `weft control identity`:
//! not ready before, ready after, renewed before expiry, visible in metrics.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::{Ca, WEB, free_port, proxy_bin};
use weft_testkit::scrape::{http_get, metric_sum};

struct Proxy {
    child: Child,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Proxy {
    fn start(ca: &Ca, identity_port: u16) -> Proxy {
        let token_file = ca.dir.join("web.token");
        std::fs::write(&token_file, ca.token(WEB, "1h")).unwrap();
        let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = ca.dir.join("proxy.log");
        let child = Command::new(proxy_bin())
            .env_clear()
            .env(
                "WEFT_PROXY_INBOUND_LISTEN_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
            .env(
                "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
                format!("127.0.0.1:{identity_port}"),
            )
            .env("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", WEB)
            .env("LINKERD2_PROXY_IDENTITY_TOKEN_FILE", &token_file)
            .env("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", anchors)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proxy { child, admin, log }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(
            &http_get(self.admin, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default(),
            name,
            labels,
        )
    }

    fn wait_for(&self, what: &str, within: Duration, mut done: impl FnMut(&Proxy) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "{what} within {within:?}; proxy log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_proxy_is_ready_only_with_a_certificate_and_renews_it() {
    let ca = Ca::create();
    let identity_port = free_port();
    // The identity service is not running yet.
    let proxy = Proxy::start(&ca, identity_port);
    proxy.wait_for("failed Certify attempts", Duration::from_secs(10), |p| {
        p.metric("identity_cert_refresh_total", &[("result", "failure")]) >= 2.0
    });
    let (code, body) = http_get(proxy.admin, "/ready").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("waiting for a certificate"), "{body}");

    // Once it runs, the proxy gets a certificate and becomes ready.
    let (_server, _) = ca.serve(identity_port, "3s");
    proxy.wait_for("ready", Duration::from_secs(20), |p| {
        http_get(p.admin, "/ready").is_some_and(|r| r.0 == 200)
    });
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expires = proxy.metric("identity_cert_expiration_timestamp_seconds", &[]);
    assert!(
        expires > now && expires < now + 5.0,
        "expiry {expires} vs now {now}"
    );

    // A 3 s certificate is renewed at 70% of its life, again and again.
    proxy.wait_for("three renewals", Duration::from_secs(20), |p| {
        p.metric("identity_cert_refresh_total", &[("result", "ok")]) >= 3.0
    });
    assert_eq!(http_get(proxy.admin, "/ready").map(|r| r.0), Some(200));
}
