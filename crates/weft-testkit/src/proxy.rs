//! A real `weft-proxy` process for tests: one way to start it (on free
//! loopback ports, with the environment a test adds in the proxy's own
//! setting names), wait for it, read its metrics and log, signal and stop
//! it. Every test crate uses this, so a test that needs a proxy never
//! builds its own command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::scrape::{http_get, metric_sum};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running weft-proxy; killed when dropped (its log printed if the test
/// is failing).
pub struct Proxy {
    /// In a mutex so that every method takes `&self` (waiting asks the child).
    child: std::sync::Mutex<Child>,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

/// How to start one.
pub struct ProxyBuilder {
    bin: PathBuf,
    env: Vec<(String, String)>,
    log_filter: String,
}

impl Proxy {
    /// A proxy from the binary at `bin` (tests of `weft-proxy` pass
    /// `env!("CARGO_BIN_EXE_weft-proxy")`; others the binary beside theirs).
    pub fn builder(bin: impl AsRef<Path>) -> ProxyBuilder {
        ProxyBuilder {
            bin: bin.as_ref().to_path_buf(),
            env: Vec::new(),
            log_filter: "info,weft_proxy=debug".into(),
        }
    }
}

impl ProxyBuilder {
    /// Adds a setting (`WEFT_PROXY_*`, or a Linkerd alias when that is what
    /// the test is about). A listener address set here wins over the free
    /// port the builder would pick; the test reaches it on loopback.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }

    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = &'a (&'a str, String)>) -> Self {
        for (k, v) in vars {
            self.env.push((k.to_string(), v.clone()));
        }
        self
    }

    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Starts it and waits until `/ready` answers 200.
    pub fn start(self) -> Proxy {
        let proxy = self.spawn();
        proxy.wait_ready(Duration::from_secs(10));
        proxy
    }

    /// Starts it without waiting (a proxy that is not to become ready yet).
    pub fn spawn(self) -> Proxy {
        let addr_for = |var: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == var)
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
        let child = Command::new(&self.bin)
            .env_clear()
            .env("WEFT_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
            .env("WEFT_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
            .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
            .env("WEFT_PROXY_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        Proxy {
            child: std::sync::Mutex::new(child),
            outbound,
            inbound,
            admin,
            log,
        }
    }
}

impl Proxy {
    /// Waits until `/ready` answers 200; panics with the log otherwise.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child().try_wait() {
                panic!("weft-proxy exited at start with {status}:\n{}", self.log());
            }
            if http_get(self.admin, "/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("weft-proxy not ready after {within:?}:\n{}", self.log());
    }

    /// Polls `done` (every 300 ms, bounded by `within`); panics with the log.
    pub fn wait_for(&self, what: &str, within: Duration, mut done: impl FnMut(&Proxy) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what} within {within:?}; proxy log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.child().id() as i32
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
    /// A proxy that is still starting gets a few seconds to answer; one that
    /// never does fails the test (a dead proxy must not read as zero).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some((200, text)) = http_get(self.admin, "/metrics") {
                return metric_sum(&text, name, labels);
            }
            assert!(
                Instant::now() < deadline,
                "the admin server at {} does not answer:\n{}",
                self.admin,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
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
    pub fn wait_exit(&self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child().try_wait() {
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
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        drop(child);
        if std::thread::panicking() {
            eprintln!(
                "--- weft-proxy log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
