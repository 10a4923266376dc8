//! Inbound authorization end to end: a real weft-proxy, certified by a real
//! identity service, enforcing the policy it watches from a real `weft
//! control destination`, against real clients: mTLS clients that prove an
//! identity the test chooses (certified by the same CA), and plaintext
//! clients, each from a loopback address the test picks.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use support::{Ca, Destination, WEB, client_config, free_port};
use weft_testkit::proxy::Proxy;

const CLIENT: &str = "client.demo.serviceaccount.identity.weft.cluster.local";
const OTHER: &str = "other.demo.serviceaccount.identity.weft.cluster.local";
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// A second client address: inside the cluster networks where a test says so.
const INSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The workload behind the proxy, as the controller knows it.
fn workload(port: u16, annotations: &str) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {{name: app-0, namespace: demo, labels: {{app: app}}, annotations: {{{annotations}}}}}
spec:
  meshTLS: {{identity: {WEB}}}
  ports: [{{name: app, port: {port}}}]
  workloadIPs: [{{ip: 127.0.0.1}}]
"
    )
}

fn server(protocol: &str) -> String {
    format!(
        "---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: app-srv, namespace: demo}}
spec:
  externalWorkloadSelector: {{matchLabels: {{app: app}}}}
  port: app
  proxyProtocol: {protocol}
"
    )
}

/// An AuthorizationPolicy `name` on the Server for the identities given.
fn authorize(name: &str, identities: &[&str]) -> String {
    let ids: Vec<String> = identities.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: {name}, namespace: demo}}
spec:
  identities: [{}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: demo}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: app-srv}}
  requiredAuthenticationRefs:
  - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: {name}}}
",
        ids.join(", ")
    )
}

/// A certified proxy in front of an application, watching its policy.
struct Enforced {
    ca: Ca,
    _identity: support::Server,
    destination: Destination,
    proxy: Proxy,
    anchors: String,
    app: SocketAddr,
}

enum App {
    Http,
    Greeter,
}

async fn enforced(
    app: App,
    manifests: impl FnOnce(u16) -> String,
    destination_args: &[&str],
) -> Enforced {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    match app {
        App::Http => drop(tokio::spawn(weft_testkit::http::serve(listener))),
        App::Greeter => drop(tokio::spawn(weft_testkit::tcp::serve_greeter(listener))),
    }
    let ca = Ca::create();
    let identity_port = free_port();
    let (identity, _) = ca.serve(identity_port, "1h");
    let destination = Destination::start_tls_args(
        &[("app.yaml", &manifests(app_addr.port()))],
        &ca,
        identity_port,
        destination_args,
    );
    let token = ca.dir.join("web.token");
    std::fs::write(&token, ca.token(WEB, "1h")).unwrap();
    let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
    let proxy = Proxy::builder(support::proxy_bin())
        .env(
            "WEFT_PROXY_IDENTITY_SVC_ADDR",
            format!("127.0.0.1:{identity_port}"),
        )
        .env("WEFT_PROXY_IDENTITY_SVC_NAME", support::IDENTITY_SERVICE)
        .env("WEFT_PROXY_IDENTITY_LOCAL_NAME", WEB)
        .env(
            "WEFT_PROXY_IDENTITY_TOKEN_FILE",
            token.display().to_string(),
        )
        .env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS", anchors.clone())
        .env("WEFT_PROXY_INBOUND_FORWARD_ADDR", app_addr.to_string())
        .env("WEFT_PROXY_POLICY_SVC_ADDR", destination.addr.to_string())
        .env("WEFT_PROXY_POLICY_SVC_NAME", support::DESTINATION_SERVICE)
        .env("WEFT_PROXY_POLICY_WORKLOAD", "demo:app-0")
        // Until the controller answers, nothing gets in.
        .env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "deny")
        .log_filter("warn,weft_proxy=info")
        .spawn();
    proxy.wait_ready(Duration::from_secs(20));
    Enforced {
        ca,
        _identity: identity,
        destination,
        proxy,
        anchors,
        app: app_addr,
    }
}

/// A connection to the proxy's inbound port from `from`: over mesh TLS as
/// `identity`, or plaintext.
async fn connect(
    e: &Enforced,
    from: IpAddr,
    identity: Option<&str>,
) -> std::io::Result<Box<dyn Io>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(e.proxy.inbound).await?;
    tcp.set_nodelay(true)?;
    Ok(match identity {
        None => Box::new(tcp),
        Some(id) => {
            let name = rustls::pki_types::ServerName::try_from(WEB.to_string()).unwrap();
            let config = client_config(&e.anchors, Some((&e.ca, id)));
            Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?,
            )
        }
    })
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One `GET path` (extra headers in `headers`): its status and the whole
/// response, or 0 when the connection failed.
async fn get(
    e: &Enforced,
    from: IpAddr,
    identity: Option<&str>,
    path: &str,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut io) = connect(e, from, identity).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n{headers}Connection: close\r\n\r\n");
    if io.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_string(&mut out)).await;
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_wildcards_networks_and_plaintext_are_told_apart() {
    let e = enforced(
        App::Http,
        |port| {
            workload(port, "")
                + &server("HTTP/1")
                + &authorize(
                    "friends",
                    &[
                        CLIENT,
                        "*.trusted.serviceaccount.identity.weft.cluster.local",
                    ],
                )
                + "---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: health, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: app-srv}]
  rules: [{matches: [{path: {type: Exact, value: /status/204}, method: GET}]}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: everything, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: app-srv}]
  rules: [{matches: [{path: {type: PathPrefix, value: /}}]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: probes, namespace: demo}
spec:
  networks: [{cidr: 127.0.0.0/8, except: [127.0.0.2/32]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: health-probes, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: health}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: probes}
"
        },
        &[],
    )
    .await;
    let cases: &[(&str, Option<&str>, IpAddr, &str, u16)] = &[
        ("the named identity", Some(CLIENT), LOOPBACK, "/hello", 200),
        (
            "an identity under the wildcard",
            Some("x.trusted.serviceaccount.identity.weft.cluster.local"),
            LOOPBACK,
            "/hello",
            200,
        ),
        (
            "an identity that only ends like the wildcard",
            Some("x.untrusted.serviceaccount.identity.weft.cluster.local"),
            LOOPBACK,
            "/hello",
            403,
        ),
        ("another identity", Some(OTHER), LOOPBACK, "/hello", 403),
        ("a plaintext client", None, LOOPBACK, "/hello", 403),
        (
            "a plaintext probe on the network-authorized route",
            None,
            LOOPBACK,
            "/status/204",
            204,
        ),
        (
            "a plaintext probe from the excepted address",
            None,
            INSIDE,
            "/status/204",
            403,
        ),
        (
            "a meshed client on the probe route (the server's authorizations)",
            Some(CLIENT),
            INSIDE,
            "/status/204",
            204,
        ),
    ];
    for (what, identity, from, path, want) in cases {
        let (code, text) = get(&e, *from, *identity, path, "").await;
        assert_eq!(
            code,
            *want,
            "{what}: {text}\n{}\n{}",
            e.proxy.log(),
            e.destination.log()
        );
        if code == 403 {
            let lower = text.to_ascii_lowercase();
            assert!(
                lower.contains("l5d-proxy-error: unauthorized request on route"),
                "{what}: {text}"
            );
        }
    }
    // Saying who you are in a header proves nothing.
    let (code, _) = get(
        &e,
        LOOPBACK,
        None,
        "/hello",
        &format!("l5d-client-id: {CLIENT}\r\n"),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        e.proxy.metric(
            "inbound_http_authz_allow_total",
            &[
                ("srv_name", "app-srv"),
                ("route_name", "everything"),
                ("authz_name", "friends"),
                ("client_id", CLIENT)
            ]
        ),
        1.0
    );
    assert_eq!(
        e.proxy.metric(
            "inbound_http_authz_deny_total",
            &[("srv_name", "app-srv"), ("route_name", "everything")]
        ),
        4.0
    );
    // Denials are logged, each (client, server, reason) once.
    let log = e.proxy.log();
    let plaintext_denials = log
        .lines()
        .filter(|l| {
            l.contains("refused by inbound policy")
                && l.contains("client=127.0.0.1 client_id=\"-\"")
        })
        .count();
    assert_eq!(plaintext_denials, 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_default_policy_admits_what_linkerd_says() {
    // The cluster's network is 127.0.0.2 alone: a client there is inside it,
    // one on 127.0.0.1 is not.
    let e = enforced(
        App::Http,
        |port| workload(port, ""),
        &["--cluster-networks", "127.0.0.2/32"],
    )
    .await;
    let port = e.app.port();
    // (meshed from outside, plaintext from outside, meshed inside, plaintext inside)
    let table: &[(&str, &str, [u16; 4])] = &[
        ("all-unauthenticated", "", [200, 200, 200, 200]),
        ("all-authenticated", "", [200, 403, 200, 403]),
        ("cluster-unauthenticated", "", [403, 403, 200, 200]),
        ("cluster-authenticated", "", [403, 403, 200, 403]),
        ("deny", "", [403, 403, 403, 403]),
        ("audit", "", [200, 200, 200, 200]),
        (
            "all-unauthenticated",
            "config.linkerd.io/proxy-require-identity-inbound-ports: \"PORT\"",
            [200, 403, 200, 403],
        ),
    ];
    for (policy, extra, want) in table {
        let extra = extra.replace("PORT", &port.to_string());
        let annotations = if extra.is_empty() {
            format!("config.linkerd.io/default-inbound-policy: {policy}")
        } else {
            format!("config.linkerd.io/default-inbound-policy: {policy}, {extra}")
        };
        e.destination
            .write("app.yaml", &workload(port, &annotations));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = [0u16; 4];
            for (i, (identity, from)) in [
                (Some(CLIENT), LOOPBACK),
                (None, LOOPBACK),
                (Some(CLIENT), INSIDE),
                (None, INSIDE),
            ]
            .into_iter()
            .enumerate()
            {
                got[i] = get(&e, from, identity, "/hello", "").await.0;
            }
            // A port that requires identity closes plaintext before HTTP.
            let got = got.map(|c| if c == 0 { 403 } else { c });
            if got == *want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{policy} {extra}: got {got:?}, want {want:?}\n{}",
                e.proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Audit admits, counts what it admitted as `audit`, and logs it.
    assert!(
        e.proxy.metric(
            "inbound_http_authz_allow_total",
            &[
                ("srv_kind", "default"),
                ("srv_name", "audit"),
                ("authz_name", "audit")
            ]
        ) >= 4.0
    );
    assert!(
        e.proxy.log().contains("reason=\"audit_would_deny\""),
        "{}",
        e.proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_port_authorizes_each_connection_and_closes_the_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = enforced(
        App::Greeter,
        |port| workload(port, "") + &server("opaque") + &authorize("friends", &[CLIENT]),
        &[],
    )
    .await;
    let talk = |identity: Option<&'static str>| {
        let e = &e;
        async move {
            let Ok(mut io) = connect(e, LOOPBACK, identity).await else {
                return String::new();
            };
            let _ = io.write_all(b"QUIT\r\n").await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let allowed = talk(Some(CLIENT)).await;
    assert_eq!(allowed, "220 weft-testkit greeter ready\r\n221 bye\r\n");
    // The server speaks first: a client that waits for it is not held up
    // by protocol detection (the Server says opaque).
    let mut io = connect(&e, LOOPBACK, Some(CLIENT)).await.unwrap();
    let mut greeting = [0u8; 32];
    let read = tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut greeting)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && greeting.starts_with(b"220 weft-testkit greeter ready"),
        "{read:?} {:?}",
        String::from_utf8_lossy(&greeting)
    );
    drop(io);
    for refused in [Some(OTHER), None] {
        assert_eq!(talk(refused).await, "", "{refused:?} reached the app");
    }
    assert_eq!(
        e.proxy.metric(
            "inbound_tcp_authz_allow_total",
            &[
                ("srv_name", "app-srv"),
                ("authz_name", "friends"),
                ("client_id", CLIENT)
            ]
        ),
        2.0
    );
    assert_eq!(
        e.proxy
            .metric("inbound_tcp_authz_deny_total", &[("srv_name", "app-srv")]),
        2.0
    );
}

/// Sends `GET /hello` as `identity` over one mesh TLS connection, as fast
/// as answers come, until `stop`: (200s, 429s, anything else).
async fn hammer(e: &Enforced, identity: &str, stop: Instant) -> (u64, u64, u64) {
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    // The proxy closes an HTTP/1 connection after answering for itself
    // (a 429): the client connects again, as a real one would.
    'connection: while Instant::now() < stop {
        let io = connect(e, LOOPBACK, Some(identity)).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        while Instant::now() < stop {
            let req = http::Request::get("/hello")
                .header("host", "app")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            if send.ready().await.is_err() {
                continue 'connection;
            }
            let Ok(resp) = send.send_request(req).await else {
                other += 1;
                continue 'connection;
            };
            match resp.status().as_u16() {
                200 => ok += 1,
                429 => {
                    assert!(resp.headers().contains_key("l5d-proxy-error"));
                    limited += 1
                }
                _ => other += 1,
            }
            let _ = resp.into_body().collect().await;
        }
    }
    (ok, limited, other)
}

fn rate_limit(total: Option<u32>, identity: Option<u32>, bot: Option<u32>) -> String {
    let mut text = "---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: app-limit, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: app-srv}
"
    .to_string();
    if let Some(n) = total {
        text += &format!("  total: {{requestsPerSecond: {n}}}\n");
    }
    if let Some(n) = identity {
        text += &format!("  identity: {{requestsPerSecond: {n}}}\n");
    }
    if let Some(n) = bot {
        text += &format!(
            "  overrides:\n  - requestsPerSecond: {n}\n    clientRefs: [{{kind: ServiceAccount, name: other}}]\n"
        );
    }
    text
}

/// The rate a limit admitted over `window`: what got through less the
/// bucket's initial second.
fn admitted_rate(ok: u64, limit: u32, window: Duration) -> f64 {
    (ok as f64 - f64::from(limit)) / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_admit_their_rate_per_identity_and_in_total() {
    const WINDOW: Duration = Duration::from_secs(4);
    let policy = |limit: String| {
        move |port| workload(port, "") + &server("HTTP/1") + &authorize("anyone", &["*"]) + &limit
    };
    // Per identity: 20/s each, 40/s for the override; far above for the total.
    let e = enforced(
        App::Http,
        policy(rate_limit(Some(10_000), Some(20), Some(40))),
        &[],
    )
    .await;
    let stop = Instant::now() + WINDOW;
    let ((client_ok, client_limited, client_other), (other_ok, _, other_other)) =
        tokio::join!(hammer(&e, CLIENT, stop), hammer(&e, OTHER, stop));
    assert_eq!((client_other, other_other), (0, 0));
    assert!(client_limited > 0, "the client was never limited");
    let client_rate = admitted_rate(client_ok, 20, WINDOW);
    let other_rate = admitted_rate(other_ok, 40, WINDOW);
    println!(
        "per identity: client {client_rate:.1}/s (limit 20), other {other_rate:.1}/s (limit 40)"
    );
    assert!((18.0..=22.0).contains(&client_rate), "{client_rate}");
    assert!((36.0..=44.0).contains(&other_rate), "{other_rate}");
    assert_eq!(
        e.proxy.metric(
            "inbound_http_local_ratelimit_rejected_total",
            &[("ratelimit_name", "app-limit"), ("client_id", CLIENT)]
        ),
        client_limited as f64
    );

    // In total: 30/s shared by both, whoever asks.
    e.destination.write(
        "app.yaml",
        &policy(rate_limit(Some(30), None, None))(e.app.port()),
    );
    // The edit is in force once the shared bucket refuses (it never did).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, limited, _) = hammer(&e, CLIENT, Instant::now() + Duration::from_millis(200)).await;
        if limited > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the total limit never applied");
    }
    // Let the bucket refill, then measure.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stop = Instant::now() + WINDOW;
    let ((a, _, _), (b, _, _)) = tokio::join!(hammer(&e, CLIENT, stop), hammer(&e, OTHER, stop));
    let total_rate = admitted_rate(a + b, 30, WINDOW);
    println!("total: {total_rate:.1}/s (limit 30), split {a}/{b}");
    assert!((27.0..=33.0).contains(&total_rate), "{total_rate}");
}

/// Requests as `identity` over one kept-alive connection until `stop`,
/// counting (sent, not 200).
fn steady_load(io: Box<dyn Io>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (mut sent, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let req = http::Request::get("/hello")
                .header("host", "app")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            sent += 1;
            match send.send_request(req).await {
                Ok(resp) => {
                    if resp.status() != 200 {
                        failed += 1;
                    }
                    let _ = resp.into_body().collect().await;
                }
                Err(_) => {
                    failed += 1;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failed)
    })
}

/// Waits until `identity` gets `want` for `GET /hello`; how long it took.
async fn until_status(e: &Enforced, identity: &str, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (code, text) = get(e, LOOPBACK, Some(identity), "/hello", "").await;
        if code == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{identity} never got {want}: {code} {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_under_load_and_the_last_policy_outlives_the_controller() {
    let manifests = |identities: &[&str], port: u16| {
        workload(port, "") + &server("HTTP/1") + &authorize("friends", identities)
    };
    let mut e = enforced(App::Http, |port| manifests(&[CLIENT, OTHER], port), &[]).await;
    let port = e.app.port();
    assert_eq!(get(&e, LOOPBACK, Some(OTHER), "/hello", "").await.0, 200);

    // Steady load from the client that stays allowed, through everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        connect(&e, LOOPBACK, Some(CLIENT)).await.unwrap(),
        stop.clone(),
    );

    // Revoked: the other client is refused soon after the edit.
    e.destination.write("app.yaml", &manifests(&[CLIENT], port));
    let took = until_status(&e, OTHER, 403).await;
    println!("a revocation took {took:?} to apply (edit to the first refused request)");

    // A broken edit is reported where it is, and its last good version
    // keeps serving.
    e.destination.write(
        "app.yaml",
        &manifests(&[CLIENT, OTHER], port)
            .replace("proxyProtocol: HTTP/1", "proxyProtocol: HTTP/9"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.destination.log().contains("app.yaml:") {
        assert!(Instant::now() < deadline, "{}", e.destination.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        e.destination.log().contains("HTTP/9"),
        "{}",
        e.destination.log()
    );
    assert_eq!(get(&e, LOOPBACK, Some(OTHER), "/hello", "").await.0, 403);

    // The controller dies, and the manifests change while it is away: the
    // proxy keeps the last policy it was given until it is back.
    e.destination.kill();
    e.destination
        .write("app.yaml", &manifests(&[CLIENT, OTHER], port));
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(get(&e, LOOPBACK, Some(OTHER), "/hello", "").await.0, 403);
        assert_eq!(get(&e, LOOPBACK, Some(CLIENT), "/hello", "").await.0, 200);
    }
    let ready = weft_testkit::scrape::http_get(e.proxy.admin, "/ready").map(|(code, _)| code);
    assert_eq!(
        ready,
        Some(200),
        "the proxy stays ready without its controller"
    );
    e.destination.restart();
    let took = until_status(&e, OTHER, 200).await;
    println!("the restarted controller's policy applied after {took:?}");

    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    println!("steady load: {sent} requests, {failed} failed");
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0, "an allowed client lost requests");
}
