//! Transparent capture with `weft-proxy init` in network namespaces the test
//! creates: pod A (198.18.0.1) runs the proxy as uid 2102 under the iptables
//! rules; pod B (198.18.0.2) is a plain peer. Real servers on both sides, curl
//! as the client. Needs root, iproute2 and iptables; skips with the reason
//! otherwise.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::metric_sum;
use weft_testkit::curl::Curl;
use weft_testkit::netns;

const PROXY_UID: &str = "2102";
const POD_A: [u8; 4] = [198, 18, 0, 1];
const POD_B: [u8; 4] = [198, 18, 0, 2];

/// Why this machine cannot run the test, if it cannot.
fn missing_capability() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Some(format!(
                "{tool} is not installed (apt-get install {package})"
            ));
        }
    }
    None
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Pods {
    a: String,
    b: String,
}

impl Pods {
    fn create() -> Pods {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let pods = Pods {
            a: format!("weft-cap{id}-a"),
            b: format!("weft-cap{id}-b"),
        };
        let (va, vb) = (format!("wca{id}"), format!("wcb{id}"));
        must(&["ip", "netns", "add", &pods.a]);
        must(&["ip", "netns", "add", &pods.b]);
        must(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        must(&["ip", "link", "set", &va, "netns", &pods.a]);
        must(&["ip", "link", "set", &vb, "netns", &pods.b]);
        for (ns, dev, addr) in [
            (&pods.a, &va, "198.18.0.1/24"),
            (&pods.b, &vb, "198.18.0.2/24"),
        ] {
            must(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pods
    }

    fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its end of the veth pair.
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

/// The proxy running inside pod A as the proxy uid.
struct PodProxy {
    child: std::process::Child,
    ns: String,
    log: std::path::PathBuf,
}

impl PodProxy {
    fn start(ns: &str) -> PodProxy {
        let log = std::env::temp_dir().join(format!("weft-capture-{ns}.log"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid",
                PROXY_UID,
                "--regid",
                PROXY_UID,
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_weft-proxy"))
            .env_clear()
            .env("WEFT_PROXY_LOG", "info,weft_proxy=debug")
            // Enabled, to show it still refuses clients that are not loopback.
            .env("WEFT_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning the proxy in the pod");
        let proxy = PodProxy {
            child,
            ns: ns.to_string(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.admin_get("/ready").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "proxy not ready:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn admin_get(&self, path: &'static str) -> Option<(u16, String)> {
        netns::run_in(&self.ns, move || {
            Ok(support::http_get(
                SocketAddr::from(([127, 0, 0, 1], 4191)),
                path,
            ))
        })
        .ok()
        .flatten()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.admin_get("/metrics").map(|r| r.1).unwrap_or_default();
        metric_sum(&text, name, labels)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn serve_http_in(ns: &str, addr: SocketAddr) {
    let listener = netns::bind(ns, addr).expect("binding in the pod");
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(weft_testkit::http::serve(listener));
}

/// curl inside pod `ns` (as the proxy's uid, whose traffic is not captured,
/// when `as_proxy_uid`): whether it succeeded, and its output or error.
async fn curl_in(ns: &str, as_proxy_uid: bool, url: &str) -> (bool, String) {
    let mut curl = Curl::new([url]).netns(ns).max_time(10);
    if as_proxy_uid {
        curl = curl.uid(PROXY_UID.parse().expect("a uid"));
    }
    let out = curl.output().await;
    (out.success, out.text().to_string())
}

fn nat_rules(pods: &Pods) -> Vec<String> {
    let out = pods.exec(&pods.a, &["iptables-save", "-t", "nat"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WEFT_PROXY"))
        .map(str::to_string)
        .collect()
}

fn init(pods: &Pods, extra: &[&str]) {
    let mut args = vec![
        env!("CARGO_BIN_EXE_weft-proxy"),
        "init",
        "--proxy-uid",
        PROXY_UID,
    ];
    args.extend_from_slice(extra);
    let out = pods.exec(&pods.a, &args);
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn iptables_capture_redirects_both_directions_and_skips_the_proxy_uid() {
    if let Some(why) = missing_capability() {
        eprintln!("skipped: {why}");
        return;
    }
    let pods = Pods::create();
    init(&pods, &[]);
    let proxy = PodProxy::start(&pods.a);
    serve_http_in(&pods.b, SocketAddr::from((POD_B, 8080)));
    serve_http_in(&pods.a, SocketAddr::from((POD_A, 9090)));

    // Outbound: the workload's connection to pod B is redirected to 4140 and
    // the proxy finds the original destination with SO_ORIGINAL_DST.
    let (ok, body) = curl_in(&pods.a, false, "http://198.18.0.2:8080/headers").await;
    assert!(ok, "{body}");
    assert!(body.contains("host: 198.18.0.2:8080"), "{body}");
    let outbound = [
        ("direction", "outbound"),
        ("target_addr", "198.18.0.2:8080"),
    ];
    assert_eq!(
        proxy.metric("request_total", &outbound),
        1.0,
        "{}",
        proxy.log()
    );
    // That the request arrived at all shows the proxy's own connection to
    // pod B was not redirected back into itself (the uid rule).

    // A process running as the proxy uid bypasses capture entirely.
    let (ok, body) = curl_in(&pods.a, true, "http://198.18.0.2:8080/hello").await;
    assert!(ok, "{body}");
    assert_eq!(
        proxy.metric("request_total", &outbound),
        1.0,
        "uid traffic must not be captured"
    );

    // Inbound: pod B's connection to pod A's workload is redirected to 4143.
    let (ok, body) = curl_in(&pods.b, false, "http://198.18.0.1:9090/hello").await;
    assert!(ok, "{body}");
    assert_eq!(body, "hello from weft-testkit\n");
    let inbound = [("direction", "inbound"), ("target_addr", "198.18.0.1:9090")];
    assert_eq!(
        proxy.metric("request_total", &inbound),
        1.0,
        "{}",
        proxy.log()
    );

    // The admin port is skipped: scrapes from outside reach it directly.
    let (ok, body) = curl_in(&pods.b, false, "http://198.18.0.1:4191/ready").await;
    assert!(ok && body == "ready\n", "{body}");
    assert_eq!(
        proxy.metric(
            "request_total",
            &[("direction", "inbound"), ("target_addr", "198.18.0.1:4191")]
        ),
        0.0
    );

    // /shutdown is only for loopback clients: pod B is refused and the proxy stays up.
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods.b,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
        ])
        .arg("http://198.18.0.1:4191/shutdown")
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    assert_eq!(
        proxy.admin_get("/live").map(|r| r.0),
        Some(200),
        "still running"
    );
}

#[tokio::test]
async fn init_is_idempotent_and_removable() {
    if let Some(why) = missing_capability() {
        eprintln!("skipped: {why}");
        return;
    }
    let pods = Pods::create();
    init(&pods, &["--skip-outbound-ports", "22,6000-6010"]);
    let once = nat_rules(&pods);
    assert!(
        once.iter().any(|r| r.contains("--uid-owner 2102")),
        "{once:?}"
    );
    assert!(
        once.iter()
            .any(|r| r.contains("-A PREROUTING -j WEFT_PROXY_INBOUND")),
        "{once:?}"
    );
    assert!(
        once.iter().any(|r| r.contains("--dports 22,6000:6010")),
        "{once:?}"
    );

    init(&pods, &["--skip-outbound-ports", "22,6000-6010"]);
    assert_eq!(nat_rules(&pods), once, "a second run leaves the same rules");

    init(&pods, &["--remove"]);
    assert_eq!(nat_rules(&pods), Vec::<String>::new());
    // Removing again is harmless.
    init(&pods, &["--remove"]);

    // Without rules, traffic goes straight to the peer (nothing listens on 4140).
    serve_http_in(&pods.b, SocketAddr::from((POD_B, 8080)));
    let (ok, body) = curl_in(&pods.a, false, "http://198.18.0.2:8080/hello").await;
    assert!(ok, "{body}");
}
