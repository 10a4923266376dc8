//! Helpers shared by the integration tests: a real weft-proxy process, real
//! servers from weft-testkit, curl, and metric parsing.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
pub use weft_testkit::scrape::{http_get, metric_sum};

pub use weft_testkit::ports::free_port;

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running weft-proxy; killed when dropped.
pub struct Proxy {
    child: Child,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy on free loopback ports with extra environment, and waits
    /// until `/ready` answers 200.
    pub fn start(env: &[(&str, String)]) -> Proxy {
        // A listener address given in `env` wins; the test reaches it on loopback.
        let addr_for = |var: &str| {
            env.iter()
                .find(|(k, _)| *k == var)
                .and_then(|(_, v)| v.parse::<SocketAddr>().ok())
                .map(|a| loopback(a.port()))
                .unwrap_or_else(|| loopback(free_port()))
        };
        let outbound = addr_for("WEFT_PROXY_OUTBOUND_LISTEN_ADDR");
        let inbound = addr_for("WEFT_PROXY_INBOUND_LISTEN_ADDR");
        let admin = addr_for("WEFT_PROXY_ADMIN_LISTEN_ADDR");
        let log = std::env::temp_dir().join(format!(
            "weft-proxy-test-{}-{}.log",
            std::process::id(),
            admin.port()
        ));
        let log_file = std::fs::File::create(&log).expect("creating the proxy log");
        let child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .env_clear()
            .env("WEFT_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
            .env("WEFT_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
            .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
            .env("WEFT_PROXY_LOG", "info,weft_proxy=debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning weft-proxy");
        let mut proxy = Proxy {
            child,
            outbound,
            inbound,
            admin,
            log,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weft-proxy exited at start with {status}:\n{}", self.log());
            }
            if http_get(self.admin, "/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("weft-proxy not ready after 10s:\n{}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics") {
            Some((200, body)) => body,
            other => panic!("scraping /metrics failed: {other:?}"),
        }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "weft-proxy did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "--- weft-proxy log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Runs curl with a 60 s cap; returns (exit success, stdout, stderr).
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test server");
    let a = l.local_addr().expect("listener address");
    (l, a)
}

/// Runs a weft-testkit server (e.g. `weft_testkit::http::serve`) on a fresh
/// loopback port in the test's runtime.
pub async fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (l, a) = listen().await;
    tokio::spawn(serve(l));
    a
}

/// A proxy whose inbound side forwards to `server` (the rootless setup).
pub fn inbound_proxy_to(server: SocketAddr, env: &[(&str, String)]) -> Proxy {
    let mut all = vec![("WEFT_PROXY_INBOUND_FORWARD_ADDR", server.to_string())];
    all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
    Proxy::start(&all)
}
