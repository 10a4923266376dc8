//! Admin endpoints, graceful shutdown and configuration errors.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[tokio::test]
async fn admin_endpoints() {
    let proxy = start_proxy(&[]);
    assert_eq!(http_get(proxy.admin, "/ready").map(|r| r.0), Some(200));
    assert_eq!(http_get(proxy.admin, "/live").map(|r| r.0), Some(200));
    assert_eq!(http_get(proxy.admin, "/nope").map(|r| r.0), Some(404));
    // GET is not a shutdown.
    assert_eq!(http_get(proxy.admin, "/shutdown").map(|r| r.0), Some(405));

    let (ok, headers, _) = curl(&[
        "-sD",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{}/metrics", proxy.admin),
    ])
    .await;
    assert!(ok);
    assert!(
        headers
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let metrics = proxy.metrics();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn shutdown_is_off_unless_enabled() {
    // Any process in the pod reaches the admin port over loopback: by default
    // it cannot stop the proxy (and with it, the pod's traffic).
    let proxy = start_proxy(&[]);
    let (ok, body, err) = curl(&[
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://{}/shutdown", proxy.admin),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(body.ends_with("404"), "{body}");
    assert!(
        body.contains("WEFT_PROXY_SHUTDOWN_ENDPOINT_ENABLED"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_get(proxy.admin, "/ready").map(|r| r.0), Some(200));
}

#[tokio::test]
async fn shutdown_over_admin_drains_and_exits() {
    let proxy = start_proxy(&[("LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true".into())]);
    let (ok, body, err) = curl(&["-X", "POST", &format!("http://{}/shutdown", proxy.admin)]).await;
    assert!(ok, "{err}");
    assert_eq!(body, "shutdown\n");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(proxy.log().contains("drained"), "{}", proxy.log());
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "10s".into())]);
    let via = format!("http://{}", proxy.outbound);
    let slow = {
        let url = format!("http://{server}/delay/1500");
        let via = via.clone();
        tokio::spawn(async move { curl(&["-x", &via, &url]).await })
    };
    // Let the request reach the server before asking the proxy to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("request_total", &[]) < 1.0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.signal(libc::SIGTERM);
    // Listeners close as soon as draining starts (bounded wait for the signal to land).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(proxy.outbound).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener still open after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, body, err) = slow.await.unwrap();
    assert!(ok, "in-flight request failed: {err}");
    assert_eq!(body, "slept 1500ms\n");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_setting_stops_the_proxy_with_its_name_and_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .env("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT=\"soon\""),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .env("WEFT_PROXY_LOG", "weft_proxy=loud")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEFT_PROXY_LOG"));
}

#[test]
fn a_port_in_use_is_reported_with_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env_clear()
        .env("WEFT_PROXY_INBOUND_LISTEN_ADDR", addr.to_string())
        .env(
            "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
            loopback(free_port()).to_string(),
        )
        .env(
            "WEFT_PROXY_ADMIN_LISTEN_ADDR",
            loopback(free_port()).to_string(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("binding the inbound listener to {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let server = spawn_server(weft_testkit::http::serve).await;
    let proxy = start_proxy(&[("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "300ms".into())]);
    let via = format!("http://{}", proxy.outbound);
    let url = format!("http://{server}/delay/30000");
    let stuck = tokio::spawn(async move { curl(&["-x", &via, &url]).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("request_total", &[]) < 1.0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = std::time::Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(proxy.log().contains("grace period over"), "{}", proxy.log());
    let (ok, _, _) = stuck.await.unwrap();
    assert!(!ok, "the request still running at the deadline is cut");
}
