//! HTTP through a real weft-proxy with real clients: curl (HTTP/1.1), h2load
//! and hyper (HTTP/2), tonic (gRPC unary and streaming), tungstenite (WebSocket).

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use support::*;
use weft_testkit::pb::{EchoRequest, echo_client::EchoClient};

#[tokio::test]
async fn explicit_proxy_http1_with_curl() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[]);
    let via = format!("http://{}", proxy.outbound);

    let (ok, body, err) = curl(&["-x", &via, &format!("http://{server}/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello from weft-testkit\n");

    // Several requests on one keep-alive connection, with hop-by-hop headers
    // that must not reach the server and an end-to-end one that must.
    let url = format!("http://{server}/headers");
    let (ok, body, err) = curl(&[
        "-x",
        &via,
        &url,
        &url,
        "-H",
        "Connection: x-hop-header",
        "-H",
        "x-hop-header: secret",
        "-H",
        "keep-alive: timeout=5",
        "-H",
        "x-end-to-end: kept",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body.matches("method: GET").count(), 2, "{body}");
    assert!(body.contains("x-end-to-end: kept"), "{body}");
    assert!(
        !body.contains("x-hop-header"),
        "hop-by-hop header leaked: {body}"
    );
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(
        body.contains(&format!("host: {server}")),
        "authority not preserved: {body}"
    );

    let labels = [
        ("direction", "outbound"),
        ("target_addr", &server.to_string() as &str),
    ];
    assert_eq!(proxy.metric("request_total", &labels), 3.0);
    let ok_labels = [
        labels[0],
        labels[1],
        ("status_code", "200"),
        ("classification", "success"),
    ];
    assert_eq!(proxy.metric("response_total", &ok_labels), 3.0);
    assert_eq!(proxy.metric("response_latency_ms_count", &labels), 3.0);
}

#[tokio::test]
async fn explicit_proxy_connect_tunnel() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[]);
    // -p makes curl tunnel through CONNECT, as HTTPS and gRPC clients do.
    let (ok, body, err) = curl(&[
        "-p",
        "-x",
        &format!("http://{}", proxy.outbound),
        &format!("http://{server}/hello"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello from weft-testkit\n");
    let opened = proxy.metric(
        "tcp_open_total",
        &[("peer", "dst"), ("target_addr", &server.to_string())],
    );
    assert_eq!(opened, 1.0);
    let tunnel = [
        ("target_addr", &server.to_string() as &str),
        ("status_code", "200"),
        ("classification", "success"),
    ];
    assert_eq!(proxy.metric("response_total", &tunnel), 1.0);
}

#[tokio::test]
async fn inbound_http1_status_codes_and_errors_are_classified() {
    let proxy = http_app_behind_inbound_proxy(&[]).await;
    let base = format!("http://{}", proxy.inbound);
    let (ok, codes, err) = curl(&[
        "-w",
        "%{http_code}\n",
        "-o",
        "/dev/null",
        &format!("{base}/status/201"),
        "-o",
        "/dev/null",
        &format!("{base}/status/404"),
        "-o",
        "/dev/null",
        &format!("{base}/status/503"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(codes, "201\n404\n503\n");
    let inbound = ("direction", "inbound");
    assert_eq!(
        proxy.metric("response_total", &[inbound, ("classification", "success")]),
        2.0
    );
    assert_eq!(
        proxy.metric(
            "response_total",
            &[
                inbound,
                ("status_code", "503"),
                ("classification", "failure")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn proxy_errors_are_explicit_502_and_504() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let dead = loopback(free_port());
    let proxy = start_proxy(&[("WEFT_PROXY_RESPONSE_TIMEOUT", "300ms".into())]);
    let via = format!("http://{}", proxy.outbound);

    let (_, out, _) = curl(&["-i", "-x", &via, &format!("http://{dead}/")]).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.contains(&format!("l5d-proxy-error: connect to {dead} failed")),
        "{out}"
    );

    let (_, out, _) = curl(&["-i", "-x", &via, &format!("http://{server}/delay/3000")]).await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("l5d-proxy-error: no response from"), "{out}");

    // A request that names the proxy itself would loop.
    let (_, out, _) = curl(&["-i", "-x", &via, &format!("http://{}/", proxy.outbound)]).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("loop back to the proxy"), "{out}");

    // The proxy keeps serving after all of that.
    let (ok, body, _) = curl(&["-x", &via, &format!("http://{server}/hello")]).await;
    assert!(ok && body.starts_with("hello"));
    assert_eq!(
        proxy.metric("outbound_http_errors_total", &[("error", "connect_failed")]),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "outbound_http_errors_total",
            &[("error", "response_timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn http2_prior_knowledge_with_h2load_and_trailers() {
    let proxy = http_app_behind_inbound_proxy(&[]).await;

    let out = tokio::process::Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "16",
            &format!("http://{}/hello", proxy.inbound),
        ])
        .output()
        .await
        .expect("h2load is installed (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("2000 2xx"), "{text}");
    // Four client connections were multiplexed onto pooled HTTP/2 connections.
    assert_eq!(proxy.metric("tcp_open_total", &[("peer", "src")]), 4.0);
    assert!(proxy.metric("tcp_open_total", &[("peer", "dst")]) <= 4.0);

    // Trailers cross the proxy (hyper HTTP/2 client).
    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/trailers", proxy.inbound))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["x-weft-trailer"], "done");
    assert_eq!(collected.to_bytes(), "body before trailers\n");
}

#[tokio::test]
async fn grpc_unary_streaming_and_status_through_the_proxy() {
    let server = spawn_server(weft_testkit::grpc::serve).await;
    let proxy = inbound_proxy_to(server, &[]);
    let mut client = EchoClient::connect(format!("http://{}", proxy.inbound))
        .await
        .expect("connect via proxy");

    let reply = client
        .unary(EchoRequest {
            message: "ping".into(),
            ..Default::default()
        })
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!(reply.message, "ping");

    let status = client
        .unary(EchoRequest {
            message: "boom".into(),
            fail_with_code: 9,
            ..Default::default()
        })
        .await
        .expect_err("the server fails this call");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("boom"));
    let status = client
        .unary(EchoRequest {
            message: "broken".into(),
            fail_with_code: 13,
            ..Default::default()
        })
        .await
        .expect_err("the server fails this call");
    assert_eq!(status.code(), tonic::Code::Internal);

    // Bidirectional streaming: each reply arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .chat(tokio_stream_from(rx))
        .await
        .expect("chat")
        .into_inner();
    for i in 0..20 {
        tx.send(EchoRequest {
            message: format!("m{i}"),
            payload: vec![7; 10_000],
            ..Default::default()
        })
        .await
        .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("reply in time");
        let r = r.expect("stream open").expect("reply ok");
        assert_eq!(
            (r.message.as_str(), r.payload.len()),
            (format!("m{i}").as_str(), 10_000)
        );
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "stream ends after the client half-closes"
    );

    // Linkerd's gRPC classes: FAILED_PRECONDITION is the server's answer,
    // INTERNAL a failure; each response carries its code.
    let grpc = ("direction", "inbound");
    let responses = |class, code| {
        proxy.metric(
            "response_total",
            &[grpc, ("classification", class), ("grpc_status", code)],
        )
    };
    assert_eq!(
        responses("success", "0"),
        2.0,
        "the unary ping and the chat"
    );
    assert_eq!(responses("success", "9"), 1.0);
    assert_eq!(responses("failure", "13"), 1.0);
    assert_eq!(
        proxy.metric("response_total", &[grpc, ("classification", "failure")]),
        1.0
    );

    // A gRPC call to an endpoint that is down gets UNAVAILABLE from the proxy.
    let dead = loopback(free_port());
    let proxy_to_dead = inbound_proxy_to(dead, &[]);
    let mut client = EchoClient::connect(format!("http://{}", proxy_to_dead.inbound))
        .await
        .unwrap();
    let status = client
        .unary(EchoRequest::default())
        .await
        .expect_err("no server");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("connect to"), "{status:?}");
    assert!(status.metadata().get("l5d-proxy-error").is_some());
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<EchoRequest>,
) -> impl futures_util::Stream<Item = EchoRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let server = spawn_server(weft_testkit::tcp::serve_websocket_echo).await;
    let proxy = inbound_proxy_to(server, &[]);
    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.inbound), stream)
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        let msg = tokio_tungstenite::tungstenite::Message::text(format!("hello {i}"));
        ws.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn large_streamed_bodies_keep_memory_bounded() {
    const GIB: u64 = 1 << 30;
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[]);
    let via = format!("http://{}", proxy.outbound);
    let (rss_before, _) = proxy.memory_kib();

    // 1 GiB upload from a pipe (chunked, with Expect: 100-continue).
    let upload = format!(
        "head -c {GIB} /dev/zero | curl -sS --max-time 300 -T - -x {via} http://{server}/upload"
    );
    let out = tokio::process::Command::new("sh")
        .args(["-c", &upload])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{GIB}\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1 GiB download.
    let (ok, size, err) = curl(&[
        "--max-time",
        "300",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        "-x",
        &via,
        &format!("http://{server}/bytes/{GIB}"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(size, GIB.to_string());

    let (_, peak) = proxy.memory_kib();
    assert!(
        peak < rss_before + 32 * 1024,
        "streaming 1 GiB each way grew the proxy from {rss_before} KiB to a peak of {peak} KiB"
    );
    let read = proxy.metric("tcp_read_bytes_total", &[("peer", "src")]);
    assert!(read >= GIB as f64, "client bytes counted: {read}");
}

#[tokio::test]
async fn grpc_client_pointed_at_the_explicit_proxy_is_routed_by_authority() {
    let server = spawn_server(weft_testkit::grpc::serve).await;
    let proxy = start_proxy(&[]);
    // The channel dials the proxy; its :authority names the real server.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .unwrap()
        .origin(format!("http://{server}").parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy");
    let mut client = EchoClient::new(channel);
    for i in 0..3 {
        let reply = client
            .unary(EchoRequest {
                message: format!("via proxy {i}"),
                ..Default::default()
            })
            .await
            .expect("call through the explicit proxy")
            .into_inner();
        assert_eq!(reply.message, format!("via proxy {i}"));
    }
    let labels = [
        ("direction", "outbound"),
        ("target_addr", &server.to_string() as &str),
    ];
    assert_eq!(proxy.metric("request_total", &labels), 3.0);
    assert_eq!(
        proxy.metric("tcp_open_total", &[("peer", "dst")]),
        1.0,
        "one multiplexed connection"
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = http_app_behind_inbound_proxy(&[]).await;
    let mut s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client holds the body back until it hears 100 Continue.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut interim))
        .await
        .expect("100 Continue arrives while the body is held back")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut head = vec![0u8; 15];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
}

#[tokio::test]
async fn idle_endpoint_connections_are_reused_then_closed() {
    let proxy =
        http_app_behind_inbound_proxy(&[("WEFT_PROXY_HTTP_POOL_IDLE_TIMEOUT", "500ms".into())])
            .await;
    let url = format!("http://{}/hello", proxy.inbound);
    // Two clients one after the other: the second reuses the first one's
    // upstream connection from the idle list.
    for _ in 0..2 {
        let (ok, _, err) = curl(&[&url]).await;
        assert!(ok, "{err}");
    }
    let dst = [("peer", "dst"), ("direction", "inbound")];
    assert_eq!(proxy.metric("tcp_open_total", &dst), 1.0);
    // Unused past the idle timeout, it is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("tcp_close_total", &dst) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.metric("tcp_open_connections", &dst), 0.0);
}

/// The access-log lines of a proxy's stderr (the JSON ones start so).
fn access_lines(proxy: &Proxy) -> Vec<serde_json::Value> {
    proxy
        .log()
        .lines()
        .filter(|l| l.starts_with("{\"timestamp\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn access_logs_are_json_lines_with_linkerds_fields_and_off_by_default() {
    let proxy = http_app_behind_inbound_proxy(&[("WEFT_PROXY_ACCESS_LOG", "json".into())]).await;
    let base = format!("http://{}", proxy.inbound);
    let (ok, _, err) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-A",
        "agent \"quoted\" \\ back",
        "-H",
        "x-request-id: req-42",
        &format!("{base}/status/404?q=1"),
    ])
    .await;
    assert!(ok, "{err}");
    proxy.wait_for("an access-log line", Duration::from_secs(5), |p| {
        !access_lines(p).is_empty()
    });
    let lines = access_lines(&proxy);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["uri"], "/status/404?q=1");
    assert_eq!(line["status"], 404);
    assert_eq!(line["trace_id"], "req-42");
    assert_eq!(line["client.id"], "-", "plaintext: no identity");
    assert!(
        line["client.addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(line["total_ns"].as_u64().unwrap() > 0, "{line}");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    // Quotes and backslashes a client sends stay inside the one field.
    assert_eq!(line["user_agent"], "agent \"quoted\" \\ back");
    assert_eq!(proxy.metric("access_log_dropped_total", &[]), 0.0);

    // Off by default: the same request leaves no line.
    let quiet = http_app_behind_inbound_proxy(&[]).await;
    let (ok, _, err) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        &format!("http://{}/status/200", quiet.inbound),
    ])
    .await;
    assert!(ok, "{err}");
    // The proxy logged the request's other events by now; no access line.
    assert_eq!(
        quiet.metric("response_total", &[("direction", "inbound")]),
        1.0
    );
    assert!(access_lines(&quiet).is_empty(), "{}", quiet.log());
}

#[tokio::test]
async fn apache_access_logs_and_a_bad_format_is_refused() {
    let proxy =
        http_app_behind_inbound_proxy(&[("LINKERD2_PROXY_ACCESS_LOG", "apache".into())]).await;
    let (ok, _, err) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        &format!("http://{}/status/201", proxy.inbound),
    ])
    .await;
    assert!(ok, "{err}");
    let apache = |p: &Proxy| {
        p.log()
            .lines()
            .find(|l| l.contains("\"GET /status/201 HTTP/1.1\" 201"))
            .map(str::to_string)
    };
    proxy.wait_for("an apache line", Duration::from_secs(5), |p| {
        apache(p).is_some()
    });
    let line = apache(&proxy).unwrap();
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert!(
        line.contains(" - - ["),
        "no identity in the user field: {line}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .env("WEFT_PROXY_ACCESS_LOG", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid WEFT_PROXY_ACCESS_LOG=\"xml\": expected apache or json"),
        "{stderr}"
    );
}
