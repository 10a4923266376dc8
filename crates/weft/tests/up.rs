//! `weft up examples/emojivoto`: the demo mesh in network namespaces, as a
//! user runs it. Every workload becomes ready and meshed, traffic crosses
//! mTLS with the right identities, a killed program is restarted, and
//! stopping (or starting again after a crash) leaves no namespace, bridge
//! or process behind. Needs root; skipped with the reason otherwise.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A mesh name of its own, so a user's mesh is never touched.
const MESH: &str = "wtest";

fn can_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let probe = Command::new("ip")
        .args(["netns", "add", "weft-probe-up"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip")
                .args(["netns", "del", "weft-probe-up"])
                .output();
            None
        }
        Ok(out) => Some(format!(
            "cannot create network namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no ip command: {e}")),
    }
}

/// A running `weft up`; its stdout lines arrive on `lines`.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(state: &std::path::Path) -> Up {
        Self::start_as(state, MESH, &[])
    }

    fn start_as(state: &std::path::Path, mesh: &str, extra: &[&str]) -> Up {
        let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/emojivoto");
        Self::start_in(std::path::Path::new(demo), state, mesh, extra)
    }

    fn start_in(dir: &std::path::Path, state: &std::path::Path, mesh: &str, extra: &[&str]) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("up")
            .arg(dir)
            .args(["--mesh", mesh, "--state-root"])
            .arg(state)
            .args(extra)
            .env("WEFT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Up {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a status table shows every line of `want` (each a
    /// workload's row as printed).
    fn wait_for(&mut self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "{what} within {within:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stop(&mut self) {
        // SAFETY: SIGTERM to the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "weft up did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last status table printed: workload → (ready, restarts).
fn last_table(lines: &[String]) -> Vec<(String, String, String)> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("WORKLOAD"))
        .map_or(lines.len(), |i| i + 1);
    lines[start..]
        .iter()
        .take_while(|l| l.starts_with("demo/"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (
                cols[0].to_string(),
                cols[1].to_string(),
                cols[3].to_string(),
            )
        })
        .collect()
}

fn all_ready(lines: &[String]) -> bool {
    let table = last_table(lines);
    table.len() == 5 && table.iter().all(|(_, ready, _)| ready == "1/1")
}

fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("weft-{MESH}-")) {
                found.push(format!("namespace {name}"));
            }
        }
    }
    if Command::new("ip")
        .args(["link", "show", &format!("wb-{MESH}")])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        found.push("bridge".into());
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    found.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|name| name.starts_with(&format!("w{MESH}-")))
            .map(|name| format!("veth {name}")),
    );
    found.extend(
        mesh_processes(MESH)
            .into_iter()
            .map(|pid| format!("process {pid}")),
    );
    found
}

/// Processes started for `mesh` (they carry WEFT_MESH in their environment).
fn mesh_processes(mesh: &str) -> Vec<u32> {
    let marker = format!("WEFT_MESH={mesh}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .collect()
}

/// The pid of pod `pod`'s program (not its proxy).
fn program_of(pod: &str) -> Option<u32> {
    let marker = format!("POD_NAME={pod}");
    mesh_processes(MESH).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
    })
}

/// A second mesh of the same mode is refused, saying `why`, and leaves
/// nothing running.
fn refused_second_mesh(mut second: Up, mesh: &str, why: &str) {
    second.wait_for(
        "the second mesh refused",
        Duration::from_secs(30),
        |lines| lines.iter().any(|l| l.contains(why)),
    );
    assert!(!second.child.wait().unwrap().success());
    assert_eq!(mesh_processes(mesh), Vec::<u32>::new());
}

/// The pid of the proxy that reads `token`.
fn proxy_of(mesh: &str, token: &std::path::Path) -> u32 {
    let marker = format!("WEFT_PROXY_IDENTITY_TOKEN_FILE={}", token.display());
    mesh_processes(mesh)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .expect("no proxy reads that token")
}

/// A program bound to `[::]` in a pod cannot be reached over IPv6 around its
/// proxy: the pod has no IPv6 address, not even a link-local one, and the
/// capture rules cover IPv6 too.
fn assert_no_ipv6_way_around_the_proxy(ns: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _app = weft_testkit::netns::bind(ns, "[::]:9999".parse().unwrap())
        .expect("a dual-stack listener in the pod");
    let addrs = run(&["-n", ns, "-6", "-o", "addr", "show"]);
    assert!(addrs.trim().is_empty(), "IPv6 addresses in {ns}: {addrs}");
    let rules = run(&[
        "netns",
        "exec",
        ns,
        "ip6tables",
        "-t",
        "nat",
        "-S",
        "WEFT_PROXY_INBOUND",
    ]);
    assert!(rules.contains("REDIRECT"), "{rules}");

    // Try the link-local address the pod's interface would have had.
    let links = run(&["-n", ns, "-o", "link", "show"]);
    let line = links
        .lines()
        .find(|l| l.contains("@if"))
        .unwrap_or_else(|| panic!("no veth in {ns}: {links}"));
    let host_ifindex: u32 = line
        .split("@if")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mac: Vec<u8> = line
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let eui64 = std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    );
    let target = std::net::SocketAddrV6::new(eui64, 9999, 0, host_ifindex);
    let reached = std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(1));
    assert!(reached.is_err(), "reached {target} around the proxy");
}

fn metric(ip: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let admin: std::net::SocketAddr = format!("{ip}:4191").parse().unwrap();
    support::admin_metric(admin, name, labels)
}

/// Every metric family of every proxy and control-plane service, after the
/// demo's traffic, passes `promtool check metrics`, but for the `_ms` unit
/// in Linkerd's own names, which its dashboards need.
fn assert_metrics_pass_promtool(plan: &serde_json::Value) {
    const LINKERD_MS_NAMES: [&str; 3] = [
        "response_latency_ms",
        "route_response_latency_ms",
        "tcp_connection_duration_ms",
    ];
    let mut admins: Vec<String> = plan["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}:4191", p["ip"].as_str().unwrap()))
        .collect();
    admins.extend(["198.18.0.1:9990".to_string(), "198.18.0.1:9996".to_string()]);
    for admin in admins {
        let text = weft_testkit::scrape::http_get(admin.parse().unwrap(), "/metrics")
            .unwrap_or_else(|| panic!("scraping {admin} failed"))
            .1;
        let mut promtool = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(p) => p,
            Err(e) => {
                return eprintln!("promtool check skipped: {e} (apt-get install prometheus)");
            }
        };
        use std::io::Write as _;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let problems: Vec<&str> = said
            .lines()
            .filter(|l| {
                !LINKERD_MS_NAMES.iter().any(|n| {
                    l.starts_with(&format!("{n} "))
                        && l.ends_with("metric names should not contain abbreviated units")
                })
            })
            .collect();
        assert!(problems.is_empty(), "{admin}: {problems:?}");
        assert!(
            text.lines().any(|l| !l.starts_with('#')),
            "{admin} exports no sample"
        );
    }
}

/// Percent-encodes a PromQL query for a URL.
fn query_param(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query against the mesh's Prometheus.
fn prom_query(addr: std::net::SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/query?query={}", query_param(query));
    let Some((200, body)) = weft_testkit::scrape::http_get(addr, &path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The mesh's own Prometheus (Debian's) runs as its own uid, listens on
/// the bridge only, and scrapes every proxy and the control plane with
/// Linkerd's target labels; the series carry what Linkerd's queries group
/// by: `dst_*` endpoint labels, outbound TCP `authority`, inbound `srv_*`,
/// `no_tls_reason="loopback"` on the application's side.
fn assert_prometheus_sees_the_mesh(plan: &serde_json::Value, state: &std::path::Path) {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        return eprintln!("Prometheus check skipped: prometheus is not installed");
    }
    let addr: std::net::SocketAddr = std::fs::read_to_string(state.join("prometheus-addr"))
        .expect("weft up wrote where its Prometheus is")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(addr, "198.18.0.1:9095".parse().unwrap(), "the bridge only");
    let pods = plan["pods"].as_array().unwrap().len();
    type Check = Box<dyn Fn(&[serde_json::Value]) -> bool>;
    let checks: Vec<(&str, Check)> = vec![
        (
            r#"up{job="linkerd-proxy",namespace="demo",container="linkerd-proxy",control_plane_ns="weft"} == 1"#,
            Box::new(move |r| r.len() == pods),
        ),
        (
            r#"up{job="linkerd-controller"} == 1"#,
            Box::new(|r| r.len() == 2),
        ),
        (
            r#"sum by (deployment, dst_deployment, dst_pod) (response_total{direction="outbound",dst_deployment="voting"})"#,
            Box::new(|r| {
                r.iter().any(|s| {
                    s["metric"]["deployment"] == "web" && s["metric"]["dst_pod"] == "voting-0"
                })
            }),
        ),
        (
            r#"tcp_open_total{direction="outbound",peer="dst",deployment="web",tls="true",authority=~"voting-svc.demo.svc.cluster.local:.*",dst_deployment="voting",dst_serviceaccount="voting"}"#,
            Box::new(|r| !r.is_empty()),
        ),
        (
            r#"request_total{direction="inbound",deployment="voting",srv_kind="server",srv_name="voting-grpc",target_port="8080"}"#,
            Box::new(|r| !r.is_empty()),
        ),
        (
            r#"tcp_open_total{direction="inbound",peer="dst",no_tls_reason="loopback"}"#,
            Box::new(|r| !r.is_empty()),
        ),
    ];
    for (query, ok) in &checks {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let result = prom_query(addr, query);
            if ok(&result) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus at {addr}: {query} gave {result:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Its storage is the mesh's, owned by its own uid.
    use std::os::unix::fs::MetadataExt as _;
    let data = std::fs::metadata(state.join("prometheus/data")).unwrap();
    assert_eq!((data.uid(), data.mode() & 0o777), (2103, 0o700));
}

/// `weft viz ... -o json` against the mesh's metrics API.
fn viz(args: &[&str], state_root: &str) -> serde_json::Value {
    let out = support::weft(
        &[
            &["viz"][..],
            args,
            &["--mesh", MESH, "--state-root", state_root, "-o", "json"],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "weft viz {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `weft viz stat`, `edges` and `routes` (Linkerd's queries, through the
/// metrics API and the mesh's Prometheus) agree with the proxies' own
/// counters: voting's inbound responses over the same 10 s, read from its
/// proxy directly, match `viz stat`'s rate within 25% (Prometheus scrapes
/// every second here and `increase()` extrapolates to the window's edges).
fn assert_viz_agrees_with_the_proxies(voting: &str, state_root: &str) {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        return eprintln!("viz check skipped: prometheus is not installed");
    }
    let inbound = [("direction", "inbound")];
    let before = metric(voting, "response_total", &inbound);
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let direct =
        (metric(voting, "response_total", &inbound) - before) / started.elapsed().as_secs_f64();
    let rows = viz(&["stat", "deploy", "-n", "demo", "-t", "10s"], state_root);
    let rows = rows.as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} row: {rows:?}"))
    };
    let voting_row = row("voting");
    let rps = voting_row["rps"].as_f64().unwrap();
    assert!(
        (rps - direct).abs() <= 0.25 * direct,
        "viz says {rps} rps, voting's proxy counted {direct}: {voting_row}"
    );
    assert_eq!(voting_row["meshed_pods"], 1, "{voting_row}");
    assert_eq!(voting_row["tls_percent"], 100.0, "{voting_row}");
    let rate = voting_row["success_rate"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&rate), "doughnuts fail: {voting_row}");
    assert_eq!(row("emoji")["success_rate"], 1.0);
    // What the vote bot sends goes to web, and only there.
    let to = viz(
        &["stat", "deploy", "-n", "demo", "--from", "deploy/vote-bot"],
        state_root,
    );
    let names: Vec<&str> = to
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "{to}");
    // Services: their clients' view, by authority.
    let svc = viz(&["stat", "svc/voting-svc", "-n", "demo"], state_root);
    assert!(svc[0]["rps"].as_f64().unwrap() > 1.0, "{svc}");

    let edges = viz(&["edges", "deploy", "-n", "demo"], state_root);
    let web_to_voting = edges
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["src"] == "web" && e["dst"] == "voting")
        .unwrap_or_else(|| panic!("no web -> voting edge: {edges}"));
    assert_eq!(
        web_to_voting["client_id"],
        "web.demo.serviceaccount.identity.weft.cluster.local"
    );
    assert_eq!(
        web_to_voting["server_id"],
        "voting.demo.serviceaccount.identity.weft.cluster.local"
    );
    assert_eq!(web_to_voting["mtls"], true, "{web_to_voting}");

    let routes = viz(&["routes", "deploy/web", "-n", "demo"], state_root);
    let route = |name: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("no route {name}: {routes}"))
            .clone()
    };
    assert_eq!(route("demo/emoji-reads")["kind"], "GRPCRoute");
    assert_eq!(route("demo/emoji-reads")["success_rate"], 1.0);
    assert!(route("Vote")["rps"].as_f64().unwrap() > 0.0, "{routes}");

    // A bad request says what was wrong.
    let bad = support::weft(&[
        "viz",
        "stat",
        "cronjob/x",
        "--mesh",
        MESH,
        "--state-root",
        state_root,
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown resource kind"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The demo's canary (examples/emojivoto/emoji-routes.yaml): web's proxy
/// splits emoji calls 90/10 between emoji and emoji-v2, and sends every
/// call carrying `x-canary: 1` to v2; `weft routes` shows the split.
fn assert_demo_split(web: &str, state_root: &str) {
    // The host is one client to web's rate limit (10 a second): a 429 is
    // waited out, a tenth of a second at a time.
    let get = |canary: bool| {
        for _ in 0..50 {
            let mut curl = Command::new("curl");
            curl.args(["-s", "-m", "5", "-o", "/dev/null", "-D", "-"]);
            if canary {
                curl.args(["-H", "x-canary: 1"]);
            }
            let out = curl
                .arg(format!("http://{web}:8080/api/list"))
                .output()
                .unwrap();
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            if head.starts_with("http/1.1 429") {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert!(head.starts_with("http/1.1 200"), "{head}");
            return head
                .lines()
                .find_map(|l| l.strip_prefix("x-emoji-version: "))
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
        }
        panic!("web kept answering 429");
    };
    let backend = |name: &str| {
        metric(
            web,
            "outbound_grpc_route_backend_requests_total",
            &[("route_name", "emoji-reads"), ("backend_name", name)],
        )
    };
    let canaries_before = backend("emoji-v2-svc");
    for _ in 0..10 {
        assert_eq!(get(true), "v2", "a canary call went elsewhere");
    }
    for _ in 0..5 {
        let version = get(false);
        assert!(version == "v1" || version == "v2", "{version:?}");
    }
    // The split rule's calls (mostly the bot's): wait for 100 of them,
    // then about a tenth went to v2 (outside 1..=30 of 100: under 1e-4).
    let canaries = backend("emoji-v2-svc") - canaries_before;
    assert!(canaries >= 10.0, "{canaries}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (v1_calls, v2_calls) = loop {
        let (v1, v2) = (backend("emoji-svc"), backend("emoji-v2-svc") - 10.0);
        if v1 + v2 >= 100.0 {
            break (v1, v2);
        }
        assert!(Instant::now() < deadline, "emoji {v1}, emoji-v2 {v2}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let share = v2_calls / (v1_calls + v2_calls);
    assert!(
        v2_calls >= 1.0 && share <= 0.3,
        "emoji {v1_calls}, emoji-v2 {v2_calls} besides the canaries"
    );
    let routes = support::weft(&[
        "routes",
        "deploy/web",
        "--mesh",
        MESH,
        "--state-root",
        state_root,
        "--window",
        "2s",
        "-o",
        "json",
    ]);
    assert!(
        routes.status.success(),
        "{}",
        String::from_utf8_lossy(&routes.stderr)
    );
    let routes: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    let reads = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "GRPCRoute/demo/emoji-reads")
        .unwrap_or_else(|| panic!("no emoji-reads route: {routes}"));
    assert_eq!(reads["parent"], "Service/demo/emoji-svc:8080", "{reads}");
    let backends: Vec<&str> = reads["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert!(
        backends.contains(&"Service/demo/emoji-svc:8080")
            && backends.contains(&"Service/demo/emoji-v2-svc:8080"),
        "{reads}"
    );
    // `weft policy explain` decides as web's proxy would, with its code.
    let explain = |canary: bool| {
        let mut args = vec![
            "policy",
            "explain",
            "--from",
            "web",
            "--to",
            "svc/emoji-svc:8080",
            "--method",
            "POST",
            "--path",
            "/weft.demo.EmojiService/List",
            "--mesh",
            MESH,
            "--state-root",
            state_root,
            "-o",
            "json",
        ];
        if canary {
            args.extend(["-H", "x-canary: 1"]);
        }
        let out = support::weft(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let split = explain(false);
    assert_eq!(
        split["decision"]["route"], "GRPCRoute/demo/emoji-reads",
        "{split}"
    );
    let weights: Vec<(String, f64)> = split["decision"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().to_string(),
                b["percent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            ("Service/demo/emoji-svc:8080".to_string(), 90.0),
            ("Service/demo/emoji-v2-svc:8080".to_string(), 10.0)
        ],
        "{split}"
    );
    let canary = explain(true);
    assert_eq!(
        canary["decision"]["backends"][0]["backend"], "Service/demo/emoji-v2-svc:8080",
        "{canary}"
    );
    assert_eq!(
        canary["decision"]["retry"]["grpc_statuses"][0], 14,
        "{canary}"
    );
    // Profile routes show beside policy routes: web's calls to voting.
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["route"] == "ServiceProfile/Vote"),
        "{routes}"
    );
}

/// The demo's policy (examples/emojivoto/policy.yaml) as the running mesh
/// enforces it, and as the policy tools explain it.
fn assert_demo_policy(voting: &str, state_root: &str) {
    let stuffer_id = "vote-stuffer.demo.serviceaccount.identity.weft.cluster.local";
    let refused = [
        ("srv_name", "voting-grpc"),
        ("route_name", "voting-vote"),
        ("client_id", stuffer_id),
    ];
    assert!(
        metric(voting, "inbound_http_authz_deny_total", &refused) > 0.0,
        "voting's proxy never refused the stuffer"
    );
    let from_web = [
        ("srv_name", "voting-grpc"),
        ("route_name", "voting-vote"),
        ("authz_name", "vote-from-web"),
        (
            "client_id",
            "web.demo.serviceaccount.identity.weft.cluster.local",
        ),
    ];
    assert!(metric(voting, "inbound_http_authz_allow_total", &from_web) > 0.0);
    // The stuffer's gRPC client got PERMISSION_DENIED (a trailers-only answer
    // from voting's proxy), never a counted vote.
    let stuffer_log = std::fs::read_to_string(
        std::path::Path::new(state_root)
            .join(MESH)
            .join("logs/vote-stuffer-0.log"),
    )
    .unwrap();
    assert!(
        stuffer_log.contains("refused, as the policy says"),
        "{stuffer_log}"
    );
    assert!(
        !stuffer_log.contains("a stuffed vote was counted"),
        "{stuffer_log}"
    );
    let mesh = ["--mesh", MESH, "--state-root", state_root, "-o", "json"];
    let json = |args: &[&str]| -> serde_json::Value {
        let out = support::weft(&[args, &mesh[..]].concat());
        assert!(
            out.status.success(),
            "weft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let vote = [
        "--path",
        "/weft.demo.VotingService/Vote",
        "--method",
        "POST",
    ];
    let explained = json(
        &[
            &[
                "policy",
                "explain",
                "--from",
                "vote-stuffer",
                "--to",
                "voting",
            ][..],
            &vote,
        ]
        .concat(),
    );
    let port = &explained["ports"][0];
    assert_eq!(port["decision"], "unauthorized", "{explained}");
    assert_eq!(port["server"], "server/voting-grpc", "{explained}");
    assert_eq!(port["route"], "httproute/voting-vote", "{explained}");
    assert_eq!(
        port["considered"][0]["authorization"],
        "authorizationpolicy/vote-from-web"
    );
    assert_eq!(
        port["considered"][0]["why_not"], "the client's identity is not one it names",
        "{explained}"
    );
    let explained = json(
        &[
            &["policy", "explain", "--from", "web", "--to", "voting:grpc"][..],
            &vote,
        ]
        .concat(),
    );
    assert_eq!(explained["ports"][0]["decision"], "allowed", "{explained}");
    assert_eq!(
        explained["ports"][0]["allowed_by"],
        "authorizationpolicy/vote-from-web"
    );
    // A method no route names: 404 from the proxy, whoever asks.
    let explained = json(&[
        "policy",
        "explain",
        "--from",
        "web",
        "--to",
        "voting",
        "--path",
        "/weft.demo.VotingService/Drop",
    ]);
    assert_eq!(
        explained["ports"][0]["decision"], "route_not_found",
        "{explained}"
    );
    // The host's plaintext curl reaches web; the bot's votes are rate limited.
    let explained = json(&["policy", "explain", "--from", "198.18.0.1", "--to", "web"]);
    assert_eq!(
        explained["ports"][0]["allowed_by"], "authorizationpolicy/web-from-host",
        "{explained}"
    );
    assert_eq!(
        explained["ports"][0]["rate_limit"], "web-rate-limit",
        "{explained}"
    );
    let authz = json(&["authz", "web"]);
    let rows: Vec<&str> = authz
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["authorization"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "authorizationpolicy/web-from-bot",
            "authorizationpolicy/web-from-host"
        ],
        "{authz}"
    );
    // A port no Server selects is on voting's `deny` default: the host's
    // request is refused there, and weft check says so.
    let curl = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{voting}:9999/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "403");
    let check = support::weft(&["check", "--mesh", MESH, "--state-root", state_root]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "a warning is not a failure: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("‼ policy demo/voting-0:9999")
                && l.contains("no Server selects this port and its default is deny: 1 refused")),
        "{out}"
    );
    // What a client's proxy is told about web-svc: its default route.
    let outbound = json(&["diagnostics", "policy", "web-svc:80", "--outbound"]);
    assert_eq!(outbound["metadata"]["name"], "web-svc", "{outbound}");
    let routes = &outbound["protocol"]["detect"]["http_routes"];
    assert_eq!(routes[0]["metadata"]["default"], "http", "{outbound}");
    assert_eq!(
        routes[0]["rules"][0]["backends"][0]["backend"]["kind"]["balance"],
        "web-svc.demo.svc.cluster.local:80"
    );
    let served = json(&["diagnostics", "policy", "voting:8080"]);
    assert_eq!(served["labels"]["name"], "voting-grpc", "{served}");
    let routes = served["protocol"]["http2"]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{served}");
}

#[test]
fn the_demo_mesh_runs_in_namespaces_recovers_and_leaves_nothing_behind() {
    if let Some(why) = can_run() {
        println!("skipped: {why}");
        return;
    }
    let state = std::env::temp_dir().join(format!("weft-up-test-{}", std::process::id()));
    let mut up = Up::start_as(&state, MESH, &["--scrape-interval", "1s"]);
    up.wait_for("every workload ready", Duration::from_secs(60), all_ready);

    // A second namespace-mode mesh would share the bridge's subnet: refused.
    refused_second_mesh(
        Up::start_as(&state, "wtest2", &[]),
        "wtest2",
        "another mesh runs here in network namespaces",
    );

    // The destination service runs under its own uid, which the OS keeps
    // out of the CA directory: it could not read the issuer key if it tried.
    let destination = mesh_processes(MESH)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"destination"))
        })
        .expect("the destination service runs");
    let status = std::fs::read_to_string(format!("/proc/{destination}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["2101"; 4],
        "{uids}"
    );
    let ca = state.join(MESH).join("ca");
    let as_destination = Command::new("setpriv")
        .args([
            "--reuid",
            "2101",
            "--regid",
            "2101",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(ca.join("issuer.key"))
        .output()
        .unwrap();
    assert!(
        !as_destination.status.success(),
        "uid 2101 read the issuer key"
    );

    // The bot's votes reach web over mTLS, proving both identities.
    let plan = support::weft(&[
        "diagnostics",
        "plan",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/emojivoto"),
        "-o",
        "json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let ip_of = |pod: &str| {
        plan["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (web, voting) = (ip_of("web-0"), ip_of("voting-0"));
    let from_bot = [
        ("direction", "inbound"),
        ("tls", "true"),
        (
            "client_id",
            "vote-bot.demo.serviceaccount.identity.weft.cluster.local",
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&web, "request_total", &from_bot) < 10.0 {
        assert!(
            Instant::now() < deadline,
            "votes never reached web over mTLS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let from_web = [
        ("direction", "inbound"),
        ("tls", "true"),
        (
            "client_id",
            "web.demo.serviceaccount.identity.weft.cluster.local",
        ),
    ];
    assert!(metric(&voting, "request_total", &from_web) > 0.0);
    assert_no_ipv6_way_around_the_proxy(&format!("weft-{MESH}-web-0"));

    // Plaintext is nowhere: every inbound request at web came over mTLS.
    assert_eq!(
        metric(
            &web,
            "request_total",
            &[("direction", "inbound"), ("tls", "no_identity")]
        ),
        0.0
    );

    // weft check: control plane, CA and every proxy pass.
    let state_root = state.to_str().unwrap();
    let check = support::weft(&["check", "--mesh", MESH, "--state-root", state_root]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for line in [
        "✔ identity service",
        "✔ destination service",
        "✔ issuer chain",
        "✔ proxy demo/web-0",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let none = support::weft(&["check", "--mesh", "nosuch", "--state-root", state_root]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no mesh \"nosuch\" is running here"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    // weft stat: every workload meshed, all its mesh traffic over mTLS,
    // emoji always succeeding and the others failing only on doughnuts.
    let stat = support::weft(&[
        "stat",
        "--mesh",
        MESH,
        "--state-root",
        state_root,
        "--window",
        "3s",
        "-o",
        "json",
    ]);
    assert!(
        stat.status.success(),
        "{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), 6, "{stats:?}");
    for s in stats {
        assert_eq!(s["meshed"], true, "{s}");
        if s["name"] == "emoji-v2" {
            // The canary's tenth of emoji's calls: maybe none yet.
            assert!(
                s["tls_percent"].is_null() || s["tls_percent"] == 100.0,
                "{s}"
            );
            assert!(
                s["success_rate"].is_null() || s["success_rate"] == 1.0,
                "{s}"
            );
            continue;
        }
        assert_eq!(s["tls_percent"], 100.0, "{s}");
        assert!(s["rps"].as_f64().unwrap() > 1.0, "{s}");
        assert!(s["latency_ms_p99"].as_f64().unwrap() > 0.0, "{s}");
        let rate = s["success_rate"].as_f64().unwrap();
        match s["name"].as_str().unwrap() {
            "emoji" => assert_eq!(rate, 1.0, "{s}"),
            // Every call it makes is refused by voting's proxy with
            // PERMISSION_DENIED: the mesh's answer, not a failure, in
            // Linkerd's classes (voting's `denied_rps` counts them).
            "vote-stuffer" => assert_eq!(rate, 1.0, "{s}"),
            _ => assert!((0.5..=1.0).contains(&rate), "{s}"),
        }
        let denied = s["denied_rps"].as_f64().unwrap();
        if s["name"] == "voting" {
            assert!(denied > 1.0, "the stuffer's calls are refused: {s}");
        } else {
            assert_eq!(denied, 0.0, "{s}");
        }
    }
    assert_demo_policy(&voting, state_root);
    assert_demo_split(&web, state_root);
    assert_metrics_pass_promtool(&plan);
    assert_prometheus_sees_the_mesh(&plan, &state.join(MESH));
    assert_viz_agrees_with_the_proxies(&voting, state_root);
    // Diagnostics find the running mesh's destination service and CA.
    let endpoints = support::weft(&[
        "diagnostics",
        "endpoints",
        "web-svc.demo.svc.cluster.local:80",
        "--mesh",
        MESH,
        "--state-root",
        state_root,
        "-o",
        "json",
    ]);
    let endpoints: serde_json::Value = serde_json::from_slice(&endpoints.stdout).unwrap();
    assert_eq!(
        endpoints["endpoints"][0]["address"],
        format!("{web}:8080"),
        "{endpoints}"
    );
    assert_eq!(
        endpoints["endpoints"][0]["identity"],
        "web.demo.serviceaccount.identity.weft.cluster.local",
        "{endpoints}"
    );

    // Linkerd's target forms pick one Deployment, or one pod.
    for target in [&["deploy/web", "-n", "demo"][..], &["po", "web-0"][..]] {
        let one = support::weft(
            &[
                &["stat"][..],
                target,
                &[
                    "--mesh",
                    MESH,
                    "--state-root",
                    state_root,
                    "--window",
                    "1s",
                    "-o",
                    "json",
                ],
            ]
            .concat(),
        );
        let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
        assert_eq!(one.as_array().map(Vec::len), Some(1), "{target:?}: {one}");
        assert_eq!(one[0]["meshed_pods"], 1, "{one}");
    }
    let failed_votes = [("direction", "inbound"), ("classification", "failure")];
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&voting, "response_total", &failed_votes) == 0.0 {
        assert!(Instant::now() < deadline, "no doughnut vote ever failed");
        std::thread::sleep(Duration::from_millis(200));
    }

    // weft scale and weft restart against the running mesh.
    let mesh_args = ["--mesh", MESH, "--state-root", state_root];
    let ask = |args: &[&str]| {
        let out = support::weft(&[args, &mesh_args[..]].concat());
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let row = |workload: &'static str, ready: &'static str, restarts: Option<&'static str>| {
        move |lines: &[String]| {
            last_table(lines).iter().any(|(w, r, n)| {
                w == workload && r == ready && restarts.is_none_or(|want| n == want)
            })
        }
    };
    let (ok, said) = ask(&["scale", "deploy/web", "3"]);
    assert!(
        ok && said.contains("demo/web scaled to 3 (2 started, 0 stopped)"),
        "{said}"
    );
    up.wait_for(
        "web at 3/3",
        Duration::from_secs(30),
        row("demo/web", "3/3", None),
    );
    let (ok, said) = ask(&["scale", "demo/web", "1"]);
    assert!(ok && said.contains("(0 started, 2 stopped)"), "{said}");
    up.wait_for(
        "web back at 1/1",
        Duration::from_secs(30),
        row("demo/web", "1/1", None),
    );
    let (ok, said) = ask(&["restart", "emoji"]);
    assert!(
        ok && said.contains("demo/emoji: 1 pod(s) restarted"),
        "{said}"
    );
    up.wait_for(
        "emoji restarted and ready",
        Duration::from_secs(30),
        row("demo/emoji", "1/1", Some("1")),
    );
    let (ok, said) = ask(&["scale", "nope", "2"]);
    assert!(!ok && said.contains("no workload \"nope\""), "{said}");

    // A killed program is restarted and the workload is ready again.
    let pid = program_of("voting-0").expect("voting-0 runs");
    // SAFETY: SIGKILL to a process of this test's mesh.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    up.wait_for(
        "voting restarted and ready",
        Duration::from_secs(30),
        |lines| {
            last_table(lines)
                .iter()
                .any(|(w, ready, restarts)| w == "demo/voting" && ready == "1/1" && restarts == "1")
        },
    );

    // A crash of weft up itself leaves pods behind; the next start removes them.
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    assert!(!leftovers().is_empty(), "a crash leaves pods behind");
    let mut again = Up::start(&state);
    again.wait_for("the leftovers removed", Duration::from_secs(30), |lines| {
        lines
            .iter()
            .any(|l| l.contains("removed what an earlier run of this mesh left behind"))
    });
    again.wait_for(
        "every workload ready again",
        Duration::from_secs(60),
        all_ready,
    );
    again.stop();
    assert!(
        again
            .seen
            .iter()
            .any(|l| l.starts_with("stopped: 6 pod namespaces removed")),
        "{}",
        again.seen.join("\n")
    );
    assert_eq!(leftovers(), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&state);
}

/// The same manifests without namespaces: loopback addresses, proxies in
/// explicit-proxy mode, programs told `http_proxy`. Runs as any user.
#[test]
fn the_demo_mesh_runs_rootless_on_loopback() {
    const ROOTLESS: &str = "wrl";
    let state = std::env::temp_dir().join(format!("weft-up-rootless-{}", std::process::id()));
    // A copy of the demo's manifests, edited while the mesh runs.
    let manifests = state.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let demo = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/emojivoto"
    ));
    for entry in std::fs::read_dir(demo).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
    }
    // Tokens live 4 s here, so the mesh must keep re-minting them.
    let mut up = Up::start_in(
        &manifests,
        &state,
        ROOTLESS,
        &["--rootless", "--token-ttl", "4s"],
    );
    up.wait_for("the mode said", Duration::from_secs(10), |lines| {
        lines.iter().any(|l| {
            l.starts_with("mode: rootless on loopback") && l.contains("--rootless was given")
        })
    });
    up.wait_for("the rootless warning", Duration::from_secs(10), |lines| {
        lines
            .iter()
            .any(|l| l.contains("rootless mode is a development mode, not isolation"))
    });
    up.wait_for("every workload ready", Duration::from_secs(60), all_ready);
    let mesh_args = ["--mesh", ROOTLESS, "--state-root", state.to_str().unwrap()];
    let check = support::weft(&[&["check"][..], &mesh_args].concat());
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.lines().any(|l| l.starts_with("✔ identity service")
            && l.ends_with(" ready (127.18.0.1:9990)")),
        "{out}"
    );

    // A second rootless mesh would share the loopback addresses: refused.
    refused_second_mesh(
        Up::start_in(&manifests, &state, "wrl2", &["--rootless"]),
        "wrl2",
        "another rootless mesh (or program) runs here",
    );

    // Long after the first token expired, a proxy that starts again still
    // gets a certificate: the mesh re-mints tokens at half their life.
    let token = state.join(ROOTLESS).join("pods/web-0/token");
    let first = std::fs::read(&token).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(&token).unwrap() == first {
        assert!(Instant::now() < deadline, "the token was never re-minted");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3)); // the first token has expired now
    let web_proxy = proxy_of(ROOTLESS, &token);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(web_proxy as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = !mesh_processes(ROOTLESS).contains(&web_proxy)
            && support::weft(&[&["check"][..], &mesh_args].concat())
                .status
                .success();
        if restarted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted web proxy never became ready: {}",
            String::from_utf8_lossy(&support::weft(&[&["check"][..], &mesh_args].concat()).stdout)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Traffic flows by service name through every proxy, all over mTLS.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stat =
            support::weft(&[&["stat", "--window", "2s", "-o", "json"][..], &mesh_args].concat());
        assert!(
            stat.status.success(),
            "{}",
            String::from_utf8_lossy(&stat.stderr)
        );
        let stats: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
        let busy = stats
            .as_array()
            .unwrap()
            .iter()
            // emoji-v2 is a canary: a tenth of emoji's calls, so it is
            // busy once it has had one connection.
            .all(|s| {
                if s["name"] == "emoji-v2" {
                    !s["tls_percent"].is_null()
                } else {
                    s["rps"].as_f64() > Some(1.0)
                }
            });
        if busy || Instant::now() > deadline {
            break stats;
        }
    };
    for s in stats.as_array().unwrap() {
        assert_eq!(s["meshed"], true, "{s}");
        assert_eq!(s["tls_percent"], 100.0, "{s}");
        assert!(
            s["name"] == "emoji-v2" || s["rps"].as_f64().unwrap() > 1.0,
            "{s}"
        );
    }

    // Editing the manifests changes the running mesh: two web replicas.
    let web = manifests.join("web.yaml");
    let text = std::fs::read_to_string(&web).unwrap();
    let tmp = manifests.join(".web.yaml.tmp");
    std::fs::write(&tmp, text.replacen("replicas: 1", "replicas: 2", 1)).unwrap();
    std::fs::rename(&tmp, &web).unwrap();
    up.wait_for("the edit applied", Duration::from_secs(20), |lines| {
        lines
            .iter()
            .any(|l| l.starts_with("manifests changed: 1 pod(s) started, 0 stopped"))
    });
    up.wait_for("web at 2/2", Duration::from_secs(30), |lines| {
        last_table(lines)
            .iter()
            .any(|(w, ready, _)| w == "demo/web" && ready == "2/2")
    });

    // Policy that can never do anything is pointed out, not refused.
    std::fs::write(
        manifests.join("zz-lint.yaml"),
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: nothing, namespace: demo}
spec:
  podSelector: {matchLabels: {app: nope}}
  port: 80
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ghosts, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
  - {kind: ServiceAccount, name: ghost}
",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let check = support::weft(&[&["check"][..], &mesh_args].concat());
        let out = String::from_utf8_lossy(&check.stdout).into_owned();
        if out.contains("‼ policy servers") {
            assert!(check.status.success(), "{out}");
            assert!(
                out.contains("select no workload port: demo/nothing"),
                "{out}"
            );
            assert!(
                out.contains("can never match: demo/ghosts (no workload of the mesh proves an identity it admits)"),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "weft check never pointed at the lint: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(manifests.join("zz-lint.yaml")).unwrap();

    // Hostile edits: brackets nested 200,000 deep, and the web Service again in
    // a file that sorts first. Supervision goes on, web keeps its definition,
    // and `weft check` is red until they are gone.
    std::fs::write(manifests.join("deep.yaml"), "[".repeat(200_000)).unwrap();
    let web_svc = std::fs::read_to_string(&web).unwrap();
    std::fs::write(manifests.join("0-hijack.yaml"), &web_svc).unwrap();
    let check_out = || {
        let check = support::weft(&[&["check"][..], &mesh_args].concat());
        (
            check.status.success(),
            String::from_utf8_lossy(&check.stdout).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = check_out();
        if !ok && out.contains("manifests") && out.contains("problem(s)") {
            assert!(
                out.contains("deep.yaml") || out.contains("already defined"),
                "{out}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "weft check stayed green: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let scaled = support::weft(&[&["scale", "web", "2"][..], &mesh_args].concat());
    assert!(scaled.status.success(), "supervision answers: {scaled:?}");
    std::fs::remove_file(manifests.join("deep.yaml")).unwrap();
    std::fs::remove_file(manifests.join("0-hijack.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check_out().0 {
        assert!(
            Instant::now() < deadline,
            "weft check stayed red: {}",
            check_out().1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    up.stop();
    assert!(
        up.seen.iter().any(|l| l.starts_with("stopped: 7 pods;")),
        "{}",
        up.seen.join("\n")
    );
    assert_eq!(mesh_processes(ROOTLESS), Vec::<u32>::new());
    let _ = std::fs::remove_dir_all(&state);
}

/// A broken manifest stops `weft up` before it starts anything, naming the
/// file, the line and the reason.
#[test]
fn a_broken_manifest_is_refused_before_anything_starts() {
    let dir = std::env::temp_dir().join(format!("weft-up-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 99\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, command: [weft-demo, web]}]}\n",
    )
    .unwrap();
    let state = dir.join("state");
    let out = support::weft(&[
        "up",
        dir.to_str().unwrap(),
        "--rootless",
        "--mesh",
        "wbad",
        "--state-root",
        state.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("web.yaml:1: Deployment default/web: spec.replicas 99 is more than the local mesh runs (32)"),
        "{err}"
    );
    assert!(err.contains("1 problem(s)"), "{err}");
    assert!(!state.join("wbad/cluster").exists(), "nothing was started");
    assert_eq!(mesh_processes("wbad"), Vec::<u32>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_directory_others_could_tamper_with_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("weft-up-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/emojivoto");
    let up = |state_root: &std::path::Path| {
        support::weft(&[
            "up",
            manifests,
            "--rootless",
            "--mesh",
            "wstate",
            "--state-root",
            state_root.to_str().unwrap(),
        ])
    };
    // Writable by anyone (a planted /tmp/weft-<uid>, say).
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = up(&open);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("writable by its group or others"), "{err}");
    assert!(!open.join("wstate/ca").exists(), "no CA was made there");

    // Owned by another user (needs root to arrange).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = root.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
        let out = up(&theirs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("belongs to uid 4242"), "{err}");
    } else {
        println!("skipped the other-owner case: not root");
    }
    assert_eq!(mesh_processes("wstate"), Vec::<u32>::new());
    let _ = std::fs::remove_dir_all(&root);
}
