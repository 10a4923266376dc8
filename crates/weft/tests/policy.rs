//! `weft control destination` serves Linkerd's inbound policy API: driven
//! with tonic exactly as linkerd2-proxy drives it (the workload as JSON, a
//! port), the answers follow the proto's contract, and edits reach watchers.

mod support;

use std::time::{Duration, Instant};

use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::proxy_protocol::Kind;
use support::Destination;

const POLICY: &str = include_str!("../../../fuzz/seeds/manifests/policy.yaml");

const VOTING: &str = "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: voting-0, namespace: demo, labels: {app: voting-svc}}
spec:
  ports: [{name: grpc, port: 8080}]
  workloadIPs: [{ip: 198.18.3.4}]
";

async fn client(d: &Destination) -> InboundServerPoliciesClient<tonic::transport::Channel> {
    InboundServerPoliciesClient::connect(format!("http://{}", d.addr))
        .await
        .unwrap()
}

/// The port spec linkerd2-proxy sends for a pod.
fn voting(port: u32) -> api::PortSpec {
    api::PortSpec {
        workload: r#"{"ns":"demo","pod":"voting-0"}"#.into(),
        port,
    }
}

fn authz_names(server: &api::Server) -> Vec<String> {
    server
        .authorizations
        .iter()
        .map(|a| a.labels["name"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_port_streams_the_servers_policy_and_its_edits() {
    let d = Destination::start(&[("policy.yaml", POLICY), ("voting-0.yaml", VOTING)]);
    let mut c = client(&d).await;
    let mut stream = c.watch_port(voting(8080)).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a first message")
        .unwrap()
        .unwrap();
    assert_eq!(first.labels["group"], "policy.linkerd.io");
    assert_eq!(first.labels["kind"], "server");
    assert_eq!(first.labels["name"], "voting-grpc");
    assert_eq!(authz_names(&first), ["demo-reads"]);
    // Every authorization has networks and an authentication, as the proto asks.
    for a in &first.authorizations {
        assert!(
            !a.networks.is_empty() && a.authentication.is_some(),
            "{a:?}"
        );
        assert!(a.metadata.is_some());
    }
    let Some(Kind::Http2(http2)) = first.protocol.and_then(|p| p.kind) else {
        panic!("the gRPC Server is HTTP/2 with routes")
    };
    assert_eq!(http2.routes.len(), 2);
    for r in &http2.routes {
        assert!(!r.rules.is_empty(), "a route has at least one rule: {r:?}");
    }

    // An edit: the Server now admits every meshed client by default.
    let edited = POLICY.replacen("accessPolicy: deny", "accessPolicy: all-authenticated", 1);
    let edited_at = Instant::now();
    d.write("policy.yaml", &edited);
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update after the edit")
        .unwrap()
        .unwrap();
    assert_eq!(authz_names(&next), ["demo-reads", "all-authenticated"]);
    assert!(
        edited_at.elapsed() < Duration::from_secs(2),
        "the edit arrived after {:?}",
        edited_at.elapsed()
    );

    // A broken edit keeps the last good policy: no message, the stream stays.
    d.write("policy.yaml", "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: voting-grpc, namespace: demo}\nspec: {port: 0}\n");
    let nothing = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
    assert!(
        nothing.is_err(),
        "a broken file changed the policy: {nothing:?}"
    );

    // The workload going away ends the watch with NotFound.
    d.remove("voting-0.yaml");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_port_answers_defaults_and_refuses_what_is_not_a_workload_port() {
    let d = Destination::start(&[("voting-0.yaml", VOTING)]);
    let mut c = client(&d).await;
    // No Server: the mesh's default policy, Linkerd's labels.
    let server = c.get_port(voting(8080)).await.unwrap().into_inner();
    assert_eq!(server.labels["kind"], "default");
    assert_eq!(server.labels["name"], "all-unauthenticated");
    assert!(matches!(
        server.protocol.and_then(|p| p.kind),
        Some(Kind::Detect(api::proxy_protocol::Detect {
            timeout: Some(_),
            ..
        }))
    ));
    // The older `ns:pod` form names the same workload.
    let old = api::PortSpec {
        workload: "demo:voting-0".into(),
        port: 8080,
    };
    assert_eq!(
        c.get_port(old).await.unwrap().into_inner().labels["kind"],
        "default"
    );

    let base = c.clone();
    let refused = |spec: api::PortSpec| {
        let mut c = base.clone();
        async move { c.get_port(spec).await.unwrap_err().code() }
    };
    assert_eq!(refused(voting(0)).await, tonic::Code::InvalidArgument);
    assert_eq!(refused(voting(70000)).await, tonic::Code::InvalidArgument);
    let unknown = api::PortSpec {
        workload: r#"{"ns":"demo","pod":"nobody"}"#.into(),
        port: 8080,
    };
    assert_eq!(refused(unknown.clone()).await, tonic::Code::NotFound);
    assert_eq!(
        c.watch_port(unknown).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let garbage = api::PortSpec {
        workload: "{\"ns\":".into(),
        port: 8080,
    };
    assert_eq!(refused(garbage).await, tonic::Code::InvalidArgument);
}

/// The application behind the proxy: weft-testkit's HTTP server.
async fn spawn_app() -> std::net::SocketAddr {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(weft_testkit::http::serve(app));
    addr
}

/// A Server on the app's port that admits nothing by default, and a route
/// (`GET /hello`) that clients on loopback may take.
fn app_policy(port: u16, with_authorization: bool) -> String {
    let mut text = format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {{name: app-0, namespace: demo, labels: {{app: app}}}}
spec:
  ports: [{{name: http, port: {port}}}]
  workloadIPs: [{{ip: 127.0.0.1}}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: app-http, namespace: demo}}
spec:
  externalWorkloadSelector: {{matchLabels: {{app: app}}}}
  port: {port}
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: hello, namespace: demo}}
spec:
  parentRefs: [{{group: policy.linkerd.io, kind: Server, name: app-http}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /hello}}, method: GET}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: loopback, namespace: demo}}
spec:
  networks: [{{cidr: 127.0.0.0/8}}]
"
    );
    if with_authorization {
        text.push_str(
            "---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: hello-from-loopback, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: hello}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: loopback}
",
        );
    }
    text
}

async fn status(url: &str) -> (u16, String) {
    weft_testkit::curl::Curl::new(["-i", url])
        .max_time(10)
        .output()
        .await
        .stdout
        .split_once(' ')
        .map(|(_, rest)| {
            let code = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            (code, rest.to_string())
        })
        .unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_enforces_the_policy_it_watches_per_route_and_follows_edits() {
    let app = spawn_app().await;
    let d = Destination::start(&[("app.yaml", &app_policy(app.port(), true))]);
    let proxy = weft_testkit::proxy::Proxy::builder(support::proxy_bin())
        .env("WEFT_PROXY_INBOUND_FORWARD_ADDR", app.to_string())
        .env("WEFT_PROXY_POLICY_SVC_ADDR", d.addr.to_string())
        .env(
            "WEFT_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"demo","pod":"app-0"}"#,
        )
        // Until the controller answers, nothing gets in.
        .env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "deny")
        .log_filter("warn,weft_proxy=debug")
        .start();
    let base = format!("http://{}", proxy.inbound);

    let (code, text) = status(&format!("{base}/hello")).await;
    assert_eq!(code, 200, "{text}");
    // Another path has no route: 404, named by the proxy.
    let (code, text) = status(&format!("{base}/headers")).await;
    assert_eq!(code, 404, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("l5d-proxy-error: no route"),
        "{text}"
    );
    let allowed = [
        ("srv_name", "app-http"),
        ("route_name", "hello"),
        ("authz_name", "hello-from-loopback"),
        ("authz_kind", "authorizationpolicy"),
    ];
    assert_eq!(
        proxy.metric("inbound_http_authz_allow_total", &allowed),
        1.0
    );

    // The authorization goes away: the route is denied within a second or two.
    d.write("app.yaml", &app_policy(app.port(), false));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (code, text) = status(&format!("{base}/hello")).await;
        if code == 403 {
            break text;
        }
        assert_eq!(code, 200, "{text}");
        assert!(
            std::time::Instant::now() < deadline,
            "still allowed after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("unauthorized request on route hello"),
        "{text}"
    );
    assert!(
        proxy.metric(
            "inbound_http_authz_deny_total",
            &[("srv_name", "app-http"), ("route_name", "hello")]
        ) >= 1.0
    );
}
