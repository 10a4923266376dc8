//! Opaque TCP, server-speaks-first protocols, and clients that misbehave.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// Sends `payload`, half-closes, and reads the server's whole answer.
async fn send_then_half_close(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    answer
}

#[tokio::test]
async fn opaque_tcp_keeps_half_close_and_counts_bytes() {
    let server = spawn_server(weft_testkit::tcp::serve_echo_after_eof).await;
    let proxy = inbound_proxy_to(server, &[]);
    // Not HTTP: detected as opaque from its first bytes.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let answer = send_then_half_close(proxy.inbound, &payload).await;
    let header = b"got 200000 bytes\n";
    assert_eq!(&answer[..header.len()], header);
    assert_eq!(&answer[header.len()..], &payload[..]);

    let src = [("peer", "src"), ("direction", "inbound")];
    assert_eq!(
        proxy.metric("tcp_read_bytes_total", &src),
        payload.len() as f64
    );
    assert_eq!(
        proxy.metric("tcp_write_bytes_total", &src),
        answer.len() as f64
    );
    let deadline = std::time::Instant::now() + LIMIT;
    while proxy.metric("tcp_close_total", &src) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "close not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.metric("tcp_open_connections", &src), 0.0);
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let server = spawn_server(weft_testkit::tcp::serve_echo_after_eof).await;
    // An HTTP-looking payload on an opaque port must not be parsed as HTTP.
    let proxy = inbound_proxy_to(
        server,
        &[("WEFT_PROXY_INBOUND_OPAQUE_PORTS", server.port().to_string())],
    );
    let answer = send_then_half_close(proxy.inbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answer, b"got 27 bytes\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(proxy.metric("request_total", &[]), 0.0);
}

#[tokio::test]
async fn server_speaks_first_works_on_an_opaque_port() {
    // Inbound, a silent client is closed after the detect timeout (see
    // hostile.rs); a server-speaks-first protocol is configured as opaque.
    let server = spawn_server(weft_testkit::tcp::serve_greeter).await;
    let proxy = inbound_proxy_to(
        server,
        &[("WEFT_PROXY_INBOUND_OPAQUE_PORTS", server.port().to_string())],
    );
    let s = TcpStream::connect(proxy.inbound).await.unwrap();
    let (read, mut write) = s.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("greeting arrives")
        .unwrap();
    assert_eq!(greeting.as_deref(), Some("220 weft-testkit greeter ready"));
    write.write_all(b"HELO weft\r\n").await.unwrap();
    let echoed = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.as_deref(), Some("echo: HELO weft"));
    write.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("221 bye"));
}

#[tokio::test]
async fn malformed_http_gets_400_and_others_are_still_served() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = inbound_proxy_to(server, &[]);

    let mut bad = TcpStream::connect(proxy.inbound).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, bad.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let (ok, body, err) = curl(&[&format!("http://{}/hello", proxy.inbound)]).await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello from weft-testkit\n");
    assert_eq!(
        proxy.metric("request_total", &[]),
        1.0,
        "the malformed request never reached the server"
    );
}

#[tokio::test]
async fn a_stalled_client_is_cut_off_without_blocking_others() {
    let proxy =
        http_app_behind_inbound_proxy(&[("WEFT_PROXY_HTTP_HEADER_READ_TIMEOUT", "1s".into())])
            .await;

    // Starts a request and never finishes its head.
    let mut stalled = TcpStream::connect(proxy.inbound).await.unwrap();
    stalled
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    let (ok, body, _) = curl(&[&format!("http://{}/hello", proxy.inbound)]).await;
    assert!(
        ok && body.starts_with("hello"),
        "others are served while one client stalls"
    );

    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, stalled.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the stalled connection was closed by the proxy"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408 "), "{rest}");
    let deadline = std::time::Instant::now() + LIMIT;
    while !proxy.log().contains("request head not complete within 1s") {
        assert!(
            std::time::Instant::now() < deadline,
            "the reason is logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn garbage_to_the_explicit_proxy_is_closed_and_logged() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[("WEFT_PROXY_OUTBOUND_DETECT_TIMEOUT", "300ms".into())]);
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    assert!(rest.is_empty());
    assert!(
        proxy.log().contains("did not speak HTTP"),
        "{}",
        proxy.log()
    );

    let (ok, _, err) = curl(&[
        "-x",
        &format!("http://{}", proxy.outbound),
        &format!("http://{server}/hello"),
    ])
    .await;
    assert!(ok, "still serving: {err}");
}

#[tokio::test]
async fn idle_opaque_connections_are_closed() {
    let server = spawn_server(weft_testkit::tcp::serve_greeter).await;
    let proxy = inbound_proxy_to(
        server,
        &[
            ("WEFT_PROXY_INBOUND_OPAQUE_PORTS", server.port().to_string()),
            ("WEFT_PROXY_TCP_IDLE_TIMEOUT", "300ms".into()),
        ],
    );
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut greeting = vec![0u8; 32];
    let n = tokio::time::timeout(LIMIT, s.read(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    // Then silence in both directions: the proxy closes the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle opaque connection must be closed");
    let src = [("peer", "src"), ("direction", "inbound"), ("errno", "")];
    let deadline = std::time::Instant::now() + LIMIT;
    while proxy.metric("tcp_close_total", &src) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "close recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
