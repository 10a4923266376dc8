//! Clients that try to break what the proxy promises: a forged `l5d-client-id`
//! through slow or oversized requests, requests a strict server would refuse,
//! connections that say nothing, and label values chosen to grow its memory.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

/// Writes `parts` with `pause` between them and reads the whole answer.
async fn exchange(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The proxy may already have answered and closed.
        if s.write_all(part).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes in time")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// An application that records every connection and byte it receives, and
/// answers each read with a small 200.
struct RecordingApp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

async fn recording_app() -> RecordingApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let (c, b) = (connections.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    RecordingApp {
        addr,
        connections,
        bytes,
    }
}

const FORGED: &[u8] =
    b" /headers HTTP/1.1\r\nHost: web\r\nl5d-client-id: admin.evil\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn slow_or_oversized_requests_stay_http_and_cannot_forge_the_client_id() {
    let app = spawn_server(weft_testkit::http::serve).await;
    let proxy = inbound_proxy_to(
        app,
        &[("WEFT_PROXY_INBOUND_DETECT_TIMEOUT", "200ms".into())],
    );

    // `GET`, a pause past the detect timeout, then a forged header.
    let slow = exchange(proxy.inbound, &[b"GET", FORGED], Duration::from_millis(600)).await;
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert!(slow.contains("method: GET"), "served as HTTP: {slow}");
    assert!(
        !slow.contains("admin.evil"),
        "the forged id reached the app: {slow}"
    );

    // Split anywhere, even inside the method name.
    let split = exchange(
        proxy.inbound,
        &[b"GE", b"T", FORGED],
        Duration::from_millis(300),
    )
    .await;
    assert!(
        split.starts_with("HTTP/1.1 200") && !split.contains("admin.evil"),
        "{split}"
    );

    // A request line longer than the detection buffer is still HTTP.
    let long_line = format!(
        "GET /headers?{} HTTP/1.1\r\nHost: web\r\nl5d-client-id: admin.evil\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let long = exchange(proxy.inbound, &[long_line.as_bytes()], Duration::ZERO).await;
    assert!(
        long.starts_with("HTTP/1.1 200"),
        "{}",
        &long[..long.len().min(300)]
    );
    assert!(!long.contains("admin.evil"));

    // Longer than the head limit: refused, not passed on as opaque bytes.
    let huge = format!(
        "GET /headers?{} HTTP/1.1\r\nHost: web\r\nl5d-client-id: admin.evil\r\n\r\n",
        "a".repeat(20_000)
    );
    let refused = exchange(proxy.inbound, &[huge.as_bytes()], Duration::ZERO).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    assert!(!refused.contains("admin.evil"));
}

#[tokio::test]
async fn requests_a_strict_server_refuses_never_reach_the_application() {
    let app = recording_app().await;
    let proxy = inbound_proxy_to(app.addr, &[]);
    for (request, status, why) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "400", "without Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400", "2 Host headers"),
        (b"GET / HTTP/1.1\nHost: a\n\n", "400", "bare LF"),
        (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "400", "method"),
        (b"GET /\r\n\r\n", "400", "HTTP/0.9"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "505", "HTTP/2.0"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded: x\r\n\r\n", "400", "folding"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
            "smuggling",
        ),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "400", "token"),
    ] {
        let answer = exchange(proxy.inbound, &[request], Duration::ZERO).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
        assert!(
            answer.contains("l5d-proxy-error: bad request: ") && answer.contains(why),
            "{answer}"
        );
    }
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        0,
        "the app saw a connection"
    );
    assert_eq!(
        proxy.metric(
            "inbound_http_errors_total",
            &[("error", "http_version_not_supported")]
        ),
        1.0
    );

    // The application still serves well-formed requests.
    let ok = exchange(
        proxy.inbound,
        &[b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(app.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_slow_head_gets_408_and_a_broken_chunk_400() {
    let proxy =
        http_app_behind_inbound_proxy(&[("WEFT_PROXY_HTTP_HEADER_READ_TIMEOUT", "500ms".into())])
            .await;
    let slowloris = exchange(
        proxy.inbound,
        &[b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X-More: 1\r\n"],
        Duration::from_millis(300),
    )
    .await;
    assert!(slowloris.starts_with("HTTP/1.1 408 "), "{slowloris}");
    assert!(slowloris.contains("l5d-proxy-error"), "{slowloris}");

    let chunked = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
    let answer = exchange(proxy.inbound, &[chunked], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("invalid chunk size"), "{answer}");
}

#[tokio::test]
async fn silent_inbound_connections_are_closed_and_never_reach_the_application() {
    let app = recording_app().await;
    let proxy = inbound_proxy_to(
        app.addr,
        &[("WEFT_PROXY_INBOUND_DETECT_TIMEOUT", "200ms".into())],
    );
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(proxy.inbound).await.unwrap());
    }
    for mut s in silent {
        let mut buf = [0; 16];
        let read = tokio::time::timeout(LIMIT, s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 0);
    assert_eq!(app.bytes.load(Ordering::SeqCst), 0);
    assert_eq!(
        proxy.metric(
            "inbound_tcp_accept_errors_total",
            &[("error", "detect_timeout")]
        ),
        200.0
    );
}

/// Sends `count` requests with distinct Host headers over `conns` keep-alive
/// connections.
async fn distinct_authorities(addr: SocketAddr, count: usize, conns: usize) {
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for n in (c..count).step_by(conns) {
                let req = http::Request::builder()
                    .uri("/hello")
                    .header("host", format!("attacker-{n}.example:80"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_authorities_do_not_grow_the_proxy() {
    let app = spawn_server(weft_testkit::http::serve).await;
    let proxy = inbound_proxy_to(app, &[]);
    distinct_authorities(proxy.inbound, 100, 4).await;
    let (rss_before, _) = proxy.memory_kib();
    let size_before = proxy.metrics().len();
    distinct_authorities(proxy.inbound, 10_000, 4).await;
    let text = proxy.metrics();
    let (rss_after, _) = proxy.memory_kib();
    assert!(
        !text.contains("attacker-"),
        "no client authority in inbound labels"
    );
    assert_eq!(
        proxy.metric("request_total", &[("direction", "inbound")]),
        10_100.0
    );
    assert!(
        text.len() < size_before + 4096,
        "exposition grew from {size_before} to {} bytes",
        text.len()
    );
    eprintln!(
        "10,000 authorities: exposition {size_before} -> {} bytes, RSS {rss_before} -> {rss_after} KiB",
        text.len()
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // With the unsafe authority labels, the family stops at its cap.
    let capped = inbound_proxy_to(
        app,
        &[
            (
                "WEFT_PROXY_INBOUND_METRICS_AUTHORITY_LABELS",
                "unsafe".into(),
            ),
            ("WEFT_PROXY_METRICS_MAX_SERIES", "100".into()),
        ],
    );
    distinct_authorities(capped.inbound, 2_000, 4).await;
    let text = capped.metrics();
    let labelled = text
        .lines()
        .filter(|l| l.starts_with("request_total{") && l.contains("attacker-"))
        .count();
    assert!(labelled <= 100, "{labelled} labelled series");
    assert!(
        capped.metric("request_total", &[("overflow", "true")]) >= 1_900.0,
        "the rest counted as overflow"
    );
    // Three families (requests, responses, latency buckets) of 100 series each.
    assert!(text.len() < 1024 * 1024, "exposition {} bytes", text.len());
}

/// Open inbound connections as the proxy counts them.
fn open_inbound(proxy: &Proxy) -> f64 {
    proxy.metric(
        "tcp_open_connections",
        &[("direction", "inbound"), ("peer", "src")],
    )
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_hold_bounded_memory_and_give_it_back() {
    const CONNS: usize = 3000;
    let proxy = http_app_behind_inbound_proxy(&[]).await;
    distinct_authorities(proxy.inbound, 200, 4).await;
    let (idle, _) = proxy.memory_kib();

    // Each client sends 12 KiB of an unfinished head, and waits.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}",
        "p".repeat(12 * 1024)
    );
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        clients.push(s);
    }
    wait_for("every half-sent request held", || {
        open_inbound(&proxy) >= CONNS as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (held, _) = proxy.memory_kib();
    drop(clients);
    wait_for("every connection closed", || open_inbound(&proxy) == 0.0).await;
    // Freed pages go back to the system within about two seconds.
    let mut after = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = proxy.memory_kib().0;
        if after < idle + 16 * 1024 {
            break;
        }
    }
    let peak = proxy.memory_kib().1;
    eprintln!(
        "{CONNS} half-sent heads: RSS idle {idle} KiB, held {held} KiB, after {after} KiB, peak {peak} KiB"
    );
    // About 52 KiB in a release build (docs/benchmarks.md); debug builds are larger.
    let per_conn = (held.saturating_sub(idle)) / CONNS as u64;
    assert!(per_conn < 96, "{per_conn} KiB per half-sent request");
    assert!(
        after < idle + 16 * 1024,
        "RSS did not come back: idle {idle} KiB, after {after} KiB"
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_counted() {
    let proxy =
        http_app_behind_inbound_proxy(&[("WEFT_PROXY_INBOUND_MAX_CONNECTIONS", "20".into())]).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    wait_for("20 connections held", || open_inbound(&proxy) == 20.0).await;
    let refused = exchange(
        proxy.inbound,
        &[b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(refused.is_empty(), "{refused}");
    assert_eq!(
        proxy.metric(
            "inbound_tcp_accept_errors_total",
            &[("error", "connection_limit")]
        ),
        1.0
    );
    assert!(proxy.log().contains("connection limit reached"));
    drop(held);
    wait_for("the held connections closed", || {
        open_inbound(&proxy) == 0.0
    })
    .await;
    let served = exchange(
        proxy.inbound,
        &[b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

#[tokio::test]
async fn without_discovery_an_in_mesh_address_is_refused_not_dialled_in_plaintext() {
    let app = spawn_server(weft_testkit::http::serve).await;
    // The destination service is down (nothing listens there).
    let down = [
        ("WEFT_PROXY_DESTINATION_SVC_ADDR", "127.0.0.1:9".to_string()),
        ("WEFT_PROXY_DISCOVERY_TIMEOUT", "300ms".into()),
    ];
    let url = format!("http://{app}/hello");

    let guessing = start_proxy(&down);
    let via = format!("http://{}", guessing.outbound);
    let (ok, body, err) = curl(&["-x", &via, &url]).await;
    assert!(
        ok && body.starts_with("hello"),
        "outside the mesh: forwarded ({err})"
    );

    let mut strict = down.to_vec();
    strict.push(("WEFT_PROXY_MESH_NETWORKS", "127.0.0.0/8".into()));
    let strict = start_proxy(&strict);
    let via = format!("http://{}", strict.outbound);
    let (ok, answer, err) = curl(&["-i", "-x", &via, &url]).await;
    assert!(ok, "{err}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("l5d-proxy-error: the destination service did not answer"),
        "{answer}"
    );
}
