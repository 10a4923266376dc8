//! `io.linkerd.proxy.outbound.OutboundPolicies` as linkerd2-proxy drives it:
//! a tonic client sends `TrafficSpec`s (a Service's cluster IP and port, or
//! an authority) to a real `weft control destination`, and every message
//! is checked field by field against the proto's contract.

mod support;

use std::time::Duration;

use linkerd2_proxy_api::meta::metadata::Kind as MetaKind;
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::outbound as api;
use linkerd2_proxy_api::outbound::outbound_policies_client::OutboundPoliciesClient;
use linkerd2_proxy_api::outbound::proxy_protocol::Kind;
use support::Destination;

const SERVICES: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations:
    balancer.linkerd.io/failure-accrual: consecutive
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\"
spec:
  clusterIP: 198.18.100.1
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: emoji, namespace: demo}
spec:
  clusterIP: 198.18.100.4
  ports: [{name: grpc, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: emoji-v1, namespace: demo}
spec:
  clusterIP: 198.18.100.2
  ports: [{name: grpc, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: emoji-v2, namespace: demo}
spec:
  clusterIP: 198.18.100.3
  ports: [{name: grpc, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo, annotations: {config.linkerd.io/opaque-ports: \"5432\"}}
spec:
  clusterIP: 198.18.100.5
  ports: [{name: pg, port: 5432}]
";

fn split_route(v1_weight: u32, v2_weight: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: emoji-split
  namespace: demo
  annotations: {{retry.linkerd.io/http: gateway-error, retry.linkerd.io/limit: \"2\"}}
spec:
  parentRefs: [{{kind: Service, name: emoji, port: 8080}}]
  hostnames: [\"*.demo.svc.cluster.local\"]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: \"1\"}}]}}]
    backendRefs: [{{name: emoji-v2, port: 8080}}]
  - backendRefs:
    - {{name: emoji-v1, port: 8080, weight: {v1_weight}}}
    - {{name: emoji-v2, port: 8080, weight: {v2_weight}}}
    - {{name: emoji-v3, port: 8080, weight: 0}}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: split}}]}}
    timeouts: {{request: 2s, backendRequest: 1s}}
"
    )
}

/// The cluster's networks are 198.18.0.0/16 here: 198.19.x is outside.
fn start() -> Destination {
    Destination::start_args(
        &[
            ("services.yaml", SERVICES),
            ("route.yaml", &split_route(90, 10)),
        ],
        &["--cluster-networks", "198.18.0.0/16"],
    )
}

async fn client(d: &Destination) -> OutboundPoliciesClient<tonic::transport::Channel> {
    OutboundPoliciesClient::connect(format!("http://{}", d.addr))
        .await
        .unwrap()
}

/// The spec linkerd2-proxy sends for a connection to `addr`.
fn to_addr(addr: &str) -> api::TrafficSpec {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    api::TrafficSpec {
        source_workload: r#"{"ns":"demo","pod":"web-0"}"#.into(),
        target: Some(api::traffic_spec::Target::Addr(TcpAddress::from(addr))),
    }
}

fn to_authority(authority: &str) -> api::TrafficSpec {
    api::TrafficSpec {
        source_workload: "demo:web-0".into(),
        target: Some(api::traffic_spec::Target::Authority(authority.into())),
    }
}

fn resource(m: &Option<linkerd2_proxy_api::meta::Metadata>) -> (String, String, String, u32) {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(MetaKind::Resource(r)) => (r.group.clone(), r.kind.clone(), r.name.clone(), r.port),
        other => panic!("not a resource: {other:?}"),
    }
}

fn default_name(m: &Option<linkerd2_proxy_api::meta::Metadata>) -> String {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(MetaKind::Default(name)) => name.clone(),
        other => panic!("not a default: {other:?}"),
    }
}

/// The HTTP/1 routes of a detected protocol (checking the rest of it): its
/// opaque fallback route is named `opaque`.
fn http1_with<'a>(policy: &'a api::OutboundPolicy, opaque: &str) -> &'a api::proxy_protocol::Http1 {
    match policy.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => {
            assert_eq!(
                d.timeout.map(|t| Duration::try_from(t).unwrap()),
                Some(Duration::from_secs(10))
            );
            let fallback = d
                .opaque
                .as_ref()
                .expect("detect carries the opaque fallback");
            assert_eq!(fallback.routes.len(), 1);
            assert_eq!(default_name(&fallback.routes[0].metadata), opaque);
            let (h1, h2) = (d.http1.as_ref().unwrap(), d.http2.as_ref().unwrap());
            assert_eq!(h1.routes, h2.routes, "HTTP/1 and HTTP/2 share the routes");
            h1
        }
        other => panic!("not detect: {other:?}"),
    }
}

fn http1(policy: &api::OutboundPolicy) -> &api::proxy_protocol::Http1 {
    http1_with(policy, "opaq")
}

/// The balanced backend a route sends to: (its Service, its discovery path).
fn balanced(b: &api::Backend) -> (String, String) {
    let queue = b.queue.as_ref().expect("every backend has a queue");
    assert_eq!(queue.capacity, 100);
    match b.kind.as_ref() {
        Some(api::backend::Kind::Balancer(p2c)) => {
            assert!(matches!(
                p2c.load,
                Some(api::backend::balance_p2c::Load::PeakEwma(_))
            ));
            let path = match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(api::backend::endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
                None => panic!("a balancer without discovery"),
            };
            (resource(&b.metadata).2, path)
        }
        other => panic!("not a balancer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_routes_gets_the_default_route_and_its_circuit_breaker() {
    let d = start();
    let mut c = client(&d).await;
    let policy = c
        .get(to_addr("198.18.100.1:80"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resource(&policy.metadata),
        ("core".into(), "Service".into(), "web".into(), 80)
    );
    let h1 = http1(&policy);
    assert_eq!(h1.routes.len(), 1);
    let route = &h1.routes[0];
    assert_eq!(default_name(&route.metadata), "http");
    let rule = &route.rules[0];
    assert_eq!(rule.matches.len(), 1, "one match: every path");
    let backend = match rule.backends.as_ref().and_then(|b| b.kind.as_ref()) {
        Some(api::http_route::distribution::Kind::FirstAvailable(f)) => {
            f.backends[0].backend.as_ref().unwrap().clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        balanced(&backend),
        ("web".into(), "web.demo.svc.cluster.local:80".into())
    );
    match h1.failure_accrual.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(api::failure_accrual::Kind::ConsecutiveFailures(c)) => {
            assert_eq!(c.max_failures, 3);
            let backoff = c.backoff.as_ref().expect("the proto requires a backoff");
            assert_eq!(
                backoff.min_backoff.map(|d| Duration::try_from(d).unwrap()),
                Some(Duration::from_secs(1))
            );
        }
        other => panic!("no circuit breaker: {other:?}"),
    }

    // The same Service by authority: the same answer.
    let by_name = c
        .get(to_authority("web.demo.svc.cluster.local:80"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name, policy);

    // An opaque port: opaque routes only.
    let db = c
        .get(to_addr("198.18.100.5:5432"))
        .await
        .unwrap()
        .into_inner();
    match db.protocol.and_then(|p| p.kind) {
        Some(Kind::Opaque(o)) => assert_eq!(default_name(&o.routes[0].metadata), "opaq"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_splits_filters_times_out_and_retries_and_edits_stream() {
    let d = start();
    let mut c = client(&d).await;
    let mut stream = c
        .watch(to_addr("198.18.100.4:8080"))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let h1 = http1(&first);
    assert_eq!(h1.routes.len(), 1);
    let route = &h1.routes[0];
    let (_, kind, name, _) = resource(&route.metadata);
    assert_eq!((kind.as_str(), name.as_str()), ("HTTPRoute", "emoji-split"));
    assert_eq!(route.hosts.len(), 1, "the hostname wildcard");
    assert_eq!(route.rules.len(), 2);
    // The canary rule: a header match, to v2 only.
    let canary = &route.rules[0];
    assert_eq!(canary.matches[0].headers[0].name, "x-canary");
    let weights = |rule: &api::http_route::Rule| -> Vec<(String, u32)> {
        match rule.backends.as_ref().and_then(|b| b.kind.as_ref()) {
            Some(api::http_route::distribution::Kind::RandomAvailable(r)) => r
                .backends
                .iter()
                .map(|w| {
                    let rb = w.backend.as_ref().unwrap();
                    let b = rb.backend.as_ref().unwrap();
                    let name = match b.kind {
                        Some(_) => balanced(b).0,
                        // A backend that does not exist answers 500, naming it.
                        None => match rb.filters[0].kind.as_ref() {
                            Some(api::http_route::filter::Kind::FailureInjector(f)) => {
                                assert_eq!(f.status, 500);
                                f.message.clone()
                            }
                            other => panic!("{other:?}"),
                        },
                    };
                    (name, w.weight)
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(weights(canary), [("emoji-v2".to_string(), 1)]);
    let split = &route.rules[1];
    assert_eq!(
        weights(split),
        [
            ("emoji-v1".to_string(), 90),
            ("emoji-v2".to_string(), 10),
            ("Service not found demo/emoji-v3:8080".to_string(), 0)
        ]
    );
    assert!(matches!(
        split.filters[0].kind,
        Some(api::http_route::filter::Kind::RequestHeaderModifier(_))
    ));
    let timeouts = split.timeouts.as_ref().unwrap();
    let secs = |d: Option<prost_types::Duration>| d.map(|d| Duration::try_from(d).unwrap());
    assert_eq!(secs(timeouts.request), Some(Duration::from_secs(2)));
    assert_eq!(secs(timeouts.response), Some(Duration::from_secs(1)));
    let retry = split.retry.as_ref().expect("the route's retry annotation");
    assert_eq!(retry.max_retries, 2);
    let ranges = &retry.conditions.as_ref().unwrap().status_ranges;
    assert_eq!((ranges[0].start, ranges[0].end), (502, 504));

    // Shifting the weights streams a new policy within a second or so.
    d.write("route.yaml", &split_route(50, 50));
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update after the edit")
        .unwrap()
        .unwrap();
    assert_eq!(
        weights(&http1(&next).routes[0].rules[1])[..2],
        [("emoji-v1".to_string(), 50), ("emoji-v2".to_string(), 50)]
    );

    // The route removed: the default route again.
    d.remove("route.yaml");
    let after = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update after the removal")
        .unwrap()
        .unwrap();
    assert_eq!(default_name(&http1(&after).routes[0].metadata), "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_service_gets_linkerds_answers() {
    let d = start();
    let mut c = client(&d).await;
    // Outside the cluster networks: forwarded as addressed.
    let egress = c.get(to_addr("198.19.0.9:443")).await.unwrap().into_inner();
    assert_eq!(default_name(&egress.metadata), "egress-fallback");
    let h1 = http1_with(&egress, "egress-fallback");
    let backend = match h1.routes[0].rules[0]
        .backends
        .as_ref()
        .and_then(|b| b.kind.as_ref())
    {
        Some(api::http_route::distribution::Kind::FirstAvailable(f)) => {
            f.backends[0].backend.clone().unwrap()
        }
        other => panic!("{other:?}"),
    };
    match backend.kind {
        Some(api::backend::Kind::Forward(addr)) => {
            let addr = std::net::SocketAddr::try_from(addr.addr.unwrap()).unwrap();
            assert_eq!(addr.to_string(), "198.19.0.9:443");
        }
        other => panic!("{other:?}"),
    }
    // A port the Service does not define: refused.
    let undefined = c
        .get(to_addr("198.18.100.1:81"))
        .await
        .unwrap()
        .into_inner();
    match undefined.protocol.and_then(|p| p.kind) {
        Some(Kind::Opaque(o)) => {
            assert_eq!(default_name(&o.routes[0].metadata), "undefined-port");
            assert!(matches!(
                o.routes[0].rules[0].filters[0].kind,
                Some(api::opaque_route::filter::Kind::Forbidden(_))
            ));
        }
        other => panic!("{other:?}"),
    }
    // Inside the cluster networks but no Service: not found.
    let code = |r: Result<tonic::Response<api::OutboundPolicy>, tonic::Status>| {
        r.map(|_| ()).unwrap_err().code()
    };
    assert_eq!(
        code(c.get(to_addr("198.18.7.7:80")).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(c.get(to_authority("example.com:80")).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(c.get(to_authority("nope.demo.svc.cluster.local:80")).await),
        tonic::Code::NotFound
    );
    // Bad specs.
    let mut no_target = to_addr("198.18.100.1:80");
    no_target.target = None;
    assert_eq!(code(c.get(no_target).await), tonic::Code::InvalidArgument);
    assert_eq!(
        code(c.get(to_addr("198.18.100.1:0")).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(c.get(to_authority("web.demo.svc.cluster.local:http")).await),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcroute_takes_over_its_port_with_methods_retries_and_missing_backends() {
    let d = start();
    let mut c = client(&d).await;
    let mut stream = c
        .watch(to_authority("emoji.demo.svc.cluster.local:8080"))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert!(matches!(
        first.protocol.as_ref().and_then(|p| p.kind.as_ref()),
        Some(Kind::Detect(_))
    ));
    d.write(
        "grpc.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: emoji-grpc
  namespace: demo
  annotations: {retry.linkerd.io/grpc: \"unavailable,internal\", retry.linkerd.io/limit: \"3\", timeout.linkerd.io/request: 2s}
spec:
  parentRefs: [{kind: Service, name: emoji, port: 8080}]
  rules:
  - matches: [{method: {service: emojivoto.v1.EmojiService, method: ListAll}}]
    backendRefs: [{name: emoji-v2, port: 8080, weight: 3}, {name: emoji-v9, port: 8080}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-via, value: grpc}]}
",
    );
    let update = next(&mut stream).await;
    let grpc = match update.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Grpc(g)) => g,
        other => panic!("not gRPC: {other:?}"),
    };
    assert_eq!(grpc.routes.len(), 1, "the HTTPRoute no longer applies");
    let route = &grpc.routes[0];
    let (group, kind, name, _) = resource(&route.metadata);
    assert_eq!(
        (group.as_str(), kind.as_str(), name.as_str()),
        ("gateway.networking.k8s.io", "GRPCRoute", "emoji-grpc")
    );
    let list_all = &route.rules[0];
    let rpc = list_all.matches[0].rpc.as_ref().unwrap();
    assert_eq!(
        (rpc.service.as_str(), rpc.method.as_str()),
        ("emojivoto.v1.EmojiService", "ListAll")
    );
    let retry = list_all.retry.as_ref().unwrap();
    let conditions = retry.conditions.unwrap();
    assert_eq!(retry.max_retries, 3);
    assert!(conditions.unavailable && conditions.internal && !conditions.cancelled);
    let timeouts = list_all.timeouts.as_ref().unwrap();
    assert_eq!(
        timeouts.request,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 0
        })
    );
    match list_all.backends.as_ref().and_then(|b| b.kind.as_ref()) {
        Some(api::grpc_route::distribution::Kind::RandomAvailable(r)) => {
            assert_eq!(r.backends.len(), 2);
            assert_eq!(r.backends[0].weight, 3);
            let v2 = r.backends[0]
                .backend
                .as_ref()
                .unwrap()
                .backend
                .as_ref()
                .unwrap();
            assert_eq!(balanced(v2).0, "emoji-v2");
            let missing = r.backends[1].backend.as_ref().unwrap();
            match missing.filters[0].kind.as_ref() {
                Some(api::grpc_route::filter::Kind::FailureInjector(f)) => {
                    assert_eq!(f.code, 14, "UNAVAILABLE");
                    assert!(f.message.contains("emoji-v9"), "{}", f.message);
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    // The catch-all rule: every call, its header filter, the default backend.
    let rest = &route.rules[1];
    assert_eq!(rest.matches.len(), 1);
    assert!(rest.matches[0].rpc.is_none());
    assert!(matches!(
        rest.filters[0].kind,
        Some(api::grpc_route::filter::Kind::RequestHeaderModifier(_))
    ));
    // Removing the GRPCRoute gives the port back to its HTTPRoute.
    d.write("grpc.yaml", "");
    let back = next(&mut stream).await;
    assert_eq!(http1(&back).routes.len(), 1);
}

async fn next(stream: &mut tonic::Streaming<api::OutboundPolicy>) -> api::OutboundPolicy {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update within 5 s")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egressnetwork_answers_for_its_namespace_and_denies_opaque_traffic() {
    let d = start();
    d.write(
        "egress.yaml",
        "apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: internet, namespace: demo}
spec:
  networks: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
  trafficPolicy: Deny
",
    );
    let mut c = client(&d).await;
    let ask = |workload: &str, addr: &str| {
        let mut spec = to_addr(addr);
        spec.source_workload = workload.to_string();
        spec
    };
    // Wait for the file to be served: the answer for demo's client changes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let a = c
            .get(ask(r#"{"ns":"demo","pod":"web-0"}"#, "203.0.113.9:5432"))
            .await
            .unwrap()
            .into_inner();
        if resource_kind(&a.metadata) == Some("EgressNetwork".into()) {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "{a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (group, kind, name, port) = resource(&answer.metadata);
    assert_eq!(
        (group.as_str(), kind.as_str(), name.as_str(), port),
        ("policy.linkerd.io", "EgressNetwork", "internet", 5432)
    );
    let Some(Kind::Detect(detect)) = answer.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
        panic!("{answer:?}")
    };
    let opaque = &detect.opaque.as_ref().unwrap().routes[0];
    assert_eq!(default_name(&opaque.metadata), "tcp-egress-deny");
    assert!(matches!(
        opaque.rules[0].filters[0].kind,
        Some(api::opaque_route::filter::Kind::Forbidden(_))
    ));
    let http = &detect.http1.as_ref().unwrap().routes;
    assert_eq!(
        default_name(&http.last().unwrap().metadata),
        "http-egress-deny"
    );
    // Weft's own proxy names its workload `ns:pod`.
    let same = c
        .get(ask("demo:web-0", "203.0.113.9:80"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resource(&same.metadata).2, "internet");
    // Another namespace's client, an excepted address, a client that names
    // no namespace: Linkerd's egress fallback.
    for (workload, addr) in [
        (r#"{"ns":"other","pod":"x"}"#, "203.0.113.9:5432"),
        ("demo:web-0", "203.0.113.200:5432"),
        ("", "203.0.113.9:5432"),
    ] {
        let a = c.get(ask(workload, addr)).await.unwrap().into_inner();
        assert_eq!(
            default_name(&a.metadata),
            "egress-fallback",
            "{workload} {addr}"
        );
    }
}

fn resource_kind(m: &Option<linkerd2_proxy_api::meta::Metadata>) -> Option<String> {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(MetaKind::Resource(r)) => Some(r.kind.clone()),
        _ => None,
    }
}
