//! Linkerd's policy manifests read as Linkerd users write them, and every
//! mistake in them named with its file, line and reason.

use std::path::Path;

use weft_api::{
    DefaultPolicy, IdentityMatch, PathMatchKind, ProxyProtocol, RefKind, ServerPort,
    parse_manifests,
};

const POLICY: &str = include_str!("../../../fuzz/seeds/manifests/policy.yaml");

#[test]
fn linkerd_policy_manifests_read_unchanged() {
    let (m, errors) = parse_manifests(Path::new("policy.yaml"), POLICY);
    assert_eq!(errors, vec![]);
    assert_eq!(m.servers.len(), 2);
    let voting = &m.servers[0].resource.spec;
    assert_eq!(voting.port, ServerPort::Name("grpc".into()));
    assert_eq!(voting.proxy_protocol, ProxyProtocol::Grpc);
    assert_eq!(voting.access_policy(), DefaultPolicy::Deny);
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(voting.selector().matches(&labels(&[("app", "voting-svc")])));
    assert!(
        !voting
            .selector()
            .matches(&labels(&[("app", "voting-svc"), ("tier", "canary")]))
    );
    let external = &m.servers[1].resource.spec;
    assert_eq!(external.port, ServerPort::Number(8080));
    assert!(external.external_workload_selector.is_some());

    assert_eq!(m.http_routes.len(), 2, "both API groups");
    let vote = &m.http_routes[0].resource.spec;
    assert!(vote.parent_refs[0].is_server());
    let matched = &vote.rules[0].matches[0];
    assert_eq!(matched.path.as_ref().unwrap().kind, PathMatchKind::Exact);
    assert_eq!(matched.method.as_deref(), Some("POST"));

    assert_eq!(m.meshtls_authentications.len(), 2);
    let pattern = &m.meshtls_authentications[1].resource.spec.identities[0];
    assert!(
        IdentityMatch::parse(pattern)
            .unwrap()
            .matches("bot.demo.serviceaccount.identity.weft.cluster.local")
    );
    let nets = &m.network_authentications[0].resource.spec.networks;
    assert!(nets[0].contains("198.18.0.9".parse().unwrap()));
    assert!(!nets[0].contains("198.18.250.9".parse().unwrap()));
    assert!(nets[1].contains("127.0.0.1".parse().unwrap()));

    let web_votes = &m.authorization_policies[0].resource.spec;
    assert_eq!(web_votes.target_ref.kind(), Some(RefKind::HttpRoute));
    assert_eq!(web_votes.required_authentication_refs.len(), 2);
    assert_eq!(
        m.rate_limits[0]
            .resource
            .spec
            .identity
            .unwrap()
            .requests_per_second,
        20
    );
}

/// One document with `body` after a Linkerd header: the one problem found, as printed.
fn problem(kind: &str, body: &str) -> String {
    let version = match kind {
        "Server" | "HTTPRoute" => "policy.linkerd.io/v1beta3",
        "GRPCRoute" => "gateway.networking.k8s.io/v1",
        _ => "policy.linkerd.io/v1alpha1",
    };
    let text = format!(
        "# a comment\napiVersion: {version}\nkind: {kind}\nmetadata: {{name: x, namespace: demo}}\n{body}"
    );
    let (_, errors) = parse_manifests(Path::new("bad.yaml"), &text);
    assert_eq!(errors.len(), 1, "{kind}: {errors:?}");
    errors[0].to_string()
}

#[test]
fn every_mistake_is_named_with_its_line() {
    let cases = [
        ("Server", "spec: {port: 80}\n", "exactly one of podSelector"),
        (
            "Server",
            "spec: {podSelector: {}, externalWorkloadSelector: {}, port: 80}\n",
            "exactly one of",
        ),
        ("Server", "spec: {podSelector: {}, port: 0}\n", "port 0"),
        (
            "Server",
            "spec: {podSelector: {}, port: Not_A_Name}\n",
            "port name",
        ),
        (
            "Server",
            "spec: {podSelector: {}, port: 80, accessPolicy: allow}\n",
            "not a default policy",
        ),
        (
            "Server",
            "spec: {podSelector: {}, port: 80, proxyProtocol: HTTP/3}\n",
            "unknown variant",
        ),
        (
            "Server",
            "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}, port: 80}\n",
            "needs values",
        ),
        (
            "Server",
            "spec: {podSelector: {}, port: 80, typo: 1}\n",
            "unknown field",
        ),
        (
            "AuthorizationPolicy",
            "spec:\n  targetRef: {kind: Service, name: web}\n  requiredAuthenticationRefs: []\n",
            "is not a Server, HTTPRoute or Namespace",
        ),
        (
            "AuthorizationPolicy",
            "spec:\n  targetRef: {kind: Namespace, name: other}\n  requiredAuthenticationRefs: []\n",
            "another namespace",
        ),
        (
            "AuthorizationPolicy",
            "spec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: s}\n  requiredAuthenticationRefs:\n  - {kind: ServiceAccount, name: a}\n  - {kind: ServiceAccount, name: b}\n",
            "at most one MeshTLSAuthentication or ServiceAccount",
        ),
        (
            "AuthorizationPolicy",
            "spec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: s}\n  requiredAuthenticationRefs:\n  - {kind: Secret, name: a}\n",
            "Secret is not a MeshTLSAuthentication",
        ),
        (
            "MeshTLSAuthentication",
            "spec: {identities: [\"web.*.demo\"]}\n",
            "is not an identity",
        ),
        (
            "MeshTLSAuthentication",
            "spec: {}\n",
            "needs identities or identityRefs",
        ),
        (
            "MeshTLSAuthentication",
            "spec: {identityRefs: [{kind: Secret, name: a}]}\n",
            "not a ServiceAccount or Namespace",
        ),
        (
            "NetworkAuthentication",
            "spec: {networks: []}\n",
            "at least one network",
        ),
        (
            "NetworkAuthentication",
            "spec: {networks: [{cidr: 10.1.0.0/8}]}\n",
            "host bits set",
        ),
        (
            "NetworkAuthentication",
            "spec: {networks: [{cidr: 10.0.0.0/33}]}\n",
            "is not a CIDR",
        ),
        (
            "NetworkAuthentication",
            "spec: {networks: [{cidr: 10.0.0.0/16, except: [10.0.0.0/8]}]}\n",
            "wholly taken away",
        ),
        (
            "NetworkAuthentication",
            "spec: {networks: [{cidr: 10.0.0.0/16, except: [11.0.0.0/24]}]}\n",
            "not inside",
        ),
        ("HTTPRoute", "spec: {rules: []}\n", "needs a Server"),
        ("GRPCRoute", "spec: {rules: []}\n", "needs a Service"),
        (
            "GRPCRoute",
            "spec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: s}]\n",
            "is not a Service",
        ),
        (
            "GRPCRoute",
            "spec:\n  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - matches: [{method: {type: RegularExpression, service: \".*\"}}]\n",
            "only Exact method matches",
        ),
        (
            "GRPCRoute",
            "spec:\n  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - matches: [{method: {service: \"a/b\"}}]\n",
            "is not a gRPC service name",
        ),
        (
            "GRPCRoute",
            "spec:\n  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - matches: [{method: {}}]\n",
            "neither a service nor a method",
        ),
        (
            "GRPCRoute",
            "spec:\n  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {}}]\n",
            "ResponseHeaderModifier is not supported",
        ),
        (
            "HTTPRoute",
            "spec:\n  parentRefs: [{kind: Gateway, name: g}]\n",
            "is not a Server or EgressNetwork",
        ),
        (
            "HTTPRoute",
            "spec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: s}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n",
            "bad regular expression",
        ),
        (
            "HTTPRoute",
            "spec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: s}]\n  rules:\n  - matches: [{path: {value: api}}]\n",
            "does not start with '/'",
        ),
        (
            "HTTPRoute",
            "spec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: s}]\n  rules:\n  - matches: [{method: FETCH}]\n",
            "not an HTTP method",
        ),
        (
            "HTTPRoute",
            "spec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: s}]\n  rules:\n  - timeouts: {request: 1s, backendRequest: 2s}\n",
            "longer than request",
        ),
        (
            "HTTPLocalRateLimitPolicy",
            "spec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: s}\n",
            "needs total, identity or overrides",
        ),
        (
            "HTTPLocalRateLimitPolicy",
            "spec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: s}\n  total: {requestsPerSecond: 10}\n  identity: {requestsPerSecond: 20}\n",
            "above spec.total",
        ),
        (
            "HTTPLocalRateLimitPolicy",
            "spec:\n  targetRef: {kind: Service, name: s}\n  total: {requestsPerSecond: 10}\n",
            "not a Server of this namespace",
        ),
    ];
    for (kind, body, reason) in cases {
        let problem = problem(kind, body);
        assert!(problem.starts_with("bad.yaml:"), "{problem}");
        assert!(problem.contains(reason), "{kind} {body:?}: {problem}");
    }
}
