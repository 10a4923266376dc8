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

mod net;
mod procs;
mod render;

pub use render::WORKLOAD_LABEL;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::{info, warn};

use self::net::Network;
use self::procs::{Spec, Supervised};
use crate::plan::{BRIDGE_IP, Pod};

/// The proxy's uid in every pod; the capture rules let its traffic out.
const PROXY_UID: u32 = 2102;
/// Workload `n` (in name order) runs its programs as uid `APP_UID_BASE + n`.
const APP_UID_BASE: u32 = 3000;
const IDENTITY_PORT: u16 = 8080;
const DESTINATION_PORT: u16 = 8086;
/// Marks every process a mesh starts, so a later run can find strays.
const MESH_ENV: &str = "WEFT_MESH";

#[derive(Args)]
pub struct UpArgs {
    /// The manifests: Services, Deployments, ServiceProfiles.
    dir: PathBuf,
    /// Names this mesh's namespaces, bridge and state (1-8 lowercase
    /// letters or digits), so two meshes can run side by side.
    #[arg(long, default_value = "weft")]
    name: String,
    /// Where state (CA, cluster state, logs) is kept.
    #[arg(long, default_value = "/run/weft")]
    state_root: PathBuf,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "weft up runs each pod in a network namespace, which needs root: run it with sudo \
             (a rootless mode on loopback is planned but not built yet)"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(up(args))
}

/// One pod while it runs.
struct RunningPod {
    pod: Pod,
    proxy: Supervised,
    app: Supervised,
    ready: bool,
}

struct Mesh {
    name: String,
    net: Network,
    state: PathBuf,
    control: Vec<Supervised>,
    pods: Vec<RunningPod>,
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let net = Network::new(&args.name)?;
    let state = args.state_root.join(&args.name);
    let strays = kill_strays(&args.name);
    let stale = net.delete_all();
    if strays + stale > 0 {
        info!(
            processes = strays,
            namespaces = stale,
            "removed what an earlier run of this mesh left behind"
        );
    }
    let snapshot = crate::store::load(&args.dir)?;
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
    let plan = crate::plan::plan(&snapshot, &BTreeMap::new())?;
    for dir in ["ca", "cluster", "logs", "pods"] {
        std::fs::create_dir_all(state.join(dir))
            .with_context(|| format!("creating {}", state.join(dir).display()))?;
    }
    let mut mesh = Mesh {
        name: args.name.clone(),
        net,
        state: state.clone(),
        control: Vec::new(),
        pods: Vec::new(),
    };
    let result = start(&mut mesh, &args.dir, &snapshot, &plan).await;
    let outcome = match result {
        Ok(()) => supervise(&mut mesh, &snapshot, &plan).await,
        Err(e) => Err(e),
    };
    teardown(&mut mesh);
    outcome
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

async fn start(
    mesh: &mut Mesh,
    manifests: &Path,
    snapshot: &crate::store::Snapshot,
    plan: &crate::plan::Plan,
) -> anyhow::Result<()> {
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
    render::write(
        &state.join("cluster"),
        &render::cluster_state(snapshot, plan, &BTreeMap::new())?,
    )?;
    mesh.net.create_bridge()?;
    info!(bridge = %mesh.net.bridge(), addr = %BRIDGE_IP, "network ready");

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
                format!("{BRIDGE_IP}:{IDENTITY_PORT}"),
                "--admin-listen".into(),
                format!("{BRIDGE_IP}:9990"),
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
                "--identity-dir".into(),
                path(&ca)?.into(),
                "--listen".into(),
                format!("{BRIDGE_IP}:{DESTINATION_PORT}"),
                "--admin-listen".into(),
                format!("{BRIDGE_IP}:9996"),
            ],
        ),
    ];
    for (name, argv) in control {
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
        wait_listening(SocketAddr::from((BRIDGE_IP, port)), Duration::from_secs(10)).await?;
    }
    info!("control plane up");

    let proxy_bin = procs::resolve_program("weft-proxy", manifests)?;
    let workloads: Vec<&String> = {
        let mut names: Vec<&String> = plan.pods.iter().map(|p| &p.deployment).collect();
        names.dedup();
        names
    };
    for (index, pod) in plan.pods.iter().enumerate() {
        let ns = mesh.net.namespace(&pod.name);
        mesh.net
            .create_pod(&pod.name, index, pod.ip, &pod.namespace, &plan.services)?;
        run_command(&[
            "ip",
            "netns",
            "exec",
            &ns,
            path(&proxy_bin)?,
            "init",
            "--proxy-uid",
            &PROXY_UID.to_string(),
            "--ipv6",
            "false",
            "--skip-inbound-ports",
            "4190,4191",
        ])?;
        let pod_dir = state.join("pods").join(&pod.name);
        std::fs::create_dir_all(&pod_dir)?;
        let token = run_command(&[
            weft,
            "identity",
            "token",
            "--dir",
            path(&ca)?,
            "--identity",
            &pod.identity,
        ])?;
        let token_file = pod_dir.join("token");
        write_private(&token_file, token.trim(), PROXY_UID)?;

        let in_pod = |uid: u32, program: &str| -> Vec<String> {
            let uid = uid.to_string();
            [
                "ip",
                "netns",
                "exec",
                &ns,
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
                "--",
                program,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let mut proxy_env = base_env(&mesh.name);
        proxy_env.extend([
            ("WEFT_PROXY_LOG".into(), "warn,weft_proxy=info".into()),
            (
                "WEFT_PROXY_IDENTITY_SVC_ADDR".into(),
                format!("{BRIDGE_IP}:{IDENTITY_PORT}"),
            ),
            (
                "WEFT_PROXY_IDENTITY_SVC_NAME".into(),
                crate::identity::IDENTITY_SERVICE_NAME.into(),
            ),
            (
                "WEFT_PROXY_IDENTITY_LOCAL_NAME".into(),
                pod.identity.clone(),
            ),
            (
                "WEFT_PROXY_IDENTITY_TOKEN_FILE".into(),
                path(&token_file)?.into(),
            ),
            ("WEFT_PROXY_IDENTITY_TRUST_ANCHORS".into(), anchors.clone()),
            (
                "WEFT_PROXY_DESTINATION_SVC_ADDR".into(),
                format!("{BRIDGE_IP}:{DESTINATION_PORT}"),
            ),
            (
                "WEFT_PROXY_DESTINATION_SVC_NAME".into(),
                crate::destination::DESTINATION_SERVICE_NAME.into(),
            ),
        ]);
        let proxy = Supervised::start(Spec {
            name: format!("{}/{} proxy", pod.namespace, pod.name),
            argv: in_pod(PROXY_UID, path(&proxy_bin)?),
            env: proxy_env,
            log: logs.join(format!("{}.proxy.log", pod.name)),
        })?;

        let program = pod.argv.first().context("a pod without a command")?;
        let program = procs::resolve_program(program, manifests)?;
        let workload_index = workloads
            .iter()
            .position(|w| **w == pod.deployment)
            .unwrap_or_default() as u32;
        let mut argv = in_pod(APP_UID_BASE + workload_index, path(&program)?);
        argv.extend(pod.argv.iter().skip(1).cloned());
        let mut env = base_env(&mesh.name);
        env.extend([
            ("POD_NAME".into(), pod.name.clone()),
            ("POD_NAMESPACE".into(), pod.namespace.clone()),
            ("POD_IP".into(), pod.ip.to_string()),
        ]);
        env.extend(pod.env.iter().cloned());
        let app = Supervised::start(Spec {
            name: format!("{}/{}", pod.namespace, pod.name),
            argv,
            env,
            log: logs.join(format!("{}.log", pod.name)),
        })?;
        mesh.pods.push(RunningPod {
            pod: pod.clone(),
            proxy,
            app,
            ready: false,
        });
    }
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Writes a secret readable only by `uid`.
fn write_private(file: &Path, contents: &str, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    f.write_all(contents.as_bytes())?;
    std::os::unix::fs::chown(file, Some(uid), Some(uid))
        .with_context(|| format!("giving {} to uid {uid}", file.display()))
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

async fn supervise(
    mesh: &mut Mesh,
    snapshot: &crate::store::Snapshot,
    plan: &crate::plan::Plan,
) -> anyhow::Result<()> {
    println!(
        "mesh {:?} is starting: {} pods; logs in {}",
        mesh.name,
        mesh.pods.len(),
        mesh.state.join("logs").display()
    );
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
    println!(
        "control plane: identity {BRIDGE_IP}:{IDENTITY_PORT}, destination {BRIDGE_IP}:{DESTINATION_PORT} (TLS; CA in {})\n",
        mesh.state.join("ca").display()
    );
    let mut shown = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return Ok(()),
        }
        for p in &mut mesh.control {
            p.tend();
        }
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
            let ready: BTreeMap<(String, String), bool> = mesh
                .pods
                .iter()
                .map(|r| ((r.pod.namespace.clone(), r.pod.name.clone()), r.ready))
                .collect();
            match render::cluster_state(snapshot, plan, &ready) {
                Ok(text) => {
                    if let Err(e) = render::write(&mesh.state.join("cluster"), &text) {
                        warn!(error = format!("{e:#}"), "cannot update the cluster state");
                    }
                }
                Err(e) => warn!(error = %e, "cannot render the cluster state"),
            }
        }
        let table = status_table(mesh);
        if table != shown {
            print!("{table}");
            let _ = std::io::stdout().flush();
            shown = table;
        }
    }
}

/// The workloads' state, one line each: ready pods, restarts.
fn status_table(mesh: &Mesh) -> String {
    let mut by_workload: BTreeMap<String, (usize, usize, u32, bool)> = BTreeMap::new();
    for r in &mesh.pods {
        let entry = by_workload
            .entry(format!("{}/{}", r.pod.namespace, r.pod.deployment))
            .or_default();
        entry.0 += usize::from(r.ready);
        entry.1 += 1;
        entry.2 += r.app.restarts + r.proxy.restarts;
        entry.3 |= r.ready;
    }
    let rows: Vec<Vec<String>> = by_workload
        .iter()
        .map(|(name, (ready, total, restarts, meshed))| {
            vec![
                name.clone(),
                format!("{ready}/{total}"),
                if *meshed { "yes" } else { "-" }.into(),
                restarts.to_string(),
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
    println!("stopping mesh {:?}", mesh.name);
    let mut apps: Vec<&mut Supervised> = mesh.pods.iter_mut().map(|r| &mut r.app).collect();
    procs::stop_all(&mut apps);
    let mut proxies: Vec<&mut Supervised> = mesh.pods.iter_mut().map(|r| &mut r.proxy).collect();
    procs::stop_all(&mut proxies);
    let mut control: Vec<&mut Supervised> = mesh.control.iter_mut().collect();
    procs::stop_all(&mut control);
    kill_strays(&mesh.name);
    let removed = mesh.net.delete_all();
    let _ = std::fs::remove_dir_all(mesh.state.join("cluster"));
    let _ = std::fs::remove_dir_all(mesh.state.join("pods"));
    println!(
        "stopped: {removed} pod namespaces removed; logs kept in {}",
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
    let mut killed = 0;
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
            killed += 1;
        }
    }
    killed
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
