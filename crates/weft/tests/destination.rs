//! `weft control destination` over a real manifests directory, asked by real
//! gRPC clients the way proxies ask: edits reach watchers within a second,
//! broken manifests keep the last good state, and watchers share the index.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use support::{Destination, service_yaml, weft, workload_yaml};
use tonic::Streaming;

const WEB: &str = "web.demo.svc.cluster.local:80";

async fn client(d: &Destination) -> DestinationClient<tonic::transport::Channel> {
    DestinationClient::connect(format!("http://{}", d.addr))
        .await
        .unwrap()
}

fn get(path: &str) -> api::GetDestination {
    api::GetDestination {
        scheme: "k8s".into(),
        path: path.into(),
        context_token: String::new(),
    }
}

/// The next message, which must come within `within`.
async fn next<T>(stream: &mut Streaming<T>, within: Duration) -> T {
    tokio::time::timeout(within, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no update within {within:?}"))
        .expect("stream ok")
        .expect("stream open")
}

/// What an update says, in a comparable form.
fn describe(u: &api::Update) -> String {
    let addrs = |set: &[linkerd2_proxy_api::net::TcpAddress]| {
        let mut a: Vec<String> = set
            .iter()
            .map(|a| SocketAddr::try_from(*a).unwrap().to_string())
            .collect();
        a.sort();
        a.join(",")
    };
    match u.update.as_ref().unwrap() {
        api::update::Update::Add(set) => {
            let list: Vec<_> = set.addrs.iter().filter_map(|a| a.addr).collect();
            format!("add {}", addrs(&list))
        }
        api::update::Update::Remove(set) => format!("remove {}", addrs(&set.addrs)),
        api::update::Update::NoEndpoints(n) => format!("none exists={}", n.exists),
    }
}

const UPDATE_WITHIN: Duration = Duration::from_secs(1);

/// The destination service over the web Service and one workload,
/// web-0 at 198.18.1.1:8080.
fn web_with_one_workload() -> Destination {
    Destination::start(&[
        ("web.yaml", &service_yaml("web", "198.18.100.1")),
        (
            "web-0.yaml",
            &workload_yaml("web-0", "web", "198.18.1.1", 8080),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_manifest_edits_within_a_second() {
    let d = web_with_one_workload();
    let mut c = client(&d).await;
    let mut by_name = c.get(get(WEB)).await.unwrap().into_inner();
    let mut by_ip = c.get(get("198.18.100.1:80")).await.unwrap().into_inner();
    for s in [&mut by_name, &mut by_ip] {
        assert_eq!(
            describe(&next(s, UPDATE_WITHIN).await),
            "add 198.18.1.1:8080"
        );
    }

    let steps: [(&dyn Fn(), &str); 4] = [
        (
            &|| {
                d.write(
                    "web-1.yaml",
                    &workload_yaml("web-1", "web", "198.18.1.2", 8080),
                )
            },
            "add 198.18.1.2:8080",
        ),
        (&|| d.remove("web-0.yaml"), "remove 198.18.1.1:8080"),
        (&|| d.remove("web-1.yaml"), "none exists=true"),
        (&|| d.remove("web.yaml"), "none exists=false"),
    ];
    for (edit, expected) in steps {
        let started = Instant::now();
        edit();
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(describe(&next(s, UPDATE_WITHIN).await), expected);
        }
        println!("{expected}: {:?} after the edit", started.elapsed());
    }
    // The service comes back: the stream resumes with an add.
    d.write("web.yaml", &service_yaml("web", "198.18.100.1"));
    d.write(
        "web-0.yaml",
        &workload_yaml("web-0", "web", "198.18.1.1", 8080),
    );
    let update = describe(&next(&mut by_name, UPDATE_WITHIN).await);
    assert!(
        update == "add 198.18.1.1:8080" || update == "none exists=true",
        "{update}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_is_reported_and_the_last_good_state_keeps_serving() {
    let d = Destination::start(&[(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", "198.18.100.1"),
            workload_yaml("web-0", "web", "198.18.1.1", 8080)
        ),
    )]);
    let mut c = client(&d).await;
    let mut stream = c.get(get(WEB)).await.unwrap().into_inner();
    assert_eq!(
        describe(&next(&mut stream, UPDATE_WITHIN).await),
        "add 198.18.1.1:8080"
    );
    // Line 12 gets a port that is not a number.
    let broken = format!(
        "{}---\n{}",
        service_yaml("web", "198.18.100.1"),
        workload_yaml("web-0", "web", "198.18.1.1", 8080).replace("port: 8080", "port: eighty")
    );
    d.write("web.yaml", &broken);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.server.metric("store_manifest_problems", &[]) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "problem not reported: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log();
    assert!(
        log.contains("web.yaml:14: invalid ExternalWorkload"),
        "the log names file, line and reason: {log}"
    );
    // Nothing changes for the watcher, and new watchers get the last good state.
    assert!(
        tokio::time::timeout(Duration::from_millis(600), stream.message())
            .await
            .is_err(),
        "no update for a broken manifest"
    );
    let mut fresh = c.get(get(WEB)).await.unwrap().into_inner();
    assert_eq!(
        describe(&next(&mut fresh, UPDATE_WITHIN).await),
        "add 198.18.1.1:8080"
    );
    // Fixed (and changed): the update flows again.
    d.write(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", "198.18.100.1"),
            workload_yaml("web-0", "web", "198.18.1.9", 8080)
        ),
    );
    assert_eq!(
        describe(&next(&mut stream, UPDATE_WITHIN).await),
        "remove 198.18.1.1:8080"
    );
    assert_eq!(
        describe(&next(&mut stream, UPDATE_WITHIN).await),
        "add 198.18.1.9:8080"
    );
    assert_eq!(d.server.metric("store_manifest_problems", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_one_index_entry_and_all_see_the_change() {
    let d = web_with_one_workload();
    let c = client(&d).await;
    const WATCHERS: usize = 500;
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut s = c.clone().get(get(WEB)).await.unwrap().into_inner();
        assert_eq!(
            describe(&next(&mut s, UPDATE_WITHIN).await),
            "add 198.18.1.1:8080"
        );
        streams.push(s);
    }
    assert_eq!(
        d.server
            .metric("destination_watchers", &[("kind", "endpoints")]),
        WATCHERS as f64
    );
    d.write(
        "web-1.yaml",
        &workload_yaml("web-1", "web", "198.18.1.2", 8080),
    );
    let started = Instant::now();
    for s in &mut streams {
        assert_eq!(
            describe(&next(s, UPDATE_WITHIN).await),
            "add 198.18.1.2:8080"
        );
    }
    println!(
        "{WATCHERS} watchers updated {:?} after the edit",
        started.elapsed()
    );
    assert_eq!(
        d.server
            .metric("destination_index_targets", &[("kind", "endpoints")]),
        1.0,
        "one shared entry for one target"
    );
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d
        .server
        .metric("destination_watchers", &[("kind", "endpoints")])
        != 0.0
    {
        assert!(Instant::now() < deadline, "closed streams are not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_follow_service_profile_edits_and_bad_targets_are_refused() {
    let d = Destination::start(&[("web.yaml", &service_yaml("web", "198.18.100.1"))]);
    let mut c = client(&d).await;
    let mut stream = c.get_profile(get(WEB)).await.unwrap().into_inner();
    let first = next(&mut stream, UPDATE_WITHIN).await;
    assert_eq!(first.fully_qualified_name, "web.demo.svc.cluster.local");
    assert!(first.routes.is_empty());
    d.write(
        "profile.yaml",
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local, namespace: demo}\nspec:\n  routes:\n  - name: slow\n    condition: {method: GET, pathRegex: /slow}\n    timeout: 100ms\n    isRetryable: true\n",
    );
    let updated = next(&mut stream, UPDATE_WITHIN).await;
    assert_eq!(updated.routes.len(), 1);
    assert!(updated.routes[0].is_retryable);
    assert_eq!(updated.routes[0].metrics_labels["route"], "slow");

    let refused = c.get(get("a.b.c.svc.cluster.local:80")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("is not <service>.<namespace>.svc.cluster.local:<port>"),
        "{refused:?}"
    );
}

/// Runs the `weft` CLI off the async runtime.
async fn run_weft(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weft(&args)
    })
    .await
    .unwrap()
}

/// `weft diagnostics <what> <target>` against the plaintext destination
/// service at `destination`, with `extra` arguments.
async fn diagnose(
    what: &str,
    target: &str,
    destination: &str,
    extra: &[&str],
) -> std::process::Output {
    let args = ["diagnostics", what, target, "--plaintext", "--destination"];
    run_weft(&[&args[..], &[destination], extra].concat()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_show_what_proxies_are_told() {
    let d = web_with_one_workload();
    let addr = d.addr.to_string();
    let out = diagnose("endpoints", WEB, &addr, &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("ADDRESS "), "{text}");
    assert!(
        text.contains(
            "198.18.1.1:8080  web.demo.serviceaccount.identity.weft.cluster.local  10000   h2"
        ),
        "{text}"
    );

    let json = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let endpoints = json(diagnose("endpoints", "198.18.100.1:80", &addr, &["-o", "json"]).await);
    assert_eq!(endpoints["exists"], true);
    assert_eq!(endpoints["endpoints"][0]["address"], "198.18.1.1:8080");
    assert_eq!(endpoints["labels"]["service"], "web");

    let profile = json(diagnose("profile", WEB, &addr, &["-o", "json"]).await);
    assert_eq!(
        profile["fully_qualified_name"],
        "web.demo.svc.cluster.local"
    );
    assert_eq!(profile["retry_budget"]["min_retries_per_second"], 10);

    let dead = format!("127.0.0.1:{}", support::free_port());
    let out = diagnose("endpoints", WEB, &dead, &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the destination service at 127.0.0.1:"),
        "{err}"
    );
}

/// The scale benchmark's generator (`bench/control-plane`), run small so it
/// keeps working: every edit must reach every watcher of its service.
#[test]
fn the_scale_generator_measures_a_small_mesh() {
    let out = std::process::Command::new(support::workspace_bin("destination-load"))
        .args(["--weft", env!("CARGO_BIN_EXE_weft")])
        .args(["--services", "20", "--endpoints", "3", "--watches", "60"])
        .args([
            "--connections",
            "4",
            "--updates",
            "4",
            "--idle-seconds",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["watches"], 60);
    assert_eq!(report["updates"], 4);
    assert!(report["rss_watched_kib"].as_u64().unwrap() > 0, "{report}");
    let max = report["update_latency_ms"]["max"].as_f64().unwrap();
    assert!(max > 0.0, "{report}");
    assert!(stderr.contains("60 watches answered"), "{stderr}");
}

/// `weft diagnostics plan`: what the local mesh would run from a directory.
#[test]
fn the_plan_of_the_demo_mesh_and_of_a_broken_directory() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/emojivoto");
    let out = weft(&["diagnostics", "plan", demo, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["services"].as_array().unwrap().len(), 4);
    let pods = plan["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 6);
    let web = pods.iter().find(|p| p["name"] == "web-0").unwrap();
    assert_eq!(
        web["identity"],
        "web.demo.serviceaccount.identity.weft.cluster.local"
    );

    let table = weft(&["diagnostics", "plan", demo]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("web-svc.demo.svc.cluster.local"), "{text}");

    let broken = Destination::start(&[(
        "x.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: []}\n",
    )]);
    let out = weft(&["diagnostics", "plan", broken.dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("x.yaml:1: Deployment default/x: the local mesh runs one container per pod"),
        "{err}"
    );
}
