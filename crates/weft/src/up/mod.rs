//! `weft up DIR`: the whole mesh on one machine, from a directory of
//! Kubernetes-shaped manifests.
//!
//! It acts as a small cluster. The control plane (identity and destination
//! services, both over TLS) listens on a bridge. Every Deployment replica
//! becomes a pod: a network namespace on the bridge with the proxy's capture
//! rules, the proxy under its own uid with a token for the pod's service
//! account, and the program under the workload's uid. The cluster state the
//! destination service reads (Services with cluster IPs, profiles, one
//! ExternalWorkload per pod with its readiness) is rendered into a
//! directory it watches. Ctrl-C stops everything and removes what it made;
//! a start after a crash removes what the crashed run left.

mod control;
mod net;
mod procs;
mod prometheus;
mod render;
mod runtime;
mod tokens;

pub use control::{RestartArgs, ScaleArgs, restart, scale, socket};
pub use weft_api::WORKLOAD_LABEL;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::{info, warn};

use self::procs::{Spec, Supervised};
use self::runtime::Runtime;
use self::tokens::TokenFile;
use crate::plan::Pod;

/// The proxy's uid in every pod; the capture rules let its traffic out.
const PROXY_UID: u32 = 2102;
/// The destination service's uid (namespace mode): it cannot open the CA
/// directory, so the issuer key is out of its reach by the OS, not by code.
const DESTINATION_UID: u32 = 2101;
/// Workload `n` (in name order) runs its programs as uid `APP_UID_BASE + n`.
const APP_UID_BASE: u32 = 3000;
const IDENTITY_PORT: u16 = 8080;
const DESTINATION_PORT: u16 = 8086;
/// The metrics API's port (Linkerd's metrics-api uses 8085).
const METRICS_API_PORT: u16 = 8085;
/// Marks every process a mesh starts, so a later run can find strays.
const MESH_ENV: &str = "WEFT_MESH";

#[derive(Args)]
pub struct UpArgs {
    /// The manifests: Services, Deployments, ServiceProfiles.
    dir: PathBuf,
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
    /// Run on loopback addresses with the proxies in explicit-proxy mode,
    /// even where network namespaces are available.
    #[arg(long)]
    rootless: bool,
    /// How long each workload token lives; tokens are re-minted at half
    /// their life while the mesh runs (at most 90 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// The inbound policy of ports no Server selects (all-unauthenticated,
    /// all-authenticated, cluster-unauthenticated, cluster-authenticated,
    /// deny, audit); a pod's config.linkerd.io/default-inbound-policy
    /// annotation overrides it.
    #[arg(long, default_value = "all-unauthenticated")]
    default_inbound_policy: weft_api::DefaultPolicy,
    #[command(flatten)]
    prometheus: prometheus::PrometheusArgs,
}

/// Why the mesh runs rootless, or `None` for network namespaces.
fn rootless_reason(asked: bool) -> Option<String> {
    if asked {
        return Some("--rootless was given".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need root)".into());
    }
    let probe = "weft-probe";
    match run_command(&["ip", "netns", "add", probe]) {
        Ok(_) => {
            let _ = run_command(&["ip", "netns", "del", probe]);
            None
        }
        Err(e) => Some(format!("cannot create network namespaces: {e:#}")),
    }
}

/// The manifests' current problems, one per line (empty when there are none).
pub const PROBLEMS_FILE: &str = "manifest-problems";

/// Rootless mode is for development: it must never pass for isolation.
const ROOTLESS_WARNING: &str = "\
WARNING: rootless mode is a development mode, not isolation. Every program runs as you,
         beside the CA's keys and every pod's token: any program can read them, mint
         or use any identity, and reach any other program directly on its loopback
         address, around its proxy. Run as root (network namespaces) for a mesh whose
         identities and policies mean something. See docs/local-mesh.md.";

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let rootless = rootless_reason(args.rootless);
    match &rootless {
        None => {
            outln!("mode: network namespaces (a pod per replica, traffic captured by iptables)")
        }
        Some(why) => {
            outln!(
                "mode: rootless on loopback, proxies in explicit-proxy mode (http_proxy), because {why}"
            );
            eprintln!("{ROOTLESS_WARNING}");
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(up(args, rootless.is_some()))
}

/// One pod while it runs.
struct RunningPod {
    pod: Pod,
    token: TokenFile,
    proxy: Supervised,
    app: Supervised,
    ready: bool,
    /// `weft restart`s of this pod (each restarts both processes, counted once).
    restarted: u32,
}

struct Mesh {
    /// Where pods run: network namespaces, or rootless on loopback.
    runtime: Box<dyn Runtime>,
    control_ip: Ipv4Addr,
    name: String,
    state: PathBuf,
    control: Vec<Supervised>,
    pods: Vec<RunningPod>,
    /// What it runs: the manifests, and the plan made from them (with any
    /// `weft scale` overrides).
    manifests: PathBuf,
    snapshot: weft_control::store::Snapshot,
    plan: crate::plan::Plan,
    replicas: BTreeMap<weft_api::Key, u32>,
    /// Set once the control plane runs: what every pod needs.
    pod_env: Option<PodEnv>,
    token_ttl: Duration,
    default_inbound_policy: weft_api::DefaultPolicy,
    /// The destination service's token, once the control plane starts.
    destination_token: Option<TokenFile>,
    prometheus_args: prometheus::PrometheusArgs,
    /// The mesh's Prometheus, when it runs one.
    prometheus: Option<prometheus::Prometheus>,
}

/// What starting a pod needs besides the pod itself.
struct PodEnv {
    proxy_bin: PathBuf,
    ca: PathBuf,
    anchors: String,
}

async fn up(args: UpArgs, rootless: bool) -> anyhow::Result<()> {
    let name = args.mesh.mesh.clone();
    let mut runtime = runtime::new(&name, rootless)?;
    let state = args.mesh.state();
    let strays = kill_strays(&name);
    let stale = runtime.remove_stale();
    if strays + stale > 0 {
        info!(
            processes = strays,
            namespaces = stale,
            "removed what an earlier run of this mesh left behind"
        );
    }
    let snapshot = weft_control::store::load(&args.dir)?;
    if !snapshot.problems.is_empty() {
        for p in &snapshot.problems {
            eprintln!("{p}");
        }
        bail!(
            "{} problem(s) in {}; fix them first",
            snapshot.problems.len(),
            args.dir.display()
        );
    }
    let plan = plan_for(&snapshot, &BTreeMap::new(), &*runtime)?;
    // Ours, and closed to others: another local user must not be able to
    // plant a CA or read a token here. Proxies (their own uid) pass through
    // the state and pods directories to their token, without listing them.
    let passable = runtime.kind().state_dir_mode;
    if let Some(root) = state.parent() {
        weft_control::secure_fs::owned_dir(root, passable)?;
    }
    weft_control::secure_fs::owned_dir(&state, passable)?;
    weft_control::secure_fs::owned_dir(&state.join("pods"), passable)?;
    for dir in ["ca", "logs"] {
        weft_control::secure_fs::private_dir(&state.join(dir))?;
    }
    std::fs::write(state.join("mode"), runtime.kind().mode).context("writing the mesh's mode")?;
    let mut mesh = Mesh {
        control_ip: runtime.kind().control_ip,
        runtime,
        name,
        state: state.clone(),
        control: Vec::new(),
        pods: Vec::new(),
        manifests: args.dir.clone(),
        snapshot,
        plan,
        replicas: BTreeMap::new(),
        pod_env: None,
        token_ttl: args.token_ttl,
        default_inbound_policy: args.default_inbound_policy,
        destination_token: None,
        prometheus_args: args.prometheus.clone(),
        prometheus: None,
    };
    let outcome = match start(&mut mesh).await {
        Ok(()) => supervise(&mut mesh).await,
        Err(e) => Err(e),
    };
    teardown(&mut mesh);
    outcome
}

/// The plan, with pod addresses as the runtime gives them.
fn plan_for(
    snapshot: &weft_control::store::Snapshot,
    replicas: &BTreeMap<weft_api::Key, u32>,
    runtime: &dyn Runtime,
) -> anyhow::Result<crate::plan::Plan> {
    let mut plan = crate::plan::plan(snapshot, replicas)?;
    runtime.place(&mut plan);
    Ok(plan)
}

/// Expands Kubernetes-style `$(NAME)` references in an environment value
/// from the variables before it; unknown names stay as written, and
/// `$$(` gives a literal `$(`.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("$") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$(") {
            out.push_str("$(");
            rest = after;
        } else if let Some((name, after)) = tail
            .strip_prefix("$(")
            .and_then(|t| t.split_once(')'))
            .filter(|(name, _)| env.iter().any(|(k, _)| k == name))
        {
            let v = env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone());
            out.push_str(&v.unwrap_or_default());
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn weft_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the weft binary")
}

/// Runs a command to completion; its stderr in the error.
fn run_command(argv: &[&str]) -> anyhow::Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn base_env(mesh: &str) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        (MESH_ENV.into(), mesh.into()),
    ]
}

async fn start(mesh: &mut Mesh) -> anyhow::Result<()> {
    let weft = weft_exe()?;
    let weft = weft
        .to_str()
        .context("the weft binary's path is not UTF-8")?;
    let state = mesh.state.clone();
    let ca = state.join("ca");
    if !ca.join("ca.crt").exists() {
        run_command(&[weft, "identity", "ca", "create", "--dir", path(&ca)?])?;
    }
    let anchors =
        std::fs::read_to_string(ca.join("ca.crt")).context("reading the trust anchors")?;
    // The destination service is a workload like any other: a token for its
    // identity, and a certificate through Certify. Only the identity
    // service reads the issuer key; in namespace mode the destination
    // service runs under its own uid, with its token, a copy of the trust
    // anchors and the cluster state it reads in directories it owns.
    let destination_uid = mesh.runtime.uid(DESTINATION_UID);
    let control_dir = state.join("control");
    for dir in [&control_dir, &state.join("cluster")] {
        handed_dir(dir, destination_uid)?;
    }
    let destination_anchors = control_dir.join("ca.crt");
    weft_control::secure_fs::write_atomic(&destination_anchors, anchors.as_bytes(), 0o644)?;
    render::write(
        &state.join("cluster"),
        &render::cluster_state(&mesh.snapshot, &mesh.plan, &BTreeMap::new())?,
    )?;
    mesh.runtime.prepare()?;
    let control_ip = mesh.control_ip;
    let destination_token = TokenFile::create(
        &ca,
        weft_control::destination::DESTINATION_SERVICE_NAME,
        control_dir.join("destination.token"),
        destination_uid,
        mesh.token_ttl,
    )?;

    let logs = state.join("logs");
    let control = [
        (
            "identity",
            vec![
                weft.to_string(),
                "control".into(),
                "identity".into(),
                "--dir".into(),
                path(&ca)?.into(),
                "--listen".into(),
                format!("{control_ip}:{IDENTITY_PORT}"),
                "--admin-listen".into(),
                format!("{control_ip}:9990"),
            ],
        ),
        (
            "destination",
            vec![
                weft.to_string(),
                "control".into(),
                "destination".into(),
                "--manifests".into(),
                path(&state.join("cluster"))?.into(),
                "--identity-addr".into(),
                format!("{control_ip}:{IDENTITY_PORT}"),
                "--token-file".into(),
                path(destination_token.path())?.into(),
                "--trust-anchors".into(),
                path(&destination_anchors)?.into(),
                "--listen".into(),
                format!("{control_ip}:{DESTINATION_PORT}"),
                "--admin-listen".into(),
                format!("{control_ip}:9996"),
                "--default-inbound-policy".into(),
                mesh.default_inbound_policy.as_str().into(),
            ],
        ),
    ];
    for (name, mut argv) in control {
        if name == "destination" {
            argv.splice(0..0, mesh.runtime.as_user(DESTINATION_UID));
        }
        let mut env = base_env(&mesh.name);
        env.push(("WEFT_LOG".into(), "info".into()));
        mesh.control.push(Supervised::start(Spec {
            name: format!("control/{name}"),
            argv,
            env,
            log: logs.join(format!("control-{name}.log")),
        })?);
    }
    for port in [IDENTITY_PORT, DESTINATION_PORT] {
        wait_listening(
            SocketAddr::from((control_ip, port)),
            Duration::from_secs(10),
        )
        .await?;
    }
    info!("control plane up");
    mesh.destination_token = Some(destination_token);
    start_prometheus(mesh, &logs)?;

    mesh.pod_env = Some(PodEnv {
        proxy_bin: procs::resolve_program("weft-proxy", &mesh.manifests)?,
        ca,
        anchors,
    });
    for pod in mesh.plan.pods.clone() {
        let running = start_pod(mesh, &pod)?;
        mesh.pods.push(running);
    }
    Ok(())
}

/// Starts the mesh's Prometheus, or says why the mesh runs without one.
fn start_prometheus(mesh: &mut Mesh, logs: &Path) -> anyhow::Result<()> {
    let control_ip = mesh.control_ip;
    let uid = mesh.runtime.uid(prometheus::PROMETHEUS_UID);
    let control_targets = [
        ("identity", SocketAddr::from((control_ip, 9990))),
        ("destination", SocketAddr::from((control_ip, 9996))),
    ];
    let prepared = prometheus::Prometheus::prepare(
        &mesh.prometheus_args,
        &mesh.state,
        control_ip,
        uid,
        &control_targets,
    )?;
    let addr_file = mesh.state.join(prometheus::ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    let _ = std::fs::remove_file(mesh.state.join(crate::viz::API_ADDR_FILE));
    match prepared {
        Err(why) => outln!("running without Prometheus: {why}"),
        Ok((prom, mut argv)) => {
            argv.splice(0..0, mesh.runtime.as_user(prometheus::PROMETHEUS_UID));
            let env = base_env(&mesh.name);
            mesh.control
                .push(Supervised::start(prometheus::Prometheus::spec(
                    argv, env, logs,
                ))?);
            std::fs::write(&addr_file, prom.addr.to_string())
                .context("writing the Prometheus address")?;
            // The metrics API beside it, as any unprivileged program.
            let api = SocketAddr::from((control_ip, METRICS_API_PORT));
            let mut argv = mesh.runtime.as_user(prometheus::PROMETHEUS_UID);
            argv.extend([
                path(&weft_exe()?)?.to_string(),
                "control".into(),
                "viz".into(),
                "--prometheus".into(),
                prom.addr.to_string(),
                "--listen".into(),
                api.to_string(),
            ]);
            let mut env = base_env(&mesh.name);
            env.push(("WEFT_LOG".into(), "info".into()));
            mesh.control.push(Supervised::start(Spec {
                name: "viz/metrics-api".into(),
                argv,
                env,
                log: logs.join("metrics-api.log"),
            })?);
            std::fs::write(mesh.state.join(crate::viz::API_ADDR_FILE), api.to_string())
                .context("writing the metrics API's address")?;
            outln!(
                "prometheus: http://{} (scraping every {})",
                prom.addr,
                humantime::format_duration(mesh.prometheus_args.scrape_interval)
            );
            mesh.prometheus = Some(prom);
        }
    }
    Ok(())
}

/// The uid a workload's programs run as: fixed by its place among the
/// Deployments, so scaling never changes it.
fn workload_uid(mesh: &Mesh, namespace: &str, deployment: &str) -> u32 {
    let index = mesh
        .snapshot
        .deployments
        .keys()
        .position(|k| k.namespace == namespace && k.name == deployment)
        .unwrap_or_default();
    APP_UID_BASE + index as u32
}

/// Starts one pod: its namespace and capture rules (namespace mode), its
/// token, its proxy and its program.
fn start_pod(mesh: &mut Mesh, pod: &Pod) -> anyhow::Result<RunningPod> {
    let env = mesh
        .pod_env
        .as_ref()
        .context("the control plane is not up")?;
    let ca = &env.ca;
    let proxy_bin = path(&env.proxy_bin)?;
    mesh.runtime
        .create_pod(pod, &mesh.plan.services, proxy_bin)?;
    // Made afresh (a crashed run's is gone), then handed to the proxy's uid:
    // only it can open its token.
    let pod_dir = mesh.state.join("pods").join(&pod.name);
    let _ = std::fs::remove_dir_all(&pod_dir);
    weft_control::secure_fs::private_dir(&pod_dir)?;
    let owner = mesh.runtime.uid(PROXY_UID);
    let token = TokenFile::create(
        ca,
        &pod.identity,
        pod_dir.join("token"),
        owner,
        mesh.token_ttl,
    )?;
    std::os::unix::fs::chown(&pod_dir, Some(owner), Some(owner))
        .with_context(|| format!("giving {} to uid {owner}", pod_dir.display()))?;

    let control_ip = mesh.control_ip;
    let logs = mesh.state.join("logs");
    let addressing = mesh.runtime.addressing(pod);
    let mut app_env = base_env(&mesh.name);
    if let Some(proxy) = addressing.http_proxy {
        app_env.push(("http_proxy".into(), proxy));
    }
    let destination_service = weft_api::proxy::ServiceAddr {
        addr: SocketAddr::from((control_ip, DESTINATION_PORT)),
        name: weft_control::destination::DESTINATION_SERVICE_NAME.into(),
    };
    let spec = weft_api::proxy::ProxySpec {
        log: "warn,weft_proxy=info".into(),
        identity_service: weft_api::proxy::ServiceAddr {
            addr: SocketAddr::from((control_ip, IDENTITY_PORT)),
            name: weft_control::identity::IDENTITY_SERVICE_NAME.into(),
        },
        destination_service: destination_service.clone(),
        // The destination process serves the inbound policy too.
        policy: Some(weft_api::proxy::PolicyClient {
            service: destination_service,
            workload: format!("{}:{}", pod.namespace, pod.name),
        }),
        local_identity: pod.identity.clone(),
        token_file: token.path().to_path_buf(),
        trust_anchors: env.anchors.clone(),
        mesh_networks: addressing.mesh_networks,
        listeners: addressing.listeners,
    };
    let mut proxy_env = base_env(&mesh.name);
    proxy_env.extend(spec.env());
    let proxy = Supervised::start(Spec {
        name: format!("{}/{} proxy", pod.namespace, pod.name),
        argv: mesh.runtime.launch(&pod.name, PROXY_UID, proxy_bin),
        env: proxy_env,
        log: logs.join(format!("{}.proxy.log", pod.name)),
    })?;

    let program = pod.argv.first().context("a pod without a command")?;
    let program = procs::resolve_program(program, &mesh.manifests)?;
    let uid = workload_uid(mesh, &pod.namespace, &pod.deployment);
    let mut argv = mesh.runtime.launch(&pod.name, uid, path(&program)?);
    argv.extend(pod.argv.iter().skip(1).cloned());
    app_env.extend([
        ("POD_NAME".into(), pod.name.clone()),
        ("POD_NAMESPACE".into(), pod.namespace.clone()),
        ("POD_IP".into(), addressing.app_ip.to_string()),
    ]);
    for (name, value) in &pod.env {
        let value = expand(value, &app_env);
        app_env.push((name.clone(), value));
    }
    let app = Supervised::start(Spec {
        name: format!("{}/{}", pod.namespace, pod.name),
        argv,
        env: app_env,
        log: logs.join(format!("{}.log", pod.name)),
    })?;
    Ok(RunningPod {
        pod: pod.clone(),
        token,
        proxy,
        app,
        ready: false,
        restarted: 0,
    })
}

/// Stops one pod's processes and removes its namespace.
fn stop_pod(mesh: &Mesh, mut running: RunningPod) {
    procs::stop_all(&mut [&mut running.app]);
    procs::stop_all(&mut [&mut running.proxy]);
    mesh.runtime.delete_pod(&running.pod.name);
    let _ = std::fs::remove_dir_all(mesh.state.join("pods").join(&running.pod.name));
}

/// Makes `dir` afresh (what it held is derived state) as a 0700 directory
/// that belongs to `uid`.
fn handed_dir(dir: &Path, uid: u32) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()));
        }
        _ => {}
    }
    weft_control::secure_fs::private_dir(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
        .with_context(|| format!("giving {} to uid {uid}", dir.display()))
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

async fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether a proxy answers `/ready` with 200 (blocking, short timeouts).
fn proxy_ready(ip: Ipv4Addr) -> bool {
    crate::mesh::get(SocketAddr::from((ip, 4191)), "/ready").is_ok_and(|(code, _)| code == 200)
}

async fn supervise(mesh: &mut Mesh) -> anyhow::Result<()> {
    outln!(
        "mesh {:?} is starting: {} pods; logs in {}",
        mesh.name,
        mesh.pods.len(),
        mesh.state.join("logs").display()
    );
    print_pods(mesh);
    outln!(
        "control plane: identity {ip}:{IDENTITY_PORT}, destination {ip}:{DESTINATION_PORT} (TLS; CA in {})\n",
        mesh.state.join("ca").display(),
        ip = mesh.control_ip,
    );
    let socket = control::socket(&mesh.state);
    let _ = std::fs::remove_file(&socket);
    let requests = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", socket.display()))?;
    }
    // Edits to the manifests apply while the mesh runs.
    let store =
        weft_control::store::FilesStore::start(&mesh.manifests, Duration::from_millis(500))?;
    let mut edits = {
        use weft_control::store::Store as _;
        store.subscribe()
    };
    edits.mark_unchanged();
    let mut shown = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let shutdown = weft_control::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            accepted = requests.accept() => {
                if let Ok((stream, _)) = accepted {
                    serve_request(mesh, stream).await;
                }
            }
            changed = edits.changed() => {
                if changed.is_ok() {
                    let snapshot = (**edits.borrow_and_update()).clone();
                    match apply_manifests(mesh, snapshot) {
                        Ok(done) => outln!("{done}"),
                        Err(e) => warn!(error = format!("{e:#}"), "cannot apply the edited manifests"),
                    }
                }
            }
            _ = &mut shutdown => return Ok(()),
        }
        for p in &mut mesh.control {
            p.tend();
        }
        renew_tokens(mesh);
        let mut readiness_changed = false;
        for running in &mut mesh.pods {
            running.proxy.tend();
            running.app.tend();
            let ip = running.pod.ip;
            let proxy_up = tokio::task::spawn_blocking(move || proxy_ready(ip))
                .await
                .unwrap_or(false);
            let ready = proxy_up && running.app.running() && running.proxy.running();
            if ready != running.ready {
                running.ready = ready;
                readiness_changed = true;
            }
        }
        if readiness_changed {
            publish(mesh);
        }
        if let Some(prom) = &mut mesh.prometheus {
            let uid = mesh.runtime.uid(prometheus::PROMETHEUS_UID);
            if let Err(e) = prom.write_targets(mesh.pods.iter().map(|r| &r.pod), uid) {
                warn!(
                    error = format!("{e:#}"),
                    "cannot update Prometheus's targets"
                );
            }
        }
        let table = status_table(mesh);
        if table != shown {
            out!("{table}");
            let _ = std::io::stdout().flush();
            shown = table;
        }
    }
}

/// Keeps every token alive; a failure is logged and retried next tick,
/// while the current token is still good for half its life.
fn renew_tokens(mesh: &mut Mesh) {
    let ca = mesh.state.join("ca");
    let files = mesh
        .destination_token
        .iter_mut()
        .chain(mesh.pods.iter_mut().map(|r| &mut r.token));
    for file in files {
        match file.renew_if_due(&ca) {
            Ok(true) => info!(file = %file.path().display(), "token renewed"),
            Ok(false) => {}
            Err(e) => {
                warn!(file = %file.path().display(), error = format!("{e:#}"), "cannot renew a token")
            }
        }
    }
}

fn print_pods(mesh: &Mesh) {
    let pods: Vec<Vec<String>> = mesh
        .pods
        .iter()
        .map(|r| {
            let ports: Vec<String> = r.pod.ports.iter().map(|(_, p)| p.to_string()).collect();
            vec![
                format!("{}/{}", r.pod.namespace, r.pod.name),
                r.pod.ip.to_string(),
                ports.join(","),
                r.pod.identity.clone(),
            ]
        })
        .collect();
    crate::output::print_table(&["POD", "IP", "PORTS", "IDENTITY"], &pods);
}

/// Writes the cluster state with every pod's readiness.
fn publish(mesh: &Mesh) {
    let ready: BTreeMap<(String, String), bool> = mesh
        .pods
        .iter()
        .map(|r| ((r.pod.namespace.clone(), r.pod.name.clone()), r.ready))
        .collect();
    match render::cluster_state(&mesh.snapshot, &mesh.plan, &ready) {
        Ok(text) => {
            if let Err(e) = render::write(&mesh.state.join("cluster"), &text) {
                warn!(error = format!("{e:#}"), "cannot update the cluster state");
            }
        }
        Err(e) => warn!(error = %e, "cannot render the cluster state"),
    }
}

/// Answers one `weft scale` or `weft restart`.
async fn serve_request(mesh: &mut Mesh, stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => match control::Request::parse(&line) {
            Ok(request) => match apply(mesh, request) {
                Ok(done) => format!("ok: {done}\n"),
                Err(e) => format!("error: {e:#}\n"),
            },
            Err(e) => format!("error: {e}\n"),
        },
        _ => return,
    };
    let _ = stream.get_mut().write_all(reply.as_bytes()).await;
}

/// Brings the running pods to `plan`: starts new pods, stops removed ones,
/// replaces pods whose spec changed, refreshes every hosts file when the
/// services changed, and publishes the cluster state. Returns (started,
/// stopped, replaced).
fn reconcile(mesh: &mut Mesh, plan: crate::plan::Plan) -> anyhow::Result<(usize, usize, usize)> {
    let key = |p: &Pod| (p.namespace.clone(), p.name.clone());
    let services_changed = plan.services != mesh.plan.services;
    let wanted: BTreeMap<(String, String), Pod> =
        plan.pods.iter().map(|p| (key(p), p.clone())).collect();
    let (keep, stop): (Vec<RunningPod>, Vec<RunningPod>) = std::mem::take(&mut mesh.pods)
        .into_iter()
        .partition(|r| wanted.get(&key(&r.pod)) == Some(&r.pod));
    let replaced = stop
        .iter()
        .filter(|r| wanted.contains_key(&key(&r.pod)))
        .count();
    let stopped = stop.len() - replaced;
    mesh.pods = keep;
    mesh.plan = plan;
    for running in stop {
        stop_pod(mesh, running);
    }
    let running: std::collections::BTreeSet<_> = mesh.pods.iter().map(|r| key(&r.pod)).collect();
    let mut started = 0;
    for pod in mesh.plan.pods.clone() {
        if !running.contains(&key(&pod)) {
            let new = start_pod(mesh, &pod)?;
            mesh.pods.push(new);
            started += 1;
        }
    }
    mesh.pods.sort_by_key(|r| key(&r.pod));
    if services_changed {
        let pods: Vec<&Pod> = mesh.pods.iter().map(|r| &r.pod).collect();
        mesh.runtime.services_changed(&pods, &mesh.plan.services);
    }
    publish(mesh);
    Ok((started - replaced, stopped, replaced))
}

/// Applies edited manifests: new services and profiles, new or removed
/// Deployments, changed replica counts (which replace any `weft scale`),
/// changed pod specs.
fn apply_manifests(
    mesh: &mut Mesh,
    snapshot: weft_control::store::Snapshot,
) -> anyhow::Result<String> {
    for p in &snapshot.problems {
        warn!("manifest problem (its last good version keeps running): {p}");
    }
    // `weft check` reads them from here and turns red until they are fixed.
    let problems: String = snapshot.problems.iter().map(|p| format!("{p}\n")).collect();
    weft_control::secure_fs::write_atomic(
        &mesh.state.join(PROBLEMS_FILE),
        problems.as_bytes(),
        0o600,
    )?;
    let edited: Vec<weft_api::Key> = mesh
        .replicas
        .keys()
        .filter(|k| {
            snapshot.deployments.get(*k).map(|d| d.spec.replicas)
                != mesh.snapshot.deployments.get(*k).map(|d| d.spec.replicas)
        })
        .cloned()
        .collect();
    for k in edited {
        mesh.replicas.remove(&k);
    }
    let plan = plan_for(&snapshot, &mesh.replicas, &*mesh.runtime)?;
    mesh.snapshot = snapshot;
    let (started, stopped, replaced) = reconcile(mesh, plan)?;
    Ok(format!(
        "manifests changed: {started} pod(s) started, {stopped} stopped, {replaced} replaced"
    ))
}

/// The Deployment `workload` names (`name` or `namespace/name`).
fn find_workload(mesh: &Mesh, workload: &str) -> anyhow::Result<weft_api::Key> {
    let matches: Vec<&weft_api::Key> = mesh
        .snapshot
        .deployments
        .keys()
        .filter(|k| k.name == workload || format!("{}/{}", k.namespace, k.name) == workload)
        .collect();
    match matches.as_slice() {
        [key] => Ok((*key).clone()),
        [] => {
            let known: Vec<String> = mesh
                .snapshot
                .deployments
                .keys()
                .map(|k| k.to_string())
                .collect();
            bail!("no workload {workload:?} (known: {})", known.join(", "))
        }
        _ => bail!("{workload:?} is in several namespaces: say namespace/name"),
    }
}

fn apply(mesh: &mut Mesh, request: control::Request) -> anyhow::Result<String> {
    match request {
        control::Request::Scale { workload, replicas } => {
            anyhow::ensure!(
                replicas <= weft_api::MAX_LOCAL_REPLICAS,
                "at most {} replicas",
                weft_api::MAX_LOCAL_REPLICAS
            );
            let key = find_workload(mesh, &workload)?;
            let mut overrides = mesh.replicas.clone();
            overrides.insert(key.clone(), replicas);
            let plan = plan_for(&mesh.snapshot, &overrides, &*mesh.runtime)?;
            mesh.replicas = overrides;
            let (added, removed, _) = reconcile(mesh, plan)?;
            Ok(format!(
                "{key} scaled to {replicas} ({added} started, {removed} stopped)"
            ))
        }
        control::Request::Restart { workload } => {
            let key = find_workload(mesh, &workload)?;
            let mut restarted = 0;
            for running in mesh
                .pods
                .iter_mut()
                .filter(|r| r.pod.namespace == key.namespace && r.pod.deployment == key.name)
            {
                running.app.restart()?;
                running.proxy.restart()?;
                running.restarted += 1;
                running.ready = false;
                restarted += 1;
            }
            publish(mesh);
            Ok(format!("{key}: {restarted} pod(s) restarted"))
        }
    }
}

/// The workloads' state, one line each (every Deployment, scaled to zero
/// too): ready pods, meshed pods (those whose proxy runs, as `linkerd stat`
/// counts them), restarts.
fn status_table(mesh: &Mesh) -> String {
    #[derive(Default)]
    struct Row {
        ready: usize,
        meshed: usize,
        total: usize,
        restarts: u32,
    }
    let mut by_workload: BTreeMap<String, Row> = mesh
        .snapshot
        .deployments
        .keys()
        .map(|k| (k.to_string(), Row::default()))
        .collect();
    for r in &mesh.pods {
        let row = by_workload
            .entry(format!("{}/{}", r.pod.namespace, r.pod.deployment))
            .or_default();
        row.ready += usize::from(r.ready);
        row.meshed += usize::from(r.proxy.pid().is_some());
        row.total += 1;
        row.restarts += r.restarted + r.app.restarts + r.proxy.restarts;
    }
    let rows: Vec<Vec<String>> = by_workload
        .iter()
        .map(|(name, row)| {
            vec![
                name.clone(),
                format!("{}/{}", row.ready, row.total),
                format!("{}/{}", row.meshed, row.total),
                row.restarts.to_string(),
            ]
        })
        .collect();
    let mut out = Vec::new();
    crate::output::write_table(
        &mut out,
        &["WORKLOAD", "READY", "MESHED", "RESTARTS"],
        &rows,
    );
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push('\n');
    text
}

/// Stops every process (programs, then proxies, then the control plane)
/// and removes the network.
fn teardown(mesh: &mut Mesh) {
    outln!("stopping mesh {:?}", mesh.name);
    let mut apps: Vec<&mut Supervised> = mesh.pods.iter_mut().map(|r| &mut r.app).collect();
    procs::stop_all(&mut apps);
    let mut proxies: Vec<&mut Supervised> = mesh.pods.iter_mut().map(|r| &mut r.proxy).collect();
    procs::stop_all(&mut proxies);
    let mut control: Vec<&mut Supervised> = mesh.control.iter_mut().collect();
    procs::stop_all(&mut control);
    kill_strays(&mesh.name);
    let removed = mesh.runtime.teardown(mesh.pods.len());
    let _ = std::fs::remove_dir_all(mesh.state.join("cluster"));
    let _ = std::fs::remove_dir_all(mesh.state.join("pods"));
    let _ = std::fs::remove_file(mesh.state.join("control.sock"));
    let _ = std::fs::remove_file(mesh.state.join(prometheus::ADDR_FILE));
    let _ = std::fs::remove_file(mesh.state.join(crate::viz::API_ADDR_FILE));
    outln!(
        "stopped: {removed}; logs kept in {}",
        mesh.state.join("logs").display()
    );
}

/// Kills processes an earlier run of mesh `name` left (they carry
/// `WEFT_MESH=<name>` in their environment); returns how many.
fn kill_strays(name: &str) -> usize {
    let marker = format!("{MESH_ENV}={name}");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            // SAFETY: kill(2) on a pid read from /proc; at worst it is gone.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    // Their namespaces go away only once they are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while killed
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn environment_references_expand_like_kubernetes() {
        let env = vec![
            ("POD_IP".to_string(), "198.18.3.4".to_string()),
            ("PORT".to_string(), "8080".to_string()),
        ];
        assert_eq!(expand("$(POD_IP):$(PORT)", &env), "198.18.3.4:8080");
        assert_eq!(
            expand("$(NOPE) and $$(POD_IP)", &env),
            "$(NOPE) and $(POD_IP)"
        );
        assert_eq!(expand("cost $5", &env), "cost $5");
        assert_eq!(expand("$(POD_IP", &env), "$(POD_IP");
    }
}
