//! The demo application (`weft-demo`) through a real weft-proxy in
//! explicit-proxy mode, resolving service names through a real
//! `weft control destination`: the way the local mesh's rootless mode runs
//! it. HTTP/1 from the client and the bot, gRPC (unary and streaming) from
//! the web front end, all addressed by service name.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Destination, free_port, proxy_bin, workspace_bin};

/// A demo program, killed when dropped.
struct Program(Child);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(args: &[&str], env: &[(&str, String)]) -> Program {
    Program(
        Command::new(workspace_bin("weft-demo"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("WEFT_DEMO_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: {port}, targetPort: http}}]\n"
    )
}

fn workload(app: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {app}-0, namespace: demo, labels: {{app: {app}}}}}\nspec:\n  ports: [{{name: http, port: {}}}]\n  workloadIPs: [{{ip: {}}}]\n",
        addr.port(),
        addr.ip()
    )
}

/// A request through the proxy at `via` (explicit proxy): status and body.
fn curl(via: &str, url: &str) -> (u16, String) {
    weft_testkit::curl::Curl::new(["-x", via, url])
        .max_time(10)
        .status_and_body()
}

#[test]
fn the_demo_app_runs_through_the_proxy_by_service_names() {
    let [emoji, voting, web] = [0; 3].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let destination = Destination::start(&[
        ("emoji.yaml", &service("emoji-svc", 8080)),
        ("voting.yaml", &service("voting-svc", 8080)),
        ("web.yaml", &service("web-svc", 80)),
        ("emoji-0.yaml", &workload("emoji-svc", emoji)),
        ("voting-0.yaml", &workload("voting-svc", voting)),
        ("web-0.yaml", &workload("web-svc", web)),
    ]);
    let proxy = weft_testkit::proxy::Proxy::builder(proxy_bin())
        .env(
            "WEFT_PROXY_DESTINATION_SVC_ADDR",
            destination.addr.to_string(),
        )
        .log_filter("warn")
        .start();
    let outbound = proxy.outbound;
    let via = format!("http://{outbound}");
    let proxied = [("http_proxy", via.clone())];
    let _emoji = program(&["emoji", "--listen", &emoji.to_string()], &[]);
    let _voting = program(&["voting", "--listen", &voting.to_string()], &[]);
    let _web = program(&["web", "--listen", &web.to_string()], &proxied);
    for addr in [emoji, voting, web, outbound] {
        wait_listening(addr);
    }

    let url = |path: &str| format!("http://web-svc.demo.svc.cluster.local{path}");
    let (code, body) = curl(&via, &url("/api/vote?choice=%3Ajoy%3A"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"shortcode":":joy:","votes":1}"#);
    // The broken path, and bad input, answer with what went wrong.
    let (code, body) = curl(&via, &url("/api/vote?choice=%3Adoughnut%3A"));
    assert_eq!(code, 500, "{body}");
    assert!(body.contains(":doughnut: votes are broken"), "{body}");
    let (code, body) = curl(&via, &url("/api/vote?choice=%3Anope%3A"));
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(&via, &url("/api/vote"));
    assert_eq!(code, 400, "{body}");

    // The bot votes through the proxy too; the page streams the emojis and
    // shows the leaderboard.
    let _bot = program(&["vote-bot", "--rate", "50"], &proxied);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, board) = curl(&via, &url("/api/leaderboard"));
        assert_eq!(code, 200, "{board}");
        let tallies: serde_json::Value = serde_json::from_str(&board).unwrap();
        let votes: u64 = tallies
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["votes"].as_u64().unwrap())
            .sum();
        if votes >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bot's votes never counted: {board}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, page) = curl(&via, &url("/"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("🍕") && page.contains("🍩"), "{page}");
    assert!(page.contains("<ol id=\"leaderboard\"><li>"), "{page}");

    // The proxy carried gRPC to both services by name, and the failures.
    let metrics = proxy.metrics();
    let sum = |labels: &[(&str, &str)]| {
        weft_testkit::scrape::metric_sum(&metrics, "request_total", labels)
    };
    assert!(
        sum(&[("authority", "emoji-svc.demo.svc.cluster.local:8080")]) > 1.0,
        "{metrics}"
    );
    assert!(sum(&[("authority", "voting-svc.demo.svc.cluster.local:8080")]) > 1.0);
    assert!(sum(&[("authority", "web-svc.demo.svc.cluster.local")]) > 4.0);
    let failed_votes = weft_testkit::scrape::metric_sum(
        &metrics,
        "response_total",
        &[
            ("authority", "voting-svc.demo.svc.cluster.local:8080"),
            ("classification", "failure"),
        ],
    );
    assert!(
        failed_votes >= 1.0,
        "gRPC failures are classified: {metrics}"
    );
}
