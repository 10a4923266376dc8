//! A real weft-proxy following OutboundPolicies from a real `weft control
//! destination`: HTTPRoute matches, filters, redirects, weighted splits
//! (held within tolerance, shifted under load, kept while the controller
//! is down), timeouts, retries and circuit breaking, with linkerd2-proxy's
//! route and backend metrics.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::Destination;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use weft_testkit::proxy::Proxy;

/// A replica named `name`: answers `{name} x-route={value}` on kept-alive
/// connections; a path with `slow` in it after a second, `/fail` with 503.
/// Counts requests.
struct Replica {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn replica(name: &'static str, fail_everything: bool) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_replica(listener, name, fail_everything)
}

fn serve_replica(listener: TcpListener, name: &'static str, fail_everything: bool) -> Replica {
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            conns.spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let (mut request_line, mut route) = (String::new(), String::new());
                    loop {
                        let mut line = String::new();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) if request_line.is_empty() => request_line = line,
                            Ok(_) => {
                                if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-route:")
                                {
                                    route = v.trim().to_string();
                                }
                            }
                        }
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    if request_line.contains("slow") {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let status = if fail_everything || request_line.contains(" /fail") {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let body = format!("{name} x-route={route}\n");
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Replica {
        addr,
        requests,
        task,
    }
}

fn service(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo, annotations: {{{annotations}}}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: http}}]\n"
    )
}

fn workload(name: &str, app: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}\nspec:\n  ports: [{{name: http, port: {}}}]\n  workloadIPs: [{{ip: {}}}]\n",
        addr.port(),
        addr.ip()
    )
}

/// web's routes: a header canary, a redirect, a timeout, header filters, a
/// missing backend, and the v1/v2 split for everything else.
fn web_routes(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-routes, namespace: demo}}
spec:
  parentRefs: [{{kind: Service, name: web, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: \"1\"}}]}}]
    backendRefs: [{{name: web-v2, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 300ms}}
    backendRefs: [{{name: web-v1, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /headers}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: headers}}]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-served-by, value: weft}}]}}
    backendRefs: [{{name: web-v1, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /missing}}}}]
    backendRefs: [{{name: web-v9, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /backend-slow}}}}]
    timeouts: {{backendRequest: 200ms}}
    backendRefs: [{{name: web-v1, port: 80}}]
  - matches: [{{path: {{type: RegularExpression, value: \"/items/[0-9]+\"}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: regex}}]}}
    backendRefs: [{{name: web-v2, port: 80}}]
  - matches: [{{queryParams: [{{name: version, value: \"2\"}}]}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: query}}]}}
    backendRefs: [{{name: web-v2, port: 80}}]
  - matches: [{{method: DELETE}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: method}}]}}
    backendRefs: [{{name: web-v2, port: 80}}]
  - backendRefs:
    - {{name: web-v1, port: 80, weight: {v1}}}
    - {{name: web-v2, port: 80, weight: {v2}}}
"
    )
}

/// limited: one replica, and this proxy may send it `rps` requests a second.
fn limited_service(rps: u32, addr: SocketAddr) -> String {
    format!(
        "{}---\n{}",
        service(
            "limited",
            &format!("weft.io/outbound-rate-limit: \"{rps}\"")
        ),
        workload("limited-0", "limited", addr)
    )
}

/// A proxy in explicit-proxy mode that resolves through `destination` and
/// follows its outbound policies, as a client in namespace demo.
fn following(destination: &Destination) -> Proxy {
    Proxy::builder(support::proxy_bin())
        .env(
            "WEFT_PROXY_DESTINATION_SVC_ADDR",
            destination.addr.to_string(),
        )
        .env("WEFT_PROXY_POLICY_SVC_ADDR", destination.addr.to_string())
        .env("WEFT_PROXY_POLICY_WORKLOAD", "demo:client-0")
        .log_filter("warn,weft_proxy=info")
        .start()
}

struct Mesh {
    _replicas: Vec<Replica>,
    /// The replica behind `limited`.
    limited: SocketAddr,
    destination: Destination,
    proxy: Proxy,
}

/// web (routed to web-v1 and web-v2), and flaky (one healthy and one
/// failing endpoint, retries on 5xx, a circuit breaker after 3 failures).
async fn mesh() -> Mesh {
    let v1 = replica("web-v1", false).await;
    let v2 = replica("web-v2", false).await;
    let good = replica("flaky-good", false).await;
    let bad = replica("flaky-bad", true).await;
    let broken = replica("broken", true).await;
    let limited = replica("limited", false).await;
    let flaky_annotations = "balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\", retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\"";
    let files = [
        ("web.yaml", service("web", "")),
        ("web-v1.yaml", service("web-v1", "")),
        ("web-v2.yaml", service("web-v2", "")),
        ("flaky.yaml", service("flaky", flaky_annotations)),
        (
            "broken.yaml",
            service(
                "broken",
                "balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\", balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 300ms, balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 2s",
            ),
        ),
        ("broken-0.yaml", workload("broken-0", "broken", broken.addr)),
        ("v1-0.yaml", workload("web-v1-0", "web-v1", v1.addr)),
        ("v2-0.yaml", workload("web-v2-0", "web-v2", v2.addr)),
        ("flaky-0.yaml", workload("flaky-0", "flaky", good.addr)),
        ("flaky-1.yaml", workload("flaky-1", "flaky", bad.addr)),
        ("routes.yaml", web_routes(90, 10)),
        // shaky's only endpoint always fails; the Service has no breaker,
        // its route has one (Weft's per-route failure accrual).
        (
            "shaky.yaml",
            format!(
                "{}---\n{}---\napiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shaky-guarded
  namespace: demo
  annotations:
    balancer.linkerd.io/failure-accrual: consecutive
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"2\"
spec:
  parentRefs: [{{kind: Service, name: shaky, port: 80}}]
",
                service("shaky", ""),
                workload("shaky-0", "shaky", bad.addr)
            ),
        ),
        ("limited.yaml", limited_service(20, limited.addr)),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let destination = Destination::start(&files);
    let proxy = following(&destination);
    Mesh {
        limited: limited.addr,
        _replicas: vec![v1, v2, good, bad, broken, limited],
        destination,
        proxy,
    }
}

/// One response: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A kept-alive explicit-proxy client.
struct Client {
    proxy: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Client {
        let stream = TcpStream::connect(proxy).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            proxy,
            stream: BufReader::new(stream),
        }
    }

    async fn get(&mut self, host: &str, path: &str, extra: &str) -> std::io::Result<Answer> {
        self.send("GET", host, path, extra).await
    }

    async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        extra: &str,
    ) -> std::io::Result<Answer> {
        let req = format!("{method} http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0usize);
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        let closes = headers
            .iter()
            .any(|(n, v)| n == "connection" && v == "close");
        if closes {
            *self = Client::connect(self.proxy).await;
        }
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    async fn web(&mut self, path: &str) -> Answer {
        self.get(WEB, path, "").await.unwrap()
    }
}

const WEB: &str = "web.demo.svc.cluster.local";
const FLAKY: &str = "flaky.demo.svc.cluster.local";
const BROKEN: &str = "broken.demo.svc.cluster.local";

fn backend_requests(proxy: &Proxy, backend: &str) -> f64 {
    proxy.metric(
        "outbound_http_route_backend_requests_total",
        &[
            ("parent_kind", "Service"),
            ("parent_name", "web"),
            ("route_kind", "HTTPRoute"),
            ("route_name", "web-routes"),
            ("backend_name", backend),
        ],
    )
}

/// Sends `n` requests to `/`; how many web-v2 served.
async fn v2_share(client: &mut Client, n: usize) -> usize {
    let mut v2 = 0;
    for _ in 0..n {
        let a = client.web("/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        v2 += usize::from(a.body.starts_with("web-v2"));
    }
    v2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_filters_redirects_timeouts_and_missing_backends() {
    let m = mesh().await;
    let mut c = Client::connect(m.proxy.outbound).await;

    // A 90/10 split holds within 4 points over 1,000 requests (binomial
    // standard deviation: 0.95 points).
    let v2 = v2_share(&mut c, 1000).await;
    assert!((60..=140).contains(&v2), "web-v2 served {v2} of 1000");
    assert_eq!(backend_requests(&m.proxy, "web-v2") as usize, v2);
    assert_eq!(backend_requests(&m.proxy, "web-v1") as usize, 1000 - v2);

    // The header canary always goes to v2.
    for _ in 0..20 {
        let a = c.get(WEB, "/", "x-canary: 1\r\n").await.unwrap();
        assert!(a.body.starts_with("web-v2"), "{}", a.body);
    }
    // A header value that is not the canary's takes the split.
    let a = c
        .get(WEB, "/", "x-canary: 1 \r\nx-canary-x: 1\r\n")
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // Redirects: the matched prefix replaced, the query kept, no backend asked.
    let a = c.web("/old/page?q=1").await;
    assert_eq!(a.status, 301);
    assert_eq!(
        a.header("location"),
        Some("http://web.demo.svc.cluster.local/new/page?q=1")
    );

    // Request and response header filters.
    let a = c.web("/headers").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.trim(), "web-v1 x-route=headers");
    assert_eq!(a.header("x-served-by"), Some("weft"));
    // A client's own x-route is replaced, not kept beside it.
    let a = c.get(WEB, "/headers", "x-route: forged\r\n").await.unwrap();
    assert_eq!(a.body.trim(), "web-v1 x-route=headers");

    // The route's 300 ms request timeout: 504 from the proxy, well before
    // the replica's one second.
    let started = Instant::now();
    let a = c.web("/slow").await;
    assert_eq!(a.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        a.header("l5d-proxy-error")
            .is_some_and(|e| e.contains("timeout"))
    );

    // The rule's backendRequest timeout: each attempt gets 200 ms, and
    // the proxy answers 504 well before the replica's second.
    let started = Instant::now();
    let a = c.web("/backend-slow").await;
    assert_eq!(a.status, 504, "{:?}", a.headers);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    // The other match kinds: a regular expression on the whole path (a
    // longer path does not match it), a query parameter, a method.
    let a = c.web("/items/42").await;
    assert_eq!(a.body.trim(), "web-v2 x-route=regex");
    let a = c.web("/items/42/x").await;
    assert_ne!(
        a.body.trim(),
        "web-v2 x-route=regex",
        "regexes match whole paths"
    );
    let a = c.web("/anything?a=1&version=2").await;
    assert_eq!(a.body.trim(), "web-v2 x-route=query");
    let a = c.web("/anything?version=20").await;
    assert!(!a.body.contains("x-route=query"), "{}", a.body);
    let a = c.send("DELETE", WEB, "/anything", "").await.unwrap();
    assert_eq!(a.body.trim(), "web-v2 x-route=method");

    // A backend that names no Service: Linkerd's 500.
    let a = c.web("/missing").await;
    assert_eq!(a.status, 500);
    assert!(
        a.header("l5d-proxy-error")
            .is_some_and(|e| e.contains("Service not found")),
        "{:?}",
        a.headers
    );

    let statuses = |status: &str, error: &str| {
        m.proxy.metric(
            "outbound_http_route_request_statuses_total",
            &[
                ("parent_name", "web"),
                ("route_name", "web-routes"),
                ("http_status", status),
                ("error", error),
            ],
        )
    };
    assert_eq!(statuses("", "REQUEST_TIMEOUT"), 1.0);
    assert_eq!(statuses("", "RESPONSE_HEADERS_TIMEOUT"), 1.0);
    assert_eq!(statuses("301", ""), 1.0);
    assert!(statuses("200", "") >= 1027.0);
    let text = m.proxy.metrics();
    assert!(
        text.contains("outbound_http_route_request_duration_seconds_bucket{parent_group=\"core\",parent_kind=\"Service\",parent_namespace=\"demo\",parent_name=\"web\",parent_port=\"80\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_shift_under_load_and_survive_the_controller() {
    let mut m = mesh().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, v2_seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(m.proxy.outbound).await;
        let (stop, ok, v2_seen) = (stop.clone(), ok.clone(), v2_seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.get(WEB, "/", "").await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if a.body.starts_with("web-v2") {
                            v2_seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(a) => failures.push(format!("{} {}", a.status, a.body)),
                    Err(e) => {
                        failures.push(e.to_string());
                        c = Client::connect(c.proxy).await;
                    }
                }
            }
            failures
        }));
    }
    let wait_ok = |more: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + more;
            let deadline = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_ok(300).await;

    // All to v2: within a second every request goes there.
    m.destination.write("routes.yaml", &web_routes(0, 100));
    let edited = Instant::now();
    let mut probe = Client::connect(m.proxy.outbound).await;
    loop {
        if v2_share(&mut probe, 20).await == 20 {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(3),
            "weights did not shift"
        );
    }
    let shift = edited.elapsed();
    assert_eq!(v2_share(&mut probe, 200).await, 200);

    // The controller dies: the last policy keeps routing.
    m.destination.kill();
    wait_ok(300).await;
    assert_eq!(v2_share(&mut probe, 100).await, 100);
    // It comes back with different weights, and they apply.
    m.destination.write("routes.yaml", &web_routes(100, 0));
    m.destination.restart();
    let restarted = Instant::now();
    loop {
        if v2_share(&mut probe, 20).await == 0 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "the restarted controller's weights did not apply"
        );
    }
    wait_ok(100).await;

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "requests failed under load: {failures:?}"
    );
    eprintln!(
        "weights shifted within {shift:?}; {} requests under load, {} to web-v2",
        ok.load(Ordering::Relaxed),
        v2_seen.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_the_circuit_breaker_hide_a_failing_endpoint() {
    let m = mesh().await;
    let mut c = Client::connect(m.proxy.outbound).await;
    // One of flaky's two endpoints always fails: retries to the other make
    // every request succeed, and the circuit breaker soon stops sending
    // first attempts to it at all.
    for n in 0..200 {
        let a = c.get(FLAKY, "/", "").await.unwrap();
        assert_eq!(a.status, 200, "request {n}: {}", a.body);
        assert_eq!(a.body.trim(), "flaky-good x-route=");
    }
    let route = |name: &str| {
        m.proxy.metric(
            name,
            &[
                ("parent_name", "flaky"),
                ("route_kind", "default"),
                ("route_name", "http"),
            ],
        )
    };
    let retries = route("outbound_http_route_retry_requests_total");
    assert!(retries >= 1.0, "no retry was sent");
    assert_eq!(route("outbound_http_route_retry_successes_total"), retries);
    let failed_attempts = m.proxy.metric(
        "outbound_http_route_backend_response_statuses_total",
        &[("parent_name", "flaky"), ("http_status", "503")],
    );
    assert!(
        failed_attempts >= retries,
        "{failed_attempts} failed attempts, {retries} retries"
    );

    // A path that fails everywhere: the retries run out, and the client gets
    // the last 503, counted as the limit exceeded.
    let a = c.get(FLAKY, "/fail", "").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(
        route("outbound_http_route_retry_limit_exceeded_total") >= 1.0
            || route("outbound_http_route_retry_overflow_total") >= 1.0
    );

    // broken's only endpoint always fails and its circuit breaker opens after
    // three: the fourth request is refused by the proxy without reaching it.
    for n in 0..3 {
        let a = c.get(BROKEN, "/", "").await.unwrap();
        assert_eq!(a.status, 503);
        assert!(
            a.header("l5d-proxy-error").is_none(),
            "request {n}: {:?}",
            a.headers
        );
    }
    let a = c.get(BROKEN, "/", "").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(
        a.header("l5d-proxy-error")
            .is_some_and(|e| e.contains("ejected")),
        "{:?}",
        a.headers
    );
    // After the penalty (300 ms at first) one request probes the endpoint
    // again: it reaches the replica, fails, and the endpoint is ejected
    // once more, for longer.
    let ejected = Instant::now();
    let probe = loop {
        let a = c.get(BROKEN, "/", "").await.unwrap();
        if a.header("l5d-proxy-error").is_none() {
            break ejected.elapsed();
        }
        assert!(
            ejected.elapsed() < Duration::from_secs(3),
            "the ejected endpoint was never probed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        probe >= Duration::from_millis(250),
        "probed after {probe:?}"
    );
    let a = c.get(BROKEN, "/", "").await.unwrap();
    assert!(
        a.header("l5d-proxy-error")
            .is_some_and(|e| e.contains("ejected")),
        "a failed probe ejects again: {:?}",
        a.headers
    );
    // A route's own breaker, on a Service without one: two failures, then
    // the proxy refuses.
    const SHAKY: &str = "shaky.demo.svc.cluster.local";
    for n in 0..2 {
        let a = c.get(SHAKY, "/", "").await.unwrap();
        assert_eq!(a.status, 503);
        assert!(
            a.header("l5d-proxy-error").is_none(),
            "request {n}: {:?}",
            a.headers
        );
    }
    let a = c.get(SHAKY, "/", "").await.unwrap();
    assert!(
        a.header("l5d-proxy-error")
            .is_some_and(|e| e.contains("ejected")),
        "the route's breaker opened: {:?}",
        a.headers
    );
    // Without the annotation there is no circuit breaker (as in Linkerd):
    // web's failing path reaches the replica every time.
    for _ in 0..10 {
        let a = c.web("/fail").await;
        assert_eq!(a.status, 503);
        assert!(a.header("l5d-proxy-error").is_none(), "{:?}", a.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_with_routes_takes_precedence_and_bad_policies_keep_the_last_good_one() {
    let m = mesh().await;
    let mut c = Client::connect(m.proxy.outbound).await;
    assert_eq!(c.web("/old/x").await.status, 301);
    // A broken route file is a manifest problem; the served routes stay.
    m.destination.write("routes.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web-routes, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.destination.log().contains("routes.yaml") {
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.web("/old/x").await.status, 301, "{}", m.destination.log());
    // A ServiceProfile with routes for web: the proxy routes by the profile
    // (to web's own endpoints, which it has none of) instead of the policy.
    m.destination.write(
        "profile.yaml",
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local, namespace: demo}\nspec:\n  routes:\n  - name: everything\n    condition: {pathRegex: \".*\"}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = c.web("/old/x").await;
        if a.status != 301 {
            assert_eq!(a.status, 503, "{}", a.body);
            break;
        }
        assert!(Instant::now() < deadline, "the profile did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// echo (two Echo servers behind echo and echo-v2) and its GRPCRoute:
/// `Chat` calls to v2, a header canary to v2, a missing backend, and the
/// rest split 1:1, with retries of UNAVAILABLE.
async fn grpc_mesh() -> (Destination, Proxy, Vec<tokio::task::JoinHandle<()>>) {
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        servers.push(tokio::spawn(async move {
            let _ = weft_testkit::grpc::serve(listener).await;
        }));
    }
    let routes = "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: echo-routes
  namespace: demo
  annotations: {retry.linkerd.io/grpc: unavailable, retry.linkerd.io/limit: \"2\"}
spec:
  parentRefs: [{kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{method: {service: weft.testkit.Echo, method: Chat}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{headers: [{name: x-canary, value: \"1\"}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: l5d-client-id, value: canary}]}
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{method: {method: Unary}, headers: [{name: x-missing, value: \"1\"}]}]
    backendRefs: [{name: echo-v9, port: 80}]
  - backendRefs:
    - {name: echo, port: 80, weight: 1}
    - {name: echo-v2, port: 80, weight: 1}
";
    let files = [
        ("echo.yaml", service("echo", "")),
        ("echo-v2.yaml", service("echo-v2", "")),
        ("echo-0.yaml", workload("echo-0", "echo", addrs[0])),
        ("echo-v2-0.yaml", workload("echo-v2-0", "echo-v2", addrs[1])),
        ("routes.yaml", routes.to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let destination = Destination::start(&files);
    let proxy = following(&destination);
    (destination, proxy, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_match_methods_split_retry_and_count_grpc_statuses() {
    use weft_testkit::pb::{EchoRequest, echo_client::EchoClient};
    let (_destination, proxy, _servers) = grpc_mesh().await;
    // A gRPC client pointed at the proxy, its :authority naming the Service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .unwrap()
        .origin("http://echo.demo.svc.cluster.local:80".parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy");
    let mut client = EchoClient::new(channel);
    let unary = |message: &str, fail: u32| {
        tonic::Request::new(EchoRequest {
            message: message.to_string(),
            fail_with_code: fail,
            ..Default::default()
        })
    };
    let backend = |name: &str| {
        proxy.metric(
            "outbound_grpc_route_backend_requests_total",
            &[
                ("route_kind", "GRPCRoute"),
                ("route_name", "echo-routes"),
                ("backend_name", name),
            ],
        )
    };

    // The split rule: 1:1 over 400 calls (standard deviation 10 calls).
    // Every call is replayable (the route retries), and none needs a
    // retry: the replayed bodies must not send the empty DATA frames that
    // make an HTTP/2 server close the shared connection after 100.
    for i in 0..400 {
        let reply = client.unary(unary(&format!("m{i}"), 0)).await;
        assert_eq!(
            reply.expect("unary call").into_inner().message,
            format!("m{i}")
        );
    }
    let (v1, v2) = (backend("echo"), backend("echo-v2"));
    assert_eq!(v1 + v2, 400.0, "{}", proxy.metrics());
    assert!((150.0..=250.0).contains(&v2), "echo-v2 took {v2} of 400");

    // Chat (a streaming method) always goes to v2.
    let before = backend("echo-v2");
    let outbound = tokio_stream::iter((0..3).map(|i| EchoRequest {
        message: format!("chat {i}"),
        ..Default::default()
    }));
    let mut replies = client.chat(outbound).await.expect("chat").into_inner();
    let mut n = 0;
    while let Some(r) = tokio_stream::StreamExt::next(&mut replies).await {
        assert_eq!(r.expect("chat reply").message, format!("chat {n}"));
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(backend("echo-v2"), before + 1.0);

    // The header canary: to v2, with the rule's header filter applied.
    let mut req = unary("canary", 0);
    req.metadata_mut().insert("x-canary", "1".parse().unwrap());
    let reply = client.unary(req).await.expect("canary call").into_inner();
    assert_eq!(reply.client_id, "canary", "the request header filter ran");
    assert_eq!(backend("echo-v2"), before + 2.0);

    // A backend that names no Service: UNAVAILABLE from the proxy.
    let mut req = unary("missing", 0);
    req.metadata_mut().insert("x-missing", "1".parse().unwrap());
    let status = client.unary(req).await.expect_err("a missing backend");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("Service not found"), "{status:?}");

    // UNAVAILABLE from the server is retried twice, then given to the
    // client; NOT_FOUND is not retried. Both are counted by grpc-status,
    // though the HTTP status of every one of them is 200.
    let status = client
        .unary(unary("down", 14))
        .await
        .expect_err("unavailable");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let status = client.unary(unary("gone", 5)).await.expect_err("not found");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let route = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("parent_name", "echo"), ("route_name", "echo-routes")];
        labels.extend_from_slice(extra);
        proxy.metric(name, &labels)
    };
    assert_eq!(route("outbound_grpc_route_retry_requests_total", &[]), 2.0);
    assert_eq!(
        route("outbound_grpc_route_retry_limit_exceeded_total", &[]),
        1.0
    );
    let statuses = |code: &str| {
        route(
            "outbound_grpc_route_request_statuses_total",
            &[("grpc_status", code), ("error", "")],
        )
    };
    assert_eq!(
        statuses("0"),
        402.0,
        "400 unary calls, the chat, the canary"
    );
    assert_eq!(
        statuses("14"),
        2.0,
        "the server's and the missing backend's"
    );
    assert_eq!(statuses("5"), 1.0);
    assert_eq!(
        proxy.metric(
            "outbound_http_route_request_statuses_total",
            &[("parent_name", "echo")]
        ),
        0.0,
        "gRPC routes are counted in the gRPC families only"
    );
}

/// A network namespace that plays the internet: two addresses outside the
/// cluster networks (198.19.250.2 and .3) behind a veth from the host
/// (198.19.250.1), so the proxy on the host reaches them as it would reach
/// any outside address. Removed on drop.
struct Internet {
    ns: String,
}

/// The host's end of the veth to the internet namespace.
const HOST: &str = "198.19.250.1";

impl Internet {
    const ADDRS: [&'static str; 2] = ["198.19.250.2", "198.19.250.3"];

    /// `Err` with the reason when this machine cannot make one.
    fn create() -> Result<Internet, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to create a network namespace".into());
        }
        let id = std::process::id() % 100_000;
        let internet = Internet {
            ns: format!("wtr-inet-{id}"),
        };
        let (host_end, ns_end) = (format!("wti{id}h"), format!("wti{id}n"));
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("no ip command (apt-get install iproute2): {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &internet.ns])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
        ])?;
        ip(&["link", "set", &ns_end, "netns", &internet.ns])?;
        ip(&["addr", "add", &format!("{HOST}/29"), "dev", &host_end])?;
        ip(&["link", "set", &host_end, "up"])?;
        for addr in Self::ADDRS {
            ip(&[
                "-n",
                &internet.ns,
                "addr",
                "add",
                &format!("{addr}/29"),
                "dev",
                &ns_end,
            ])?;
        }
        ip(&["-n", &internet.ns, "link", "set", &ns_end, "up"])?;
        ip(&["-n", &internet.ns, "link", "set", "lo", "up"])?;
        Ok(internet)
    }

    /// A replica named `name` at `addr` inside.
    async fn replica(&self, name: &'static str, addr: &str) -> Replica {
        let at: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let listener = weft_testkit::netns::bind(&self.ns, at).expect("binding in the namespace");
        serve_replica(TcpListener::from_std(listener).unwrap(), name, false)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_networks_deny_what_no_route_lets_out_and_allow_the_rest() {
    let internet = match Internet::create() {
        Ok(i) => i,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let [outside_ip, partner_ip] = Internet::ADDRS;
    let outside = internet.replica("outside", outside_ip).await;
    let partner = internet.replica("partner", partner_ip).await;
    // The demo namespace's own EgressNetwork denies all of 198.18.0.0/15;
    // the global one allows one address, and being more specific it wins.
    let egress = format!(
        "apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {{name: internet, namespace: demo}}
spec:
  networks: [{{cidr: 198.18.0.0/15}}]
  trafficPolicy: Deny
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {{name: partners, namespace: linkerd-egress}}
spec:
  networks: [{{cidr: {partner_ip}/32}}]
  trafficPolicy: Allow
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: let-get-out, namespace: demo}}
spec:
  parentRefs: [{{group: policy.linkerd.io, kind: EgressNetwork, name: internet}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /allowed}}, method: GET}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: egress}}]}}
"
    );
    // The cluster is 10.0.0.0/8 here: the namespace's addresses are outside.
    let destination = Destination::start_args(
        &[("egress.yaml", &egress)],
        &["--cluster-networks", "10.0.0.0/8"],
    );
    let proxy = following(&destination);
    let mut c = Client::connect(proxy.outbound).await;
    let host = outside.addr.to_string();
    // The attached route lets GET /allowed out, its filter applied.
    let a = c.get(&host, "/allowed/page", "").await.unwrap();
    assert_eq!(a.status, 200, "{:?} {}", a.headers, a.body);
    assert_eq!(a.body.trim(), "outside x-route=egress");
    let reached = outside.requests.load(Ordering::Relaxed);
    // Everything else is denied by the proxy, never reaching the address.
    for path in ["/", "/allowedx", "/secret"] {
        let a = c.get(&host, path, "").await.unwrap();
        assert_eq!(a.status, 403, "{path}: {}", a.body);
        assert!(
            a.header("l5d-proxy-error")
                .is_some_and(|e| e.contains("traffic not allowed")),
            "{path}: {:?}",
            a.headers
        );
    }
    assert_eq!(
        outside.requests.load(Ordering::Relaxed),
        reached,
        "a denied request reached the outside server"
    );
    let denied = proxy.metric(
        "outbound_http_route_request_statuses_total",
        &[
            ("parent_kind", "EgressNetwork"),
            ("parent_name", "internet"),
            ("route_name", "http-egress-deny"),
            ("http_status", "403"),
        ],
    );
    assert_eq!(denied, 3.0);
    // The global namespace's Allow network, more specific, lets all out.
    let a = c
        .get(&partner.addr.to_string(), "/secret", "")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?} {}", a.headers, a.body);
    assert_eq!(a.body.trim(), "partner x-route=");
    let allowed = proxy.metric(
        "outbound_http_route_request_statuses_total",
        &[
            ("parent_kind", "EgressNetwork"),
            ("parent_namespace", "linkerd-egress"),
            ("parent_name", "partners"),
            ("route_name", "http-egress-allow"),
            ("http_status", "200"),
        ],
    );
    assert_eq!(allowed, 1.0);

    // Opaque traffic (an explicit-proxy CONNECT tunnel) takes the opaque
    // route: refused toward the denied network, counted as forbidden; let
    // through to the allowed one, where bytes cross the tunnel.
    let connect = |target: String| {
        let proxy = proxy.outbound;
        async move {
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut s = BufReader::new(s);
            let mut status = String::new();
            s.read_line(&mut status).await.unwrap();
            loop {
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            (status, s)
        }
    };
    let (status, _) = connect(outside.addr.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status:?}");
    assert_eq!(outside.requests.load(Ordering::Relaxed), reached);
    let (status, mut tunnel) = connect(partner.addr.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    tunnel
        .get_mut()
        .write_all(b"GET /through HTTP/1.1\r\nHost: partner\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tunnel.read_line(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop(tunnel);
    let tcp = |route: &str, error: &str| {
        proxy.metric(
            "outbound_tcp_route_close_total",
            &[
                ("parent_kind", "EgressNetwork"),
                ("route_name", route),
                ("error", error),
            ],
        )
    };
    assert_eq!(tcp("tcp-egress-deny", "forbidden"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp("tcp-egress-allow", "") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the tunnel's end was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.metric(
            "outbound_tcp_route_open_total",
            &[("parent_kind", "EgressNetwork")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_rate_limit_caps_what_this_proxy_sends_and_says_so() {
    let m = mesh().await;
    let host = "limited.demo.svc.cluster.local";
    let mut c = Client::connect(m.proxy.outbound).await;
    // Two seconds of requests as fast as one client sends them: the bucket
    // holds one second (20) and refills at 20/s, so 20 + 20/s pass, within
    // 10%; every other request is refused by the proxy, naming the limit.
    let started = Instant::now();
    let (mut ok, mut limited_count) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(2) {
        let a = c.get(host, "/", "").await.unwrap();
        match a.status {
            200 => ok += 1,
            429 => {
                limited_count += 1;
                assert!(
                    a.header("l5d-proxy-error")
                        .is_some_and(|e| e.contains("outbound rate limit of 20")),
                    "{:?}",
                    a.headers
                );
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    let expected = 20.0 + 20.0 * started.elapsed().as_secs_f64();
    assert!(
        (0.9 * expected..=1.1 * expected).contains(&f64::from(ok)),
        "{ok} passed in {:?}, expected {expected:.0}",
        started.elapsed()
    );
    assert!(limited_count >= 100, "only {limited_count} limited");
    let refused = m.proxy.metric(
        "outbound_http_route_request_statuses_total",
        &[("parent_name", "limited"), ("http_status", "429")],
    );
    assert_eq!(refused, f64::from(limited_count));
    // The limit is this proxy's for limited only: web is not limited.
    for _ in 0..100 {
        assert_eq!(c.web("/").await.status, 200);
    }
    // Raised by an edit: the burst passes.
    // A Service created after a client first asked for it gets its policy
    // within seconds: the proxy asks again about a target that was not one.
    let late = "late.demo.svc.cluster.local";
    let first = c.get(late, "/", "").await.unwrap();
    assert_ne!(first.status, 200, "late does not exist yet");
    m.destination.write(
        "late.yaml",
        &format!(
            "{}---\n{}",
            service("late", "weft.io/outbound-rate-limit: \"1\""),
            workload("late-0", "late", m.limited)
        ),
    );
    let created = Instant::now();
    while c.get(late, "/", "").await.unwrap().status != 429 {
        assert!(
            created.elapsed() < Duration::from_secs(8),
            "late's policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a new Service's policy applied after {:?}",
        created.elapsed()
    );
    m.destination
        .write("limited.yaml", &limited_service(100_000, m.limited));
    let edited = Instant::now();
    loop {
        let mut all = true;
        for _ in 0..50 {
            all &= c.get(host, "/", "").await.unwrap().status == 200;
        }
        if all {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(5),
            "the raised limit did not apply"
        );
    }
}
