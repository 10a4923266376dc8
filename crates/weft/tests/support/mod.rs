//! Helpers for tests that run the real `weft` (and `weft-proxy`) binaries.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const WEB: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

pub fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("running weft")
}

pub struct Server {
    child: Child,
    pub admin: SocketAddr,
}

impl Server {
    /// A counter from the admin server's /metrics.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = weft_testkit::scrape::http_get(self.admin, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        weft_testkit::scrape::metric_sum(&text, name, labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use weft_testkit::ports::free_port;

pub struct Ca {
    pub dir: std::path::PathBuf,
}

impl Ca {
    pub fn create() -> Ca {
        let dir = std::env::temp_dir().join(format!(
            "weft-ca-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = weft(&["identity", "ca", "create", "--dir", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ca { dir }
    }

    pub fn token(&self, identity: &str, ttl: &str) -> Vec<u8> {
        let out = weft(&[
            "identity",
            "token",
            "--dir",
            self.dir.to_str().unwrap(),
            "--identity",
            identity,
            "--ttl",
            ttl,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .as_bytes()
            .to_vec()
    }

    /// Starts `weft control identity` on `port`, signing leaves for
    /// `leaf_lifetime`, with its admin server on a free port.
    pub fn serve(&self, port: u16, leaf_lifetime: &str) -> (Server, String) {
        let listen = format!("127.0.0.1:{port}");
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "control",
                "identity",
                "--dir",
                self.dir.to_str().unwrap(),
                "--listen",
                &listen,
            ])
            .args([
                "--admin-listen",
                &admin.to_string(),
                "--leaf-lifetime",
                leaf_lifetime,
            ])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "identity service did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Server { child, admin }, format!("http://{listen}"))
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The weft-proxy binary, built beside weft (scripts/test builds every binary).
pub fn proxy_bin() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_weft")).with_file_name("weft-proxy");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p weft-proxy` first",
        path.display()
    );
    path
}
