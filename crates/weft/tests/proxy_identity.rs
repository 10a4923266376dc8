//! A real weft-proxy gets its certificate from a real `weft control identity`:
//! not ready before, ready after, renewed before expiry, visible in metrics.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use support::{Ca, WEB, client_config, free_port, mesh_request, mesh_request_in_parts};
use weft_testkit::proxy::Proxy;
use weft_testkit::scrape::http_get;

/// How long a proxy may take to get its first certificate.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A proxy with identity WEB that gets its certificate from the identity
/// service on `identity_port` (not waited for).
fn start(ca: &Ca, identity_port: u16) -> Proxy {
    start_with(ca, identity_port, &[])
}

fn start_with(ca: &Ca, identity_port: u16, env: &[(&str, String)]) -> Proxy {
    start_as(ca, identity_port, WEB, env)
}

/// A proxy with identity `name`, listening on free loopback ports.
fn start_as(ca: &Ca, identity_port: u16, name: &str, env: &[(&str, String)]) -> Proxy {
    let token_file = ca.dir.join(format!("{name}.token"));
    std::fs::write(&token_file, ca.token(name, "1h")).unwrap();
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    Proxy::builder(support::proxy_bin())
        .env(
            "WEFT_PROXY_IDENTITY_SVC_ADDR",
            format!("127.0.0.1:{identity_port}"),
        )
        .env("WEFT_PROXY_IDENTITY_SVC_NAME", support::IDENTITY_SERVICE)
        .env("WEFT_PROXY_IDENTITY_LOCAL_NAME", name)
        .env(
            "WEFT_PROXY_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        )
        .env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS", anchors)
        .envs(env)
        .spawn()
}

#[test]
fn the_proxy_is_ready_only_with_a_certificate_and_renews_it() {
    let ca = Ca::create();
    let identity_port = free_port();
    // The identity service is not running yet.
    let proxy = start(&ca, identity_port);
    proxy.wait_for("failed Certify attempts", Duration::from_secs(10), |p| {
        p.metric("identity_cert_refresh_total", &[("result", "failure")]) >= 2.0
    });
    let (code, body) = http_get(proxy.admin, "/ready").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("waiting for a certificate"), "{body}");

    // Once it runs, the proxy gets a certificate and becomes ready.
    let (_server, _) = ca.serve(identity_port, "3s");
    proxy.wait_ready(READY_WITHIN);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expires = proxy.metric("identity_cert_expiration_timestamp_seconds", &[]);
    assert!(
        expires > now && expires < now + 5.0,
        "expiry {expires} vs now {now}"
    );

    // A 3 s certificate is renewed at 70% of its life, again and again.
    proxy.wait_for("three renewals", Duration::from_secs(20), |p| {
        p.metric("identity_cert_refresh_total", &[("result", "ok")]) >= 3.0
    });
    assert_eq!(http_get(proxy.admin, "/ready").map(|r| r.0), Some(200));
}

/// A rustls client config: trusts the CA's anchors, optionally presents a
/// leaf for `client` signed by `issuer_ca`.
/// `GET /headers` over mesh TLS as the identity `CLIENT` (certified by
/// `ca`): the answer, which must be a 200.
async fn get_as_client(anchors: &str, ca: &Ca, addr: SocketAddr) -> String {
    let answer = mesh_request(
        client_config(anchors, Some((ca, CLIENT))),
        addr,
        GET_HEADERS,
    )
    .await
    .expect("mesh TLS request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

const CLIENT: &str = "client.demo.serviceaccount.identity.weft.cluster.local";
const GET_HEADERS: &str =
    "GET /headers HTTP/1.1\r\nHost: web\r\nl5d-client-id: spoofed\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_mesh_tls_is_terminated_and_the_app_sees_the_client_identity() {
    // Every field bound: the identity service lives as long as the test.
    let MeshedApp {
        ca,
        _identity,
        proxy,
        anchors,
    } = meshed_app(|_| Vec::new()).await;

    // The operator can see the proxy's current certificate.
    let inbound = proxy.inbound.to_string();
    let shown = support::weft(&[
        "identity",
        "show",
        "--proxy",
        &inbound,
        "--identity",
        WEB,
        "--ca-dir",
        ca.dir.to_str().unwrap(),
    ]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains(&format!("identity     {WEB}")), "{shown}");
    assert!(
        shown.contains("URI:spiffe://cluster.local/ns/demo/sa/web"),
        "{shown}"
    );
    assert!(shown.contains("key          ECDSA P-256"), "{shown}");
    assert!(shown.contains("verified     yes"), "{shown}");
    let wrong = support::weft(&[
        "identity",
        "show",
        "--proxy",
        &inbound,
        "--identity",
        CLIENT,
    ]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("presented no certificate"),
        "{wrong:?}"
    );

    // A meshed client: the app sees its verified identity, never the spoofed one.
    let answer = get_as_client(&anchors, &ca, proxy.inbound).await;
    assert!(
        answer.contains(&format!("l5d-client-id: {CLIENT}")),
        "{answer}"
    );
    assert!(!answer.contains("spoofed"), "{answer}");
    let tls = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", CLIENT),
    ];
    assert_eq!(proxy.metric("request_total", &tls), 1.0);

    // Inside mesh TLS, a meshed client cannot forge its identity either: not
    // by pausing past the detect timeout (it stays HTTP), not with a request
    // line longer than the detection buffer, not by naming the header in
    // `Connection` to have it stripped after the proxy set it.
    let meshed = || client_config(&anchors, Some((&ca, CLIENT)));
    let slow = mesh_request_in_parts(
        meshed(),
        proxy.inbound,
        &["GET", &GET_HEADERS[3..]],
        Duration::from_millis(1500),
    )
    .await
    .expect("slow mesh request");
    let long = GET_HEADERS.replacen("/headers", &format!("/headers?{}", "a".repeat(9000)), 1);
    let long = mesh_request(meshed(), proxy.inbound, &long)
        .await
        .expect("long mesh request");
    let named = mesh_request(
        meshed(),
        proxy.inbound,
        "GET /headers HTTP/1.1\r\nHost: web\r\nConnection: close, l5d-client-id\r\n\r\n",
    )
    .await
    .expect("mesh request naming l5d-client-id in Connection");
    for answer in [slow, long, named] {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("l5d-client-id: {CLIENT}")),
            "{answer}"
        );
        assert!(!answer.contains("spoofed"), "{answer}");
    }
    assert_eq!(proxy.metric("request_total", &tls), 4.0);

    // No client certificate, or one from another CA: refused, nothing reaches the app.
    let refused = mesh_request(client_config(&anchors, None), proxy.inbound, GET_HEADERS).await;
    assert!(
        refused.as_ref().map_or(true, |a| a.is_empty()),
        "{refused:?}"
    );
    let stranger = Ca::create();
    let foreign = mesh_request(
        client_config(&anchors, Some((&stranger, CLIENT))),
        proxy.inbound,
        GET_HEADERS,
    )
    .await;
    assert!(
        foreign.as_ref().map_or(true, |a| a.is_empty()),
        "{foreign:?}"
    );
    assert_eq!(
        proxy.metric("request_total", &[("direction", "inbound")]),
        4.0
    );

    // Plaintext clients cannot claim an identity either.
    let plain = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy.inbound).unwrap();
        s.write_all(GET_HEADERS.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(!plain.contains("l5d-client-id"), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_speak_mtls_and_never_fall_back_to_plaintext() {
    let ca = Ca::create();
    let identity_port = free_port();
    let (_server, _) = ca.serve(identity_port, "1h");
    let (server, app_addr) = web_server(&ca, identity_port).await;
    // The client side knows the server proxy is `web`, and (wrongly) that the
    // plaintext app is too: it must refuse to talk to the app in plaintext.
    let identities = format!("{}={WEB},{app_addr}={WEB}", server.inbound);
    let client = start_as(
        &ca,
        identity_port,
        CLIENT,
        &[("WEFT_PROXY_OUTBOUND_IDENTITIES", identities)],
    );
    for p in [&server, &client] {
        p.wait_ready(READY_WITHIN);
    }

    let curl = |url: String| {
        let via = format!("http://{}", client.outbound);
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "-i",
                    "--max-time",
                    "20",
                    "-x",
                    &via,
                    "-H",
                    "l5d-client-id: spoofed",
                    &url,
                ])
                .output()
                .expect("curl is installed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let answer = curl(format!("http://{}/headers", server.inbound))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("l5d-client-id: {CLIENT}")),
        "the app sees the verified client: {answer}"
    );
    assert!(!answer.contains("spoofed"), "{answer}");
    let to_web = [("peer", "dst"), ("tls", "true"), ("server_id", WEB)];
    assert_eq!(client.metric("tcp_open_total", &to_web), 1.0);
    let meshed = [
        ("direction", "outbound"),
        ("tls", "true"),
        ("server_id", WEB),
    ];
    assert_eq!(client.metric("request_total", &meshed), 1.0);
    let from_client = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", CLIENT),
    ];
    assert_eq!(server.metric("request_total", &from_client), 1.0);

    let refused = curl(format!("http://{app_addr}/headers")).await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(
        refused.contains("l5d-proxy-error: mesh TLS with web"),
        "{refused}"
    );
    assert_eq!(
        client.metric("outbound_http_errors_total", &[("error", "tls_failed")]),
        1.0
    );
    // Both requests are counted against a meshed endpoint (server_id), the second as a failure.
    assert_eq!(client.metric("request_total", &meshed), 2.0);
    let failed = [
        ("direction", "outbound"),
        ("server_id", WEB),
        ("status_code", "502"),
        ("classification", "failure"),
    ];
    assert_eq!(client.metric("response_total", &failed), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_and_the_issuer_rotates_under_load_without_a_failed_request() {
    let ca = Ca::create();
    let identity_port = free_port();
    // 3 s certificates: each proxy renews about every 2 s.
    let (_server, _) = ca.serve(identity_port, "3s");
    let (server, client) = meshed_pair(&ca, identity_port).await;
    let renewals = |p: &Proxy| p.metric("identity_cert_refresh_total", &[("result", "ok")]);
    let (client_before, server_before) = (renewals(&client), renewals(&server));

    let via = format!("http://{}", client.outbound);
    let url = format!("http://{}/hello", server.inbound);
    // Midway, the issuer is rotated: later leaves chain to the new issuer under
    // the same trust anchor, while peers still hold leaves from the old one.
    let ca_dir = ca.dir.clone();
    let rotation = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        support::weft(&[
            "identity",
            "ca",
            "rotate-issuer",
            "--dir",
            ca_dir.to_str().unwrap(),
        ])
    });
    let codes = load(via, url, Duration::from_secs(8)).await;

    assert!(rotation.await.unwrap().status.success(), "issuer rotated");
    let failed: Vec<&String> = codes.iter().filter(|c| *c != "200").collect();
    assert!(codes.len() >= 100, "only {} requests ran", codes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        codes.len()
    );
    assert!(
        renewals(&client) - client_before >= 2.0,
        "the client proxy renewed during the run"
    );
    assert!(
        renewals(&server) - server_before >= 2.0,
        "the server proxy renewed during the run"
    );
    let handshakes = client.metric("tcp_open_total", &[("peer", "dst"), ("server_id", WEB)]);
    assert!(
        handshakes >= 3.0,
        "new mesh connections were made during the run: {handshakes}"
    );
}

/// Requests `url` through the explicit proxy `via` in batches of 20 on one
/// connection, with pauses longer than the pool idle timeout so that mesh
/// connections are made anew; bounded in time and count. Returns the statuses.
async fn load(via: String, url: String, run_for: Duration) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + run_for;
        let mut codes = Vec::new();
        for _ in 0..400 {
            if Instant::now() > deadline {
                break;
            }
            let mut args = vec![
                "-s",
                "--max-time",
                "10",
                "-x",
                &via,
                "-w",
                "%{http_code}\\n",
            ];
            for _ in 0..20 {
                args.extend(["-o", "/dev/null", &url]);
            }
            let out = Command::new("curl")
                .args(&args)
                .output()
                .expect("curl is installed");
            codes.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        codes
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchor_rotation_with_a_bundle_under_load() {
    use weft_identity::ca;
    let ca_dir = Ca::create();
    // Step 1 of a rotation: every proxy trusts the old and the new root.
    let old_root = std::fs::read_to_string(ca_dir.dir.join("ca.crt")).unwrap();
    let new_root =
        ca::generate_trust_anchor("root-2.cluster.local", Duration::from_secs(86_400)).unwrap();
    std::fs::write(
        ca_dir.dir.join("ca.crt"),
        format!("{old_root}{}", new_root.cert_pem),
    )
    .unwrap();

    let identity_port = free_port();
    let (_server, _) = ca_dir.serve(identity_port, "3s");
    let (server, client) = meshed_pair(&ca_dir, identity_port).await;

    // Step 2, during load: the issuer moves under the new root. For a while one
    // side holds a leaf from the old root and the other from the new one.
    let dir = ca_dir.dir.clone();
    let switch = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        let issuer = ca::generate_issuer(
            &new_root,
            "identity-2.cluster.local",
            Duration::from_secs(86_400),
        )
        .unwrap();
        std::fs::write(dir.join("issuer.key.tmp"), &issuer.key_pem).unwrap();
        // Keys must be private, or the identity service keeps the old issuer.
        std::fs::set_permissions(
            dir.join("issuer.key.tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::rename(dir.join("issuer.key.tmp"), dir.join("issuer.key")).unwrap();
        std::fs::write(dir.join("issuer.crt.tmp"), &issuer.cert_pem).unwrap();
        std::fs::rename(dir.join("issuer.crt.tmp"), dir.join("issuer.crt")).unwrap();
    });
    let codes = load(
        format!("http://{}", client.outbound),
        format!("http://{}/hello", server.inbound),
        Duration::from_secs(9),
    )
    .await;
    switch.await.unwrap();

    let failed: Vec<&String> = codes.iter().filter(|c| *c != "200").collect();
    assert!(codes.len() >= 100, "only {} requests ran", codes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        codes.len()
    );
    // By now both proxies hold leaves from the new issuer.
    let inbound = server.inbound.to_string();
    let shown = support::weft(&["identity", "show", "--proxy", &inbound, "--identity", WEB]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("issuer       CN=identity-2.cluster.local"),
        "{shown}"
    );
}

/// A server proxy (`web`, in front of a test app) and a client proxy (`client`)
/// that reaches it over mesh TLS, both ready. The client's pooled connections
/// are short-lived, so load through it keeps making new mTLS handshakes.
async fn meshed_pair(ca: &Ca, identity_port: u16) -> (Proxy, Proxy) {
    let (server, _) = web_server(ca, identity_port).await;
    let client = start_as(
        ca,
        identity_port,
        CLIENT,
        &[
            (
                "WEFT_PROXY_OUTBOUND_IDENTITIES",
                format!("{}={WEB}", server.inbound),
            ),
            ("WEFT_PROXY_HTTP_POOL_IDLE_TIMEOUT", "200ms".into()),
        ],
    );
    for p in [&server, &client] {
        p.wait_ready(READY_WITHIN);
    }
    (server, client)
}

/// The server side: the test application behind a proxy with identity `web`.
async fn web_server(ca: &Ca, identity_port: u16) -> (Proxy, SocketAddr) {
    let app_addr = spawn_app().await;
    let server = start_as(
        ca,
        identity_port,
        WEB,
        &[("WEFT_PROXY_INBOUND_FORWARD_ADDR", app_addr.to_string())],
    );
    (server, app_addr)
}

/// The test application: weft-testkit's HTTP server on a free loopback port.
/// The test app behind a certified proxy (rootless forwarding), with the CA
/// and its identity service.
struct MeshedApp {
    ca: Ca,
    _identity: support::Server,
    proxy: Proxy,
    anchors: String,
}

/// Starts [`MeshedApp`]; `extra` gives more proxy settings from the app's address.
async fn meshed_app(extra: impl FnOnce(SocketAddr) -> Vec<(&'static str, String)>) -> MeshedApp {
    let ca = Ca::create();
    let identity_port = free_port();
    let (identity, _) = ca.serve(identity_port, "1h");
    let app_addr = spawn_app().await;
    let mut env = vec![("WEFT_PROXY_INBOUND_FORWARD_ADDR", app_addr.to_string())];
    env.extend(extra(app_addr));
    let proxy = start_with(&ca, identity_port, &env);
    proxy.wait_ready(READY_WITHIN);
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    MeshedApp {
        ca,
        _identity: identity,
        proxy,
        anchors,
    }
}

async fn spawn_app() -> SocketAddr {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(weft_testkit::http::serve(app));
    addr
}

/// Linkerd's transport header for an opaque connection to `port`: preface,
/// length, protobuf `Header { port }`.
fn transport_header(port: u16) -> Vec<u8> {
    let mut message = vec![0x08];
    let mut v = u32::from(port);
    while v >= 0x80 {
        message.push((v as u8) | 0x80);
        v >>= 7;
    }
    message.push(v as u8);
    let mut out = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&message);
    out
}

/// Opens mesh TLS to `addr` as `client` offering the transport-header ALPN,
/// writes `first`, and returns what the server sends before closing.
async fn mesh_opaque(ca: &Ca, addr: SocketAddr, first: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    let mut config = (*client_config(&anchors, Some((ca, CLIENT)))).clone();
    config.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(WEB.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"transport.l5d.io/v1"[..]),
        "the mesh listener accepts the transport-header ALPN"
    );
    tls.write_all(first).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_rides_mtls_to_the_peer_proxy_port_with_a_transport_header() {
    let ca = Ca::create();
    let identity_port = free_port();
    let (_server, _) = ca.serve(identity_port, "1h");
    let app_addr = spawn_app().await;
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    tokio::spawn(weft_testkit::tcp::serve_greeter(greeter));
    // The server proxy is not in front of the greeter: only the transport
    // header can bring a connection to it.
    let server = start_as(
        &ca,
        identity_port,
        WEB,
        &[("WEFT_PROXY_INBOUND_FORWARD_ADDR", app_addr.to_string())],
    );
    let client = start_as(
        &ca,
        identity_port,
        CLIENT,
        &[(
            "WEFT_PROXY_OUTBOUND_IDENTITIES",
            format!("{greeter_addr}={WEB}@{}", server.inbound.port()),
        )],
    );
    for p in [&server, &client] {
        p.wait_ready(READY_WITHIN);
    }

    // A CONNECT tunnel through the client proxy is opaque TCP to the greeter.
    let outbound = client.outbound;
    let conversation = tokio::time::timeout(Duration::from_secs(20), async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
        let mut lines = BufReader::new(tcp);
        lines
            .get_mut()
            .write_all(
                format!("CONNECT {greeter_addr} HTTP/1.1\r\nHost: {greeter_addr}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut line = String::new();
        while lines.read_line(&mut line).await.unwrap() > 0 {
            let done = line.starts_with("220 ");
            seen.push(std::mem::take(&mut line));
            if done {
                break;
            }
        }
        lines
            .get_mut()
            .write_all(b"hello\r\nQUIT\r\n")
            .await
            .unwrap();
        while lines.read_line(&mut line).await.unwrap() > 0 {
            seen.push(std::mem::take(&mut line));
        }
        seen.concat()
    })
    .await
    .expect("the tunnelled conversation finishes");
    assert!(conversation.starts_with("HTTP/1.1 200"), "{conversation}");
    assert!(
        conversation.contains("220 weft-testkit greeter ready\r\necho: hello\r\n221 bye\r\n"),
        "{conversation}"
    );

    let target = greeter_addr.to_string();
    let to_web = [
        ("peer", "dst"),
        ("target_addr", target.as_str()),
        ("tls", "true"),
        ("server_id", WEB),
    ];
    assert_eq!(client.metric("tcp_open_total", &to_web), 1.0);
    // The inbound side labels the connection with the header's target and
    // the verified client, not with its listener address.
    let from_client = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("target_addr", target.as_str()),
        ("tls", "true"),
        ("client_id", CLIENT),
    ];
    server.wait_for("inbound metrics", Duration::from_secs(5), |p| {
        p.metric("tcp_close_total", &from_client) == 1.0
    });
    assert_eq!(server.metric("tcp_open_total", &from_client), 1.0);
    assert!(server.metric("tcp_read_bytes_total", &from_client) > 0.0);

    // Bad headers are refused without reaching any application.
    let refused = [
        (
            b"GET / HTTP/1.1\r\n\r\n-padding-to-the-header-size".to_vec(),
            "does not start with",
        ),
        (transport_header(server.inbound.port()), "would loop"),
    ];
    for (first, why) in refused {
        let answer = mesh_opaque(&ca, server.inbound, &first).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.is_empty()) || answer.is_err(),
            "{answer:?}"
        );
        server.wait_for(why, Duration::from_secs(5), |p| p.log().contains(why));
    }
    // A good header from a raw client reaches the greeter.
    greets_through(&ca, server.inbound, greeter_addr).await;
}

/// A raw mesh TLS client with a transport header for the greeter at
/// `greeter` reaches it through the proxy at `inbound`.
async fn greets_through(ca: &Ca, inbound: SocketAddr, greeter: SocketAddr) {
    let first = [transport_header(greeter.port()), b"QUIT\r\n".to_vec()].concat();
    let answer = mesh_opaque(ca, inbound, &first).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "220 weft-testkit greeter ready\r\n221 bye\r\n"
    );
}

/// A Linkerd proxy sends opaque TCP to the peer's inbound port itself, not
/// redirected, inside mesh TLS with a transport header: that is served with
/// no forward address; nothing else that arrives that way is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_inbound_port_itself_is_served_only_by_its_transport_header() {
    let ca = Ca::create();
    let identity_port = free_port();
    let (_identity, _) = ca.serve(identity_port, "1h");
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    tokio::spawn(weft_testkit::tcp::serve_greeter(greeter));
    let server = start_as(&ca, identity_port, WEB, &[]);
    server.wait_ready(READY_WITHIN);

    greets_through(&ca, server.inbound, greeter_addr).await;
    let from_client = [
        ("direction", "inbound"),
        ("target_addr", &greeter_addr.to_string()),
        ("client_id", CLIENT),
    ];
    server.wait_for("inbound metrics", Duration::from_secs(5), |p| {
        p.metric("tcp_close_total", &from_client) == 1.0
    });

    // Mesh TLS without a header has nowhere to go.
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    let answer = mesh_request(
        client_config(&anchors, Some((&ca, CLIENT))),
        server.inbound,
        GET_HEADERS,
    )
    .await;
    assert!(answer.as_ref().map_or(true, |a| a.is_empty()), "{answer:?}");
    server.wait_for("the refusal", Duration::from_secs(5), |p| {
        p.log().contains("without a transport header")
    });
    // Nor does plaintext: it is closed and counted.
    let plain = tokio::task::spawn_blocking({
        let inbound = server.inbound;
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(inbound).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(GET_HEADERS.as_bytes()).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        }
    })
    .await
    .unwrap();
    assert!(plain.is_empty(), "{}", String::from_utf8_lossy(&plain));
    server.wait_for("no_target counted", Duration::from_secs(5), |p| {
        p.metric("inbound_tcp_accept_errors_total", &[("error", "no_target")]) == 1.0
    });
}

/// Runs curl with `args`; returns what it printed (headers with `-i`).
async fn curl_out(args: Vec<String>) -> String {
    weft_testkit::curl::Curl::new(args)
        .max_time(20)
        .output()
        .await
        .combined()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_between_meshed_proxies_rides_one_http2_connection() {
    let ca = Ca::create();
    let identity_port = free_port();
    let (_identity, _) = ca.serve(identity_port, "1h");
    let (server, _) = web_server(&ca, identity_port).await;
    // Discovery says `web` is the server proxy's inbound address, meshed:
    // the destination service gives it the `h2` hint. It is asked over TLS.
    let destination = support::Destination::start_tls(
        &[
            ("web.yaml", &support::service_yaml("web", "198.18.100.1")),
            (
                "web-0.yaml",
                &support::workload_yaml("web-0", "web", "127.0.0.1", server.inbound.port()),
            ),
        ],
        &ca,
        identity_port,
    );
    let client = start_as(
        &ca,
        identity_port,
        CLIENT,
        &[
            (
                "WEFT_PROXY_DESTINATION_SVC_ADDR",
                destination.addr.to_string(),
            ),
            (
                "WEFT_PROXY_DESTINATION_SVC_NAME",
                support::DESTINATION_SERVICE.into(),
            ),
        ],
    );
    for p in [&server, &client] {
        p.wait_ready(READY_WITHIN);
    }
    let via = format!("http://{}", client.outbound);
    let url = |path: &str| format!("http://web.demo.svc.cluster.local{path}");

    // Six slow requests at once from HTTP/1 clients: six client connections.
    let mut parallel = vec!["-i".to_string(), "-Z".into(), "--parallel-immediate".into()];
    parallel.extend(["-x".into(), via.clone()]);
    for _ in 0..6 {
        parallel.push(url("/delay/300"));
    }
    let answers = curl_out(parallel).await;
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 6, "{answers}");
    // The application sees plain HTTP/1.1, with the client's Host and identity.
    let headers = curl_out(vec!["-x".into(), via.clone(), url("/headers")]).await;
    assert!(headers.contains("version: HTTP/1.1\n"), "{headers}");
    assert!(
        headers.contains("host: web.demo.svc.cluster.local\n"),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("l5d-client-id: {CLIENT}\n")),
        "{headers}"
    );
    assert!(!headers.contains("l5d-orig-proto"), "{headers}");
    let old = curl_out(vec!["-0".into(), "-x".into(), via.clone(), url("/headers")]).await;
    assert!(old.contains("version: HTTP/1.0\n"), "{old}");
    // A streamed (chunked) body goes both ways.
    let echoed = curl_out(vec![
        "-x".into(),
        via.clone(),
        "-H".into(),
        "transfer-encoding: chunked".into(),
        "--data-binary".into(),
        "streamed body".into(),
        url("/echo"),
    ])
    .await;
    assert_eq!(echoed, "streamed body");

    // All of it crossed one mTLS connection between the proxies, as HTTP/2.
    let inbound = server.inbound.to_string();
    let to_web = [
        ("direction", "outbound"),
        ("peer", "dst"),
        ("target_addr", inbound.as_str()),
        ("tls", "true"),
        ("server_id", WEB),
    ];
    assert_eq!(client.metric("tcp_open_total", &to_web), 1.0);
    assert!(client.metric("tcp_open_total", &[("peer", "src")]) >= 6.0);
    let from_client = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("tls", "true"),
        ("client_id", CLIENT),
    ];
    assert_eq!(server.metric("tcp_open_total", &from_client), 1.0);
    assert_eq!(server.metric("request_total", &from_client[2..]), 9.0);
    // The client's metrics name the service and workload, from discovery.
    let by_service = [
        ("direction", "outbound"),
        ("dst_namespace", "demo"),
        ("dst_service", "web"),
        ("dst_external_workload", "web-0"),
        ("server_id", WEB),
    ];
    assert_eq!(client.metric("request_total", &by_service), 9.0);

    // A protocol upgrade hands its connection over: it stays HTTP/1.
    let ws = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(client.outbound).await.unwrap();
        tcp.write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: web.demo.svc.cluster.local\r\nConnection: upgrade\r\nUpgrade: weft-echo\r\n\r\n",
                url("/ws")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        tcp.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tcp.read_exact(&mut echo).await.unwrap();
        (String::from_utf8_lossy(&head).into_owned(), echo)
    })
    .await
    .expect("the upgraded connection echoes");
    assert!(ws.0.starts_with("HTTP/1.1 101"), "{}", ws.0);
    assert_eq!(&ws.1, b"ping");
    assert_eq!(client.metric("tcp_open_total", &to_web), 2.0);

    // A bad marker from a peer is refused, saying what was wrong.
    let bad = curl_out(vec![
        "-i".into(),
        "--http2-prior-knowledge".into(),
        "-H".into(),
        "l5d-orig-proto: HTTP/9".into(),
        format!("http://{}/headers", server.inbound),
    ])
    .await;
    assert!(bad.starts_with("HTTP/2 400"), "{bad}");
    assert!(
        bad.contains("l5d-orig-proto must be HTTP/1.1 or HTTP/1.0"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_tls_and_proves_its_identity() {
    let ca = Ca::create();
    let identity_port = free_port();
    let (_identity, _) = ca.serve(identity_port, "1h");

    // A proxy that expects another name for the identity service gets no
    // certificate, and says why.
    let wrong = start_as(
        &ca,
        identity_port,
        WEB,
        &[("WEFT_PROXY_IDENTITY_SVC_NAME", CLIENT.into())],
    );
    wrong.wait_for("failed Certify attempts", Duration::from_secs(10), |p| {
        p.metric("identity_cert_refresh_total", &[("result", "failure")]) >= 1.0
    });
    assert_eq!(http_get(wrong.admin, "/ready").map(|r| r.0), Some(503));
    let log = wrong.log();
    assert!(log.contains(&format!("TLS with {CLIENT}")), "{log}");

    // Nothing answers a plaintext Certify: tokens never cross in the clear.
    use linkerd2_proxy_api::identity::identity_client::IdentityClient;
    let plaintext = async {
        let mut client =
            IdentityClient::connect(format!("http://127.0.0.1:{identity_port}")).await?;
        let request = linkerd2_proxy_api::identity::CertifyRequest::default();
        client.certify(request).await.map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .expect("a plaintext client is turned away promptly");
    assert!(refused.is_err(), "plaintext Certify must fail");

    // The destination service serves TLS as its own identity; the CLI checks it.
    let destination = support::Destination::start_tls(
        &[
            ("web.yaml", &support::service_yaml("web", "198.18.100.1")),
            (
                "web-0.yaml",
                &support::workload_yaml("web-0", "web", "198.18.0.10", 8080),
            ),
        ],
        &ca,
        identity_port,
    );
    let addr = destination.addr.to_string();
    let ca_dir = ca.dir.to_str().unwrap();
    let query = [
        "diagnostics",
        "endpoints",
        "web.demo.svc.cluster.local:80",
        "--destination",
    ];
    let shown = support::weft(&[&query[..], &[&addr, "--ca-dir", ca_dir]].concat());
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(out.contains("198.18.0.10:8080"), "{out}");
    for (args, why) in [
        (
            vec![addr.as_str()],
            "say which CA verifies it (--ca-dir DIR)",
        ),
        (
            vec![addr.as_str(), "--plaintext"],
            "pass --ca-dir instead of --plaintext",
        ),
        (
            vec![addr.as_str(), "--ca-dir", ca_dir, "--destination-name", WEB],
            "NotValidForName",
        ),
    ] {
        let refused = support::weft(&[&query[..], &args].concat());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_requires_identity_refuses_plaintext_and_unidentified_clients() {
    // Every field bound: the identity service lives as long as the test.
    let MeshedApp {
        ca,
        _identity,
        proxy,
        anchors,
    } = meshed_app(|app| {
        vec![(
            "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY",
            app.port().to_string(),
        )]
    })
    .await;

    // A meshed client with an identity is let through.
    get_as_client(&anchors, &ca, proxy.inbound).await;

    let plain = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy.inbound).unwrap();
        s.write_all(GET_HEADERS.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out, proxy)
    })
    .await
    .unwrap();
    let (plain, proxy) = plain;
    assert!(plain.is_empty(), "plaintext was served: {plain}");
    assert_eq!(
        proxy.metric(
            "inbound_tcp_accept_errors_total",
            &[("error", "identity_required")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("request_total", &[("direction", "inbound")]),
        1.0,
        "only the meshed request reached the app"
    );
}
