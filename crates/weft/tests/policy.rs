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
