//! `destination-load`: the control plane's scale benchmark. Generates a
//! directory of manifests (services × endpoints), runs a real
//! `weft control destination` over it, opens many `Destination/Get` watches
//! the way a mesh of proxies would (a few streams per connection, many
//! connections), then edits manifests one at a time and times how long each
//! edit takes to reach every watcher of the edited service. Prints one JSON
//! object; progress goes to stderr.
//!
//! Addresses in the manifests come from 198.18.0.0/15 and are never dialled:
//! the destination service only describes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(name = "destination-load")]
struct Cli {
    /// The `weft` binary to run as the destination service.
    #[arg(long)]
    weft: PathBuf,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Watches in all, spread evenly over the services.
    #[arg(long, default_value_t = 5000)]
    watches: usize,
    /// HTTP/2 connections the watches share (a proxy holds one each).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Manifest edits timed one after another.
    #[arg(long, default_value_t = 30)]
    updates: usize,
    /// Seconds of idle time over which the idle CPU is measured.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
}

const NAMESPACE: &str = "bench";

fn workload_ip(service: usize, endpoint: usize, endpoints: usize) -> Ipv4Addr {
    let n = (service * endpoints + endpoint + 1) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n)
}

fn cluster_ip(service: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) + service as u32)
}

/// One file per service: the Service and its `endpoints` workloads.
fn service_file(service: usize, endpoints: usize) -> String {
    let name = format!("svc-{service:04}");
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  clusterIP: {}\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: http}}]\n",
        cluster_ip(service)
    );
    for e in 0..endpoints {
        out.push_str(&format!(
            "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {name}-{e}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}\nspec:\n  meshTLS: {{identity: {name}.{NAMESPACE}.serviceaccount.identity.weft.cluster.local}}\n  ports: [{{name: http, port: 8080}}]\n  workloadIPs: [{{ip: {}}}]\n",
            workload_ip(service, e, endpoints)
        ));
    }
    out
}

fn write_atomically(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// (VmRSS, VmHWM) in KiB, and CPU seconds, of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field("VmRSS:"), field("VmHWM:"), ticks / hz))
}

struct Destination {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_destination(weft: &Path, dir: &Path) -> anyhow::Result<Destination> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let child = Command::new(weft)
        .args(["control", "destination", "--manifests"])
        .arg(dir)
        .args(["--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .env(
            "WEFT_LOG",
            std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", weft.display()))?;
    Ok(Destination { child, addr })
}

fn target(service: usize) -> String {
    format!("svc-{service:04}.{NAMESPACE}.svc.cluster.local:80")
}

/// Endpoints in an update: added minus removed.
fn endpoint_delta(update: &api::Update) -> i64 {
    match &update.update {
        Some(api::update::Update::Add(set)) => set.addrs.len() as i64,
        Some(api::update::Update::Remove(set)) => -(set.addrs.len() as i64),
        _ => 0,
    }
}

/// Every message a watch receives: (service, endpoints added or removed).
type Seen = mpsc::UnboundedSender<(usize, i64)>;

/// Opens one watch and reports each message.
async fn watch(
    mut client: DestinationClient<tonic::transport::Channel>,
    service: usize,
    seen: Seen,
) -> anyhow::Result<()> {
    let request = api::GetDestination {
        scheme: "k8s".into(),
        path: target(service),
        context_token: String::new(),
    };
    let mut stream = client.get(request).await?.into_inner();
    while let Some(update) = stream.message().await? {
        if seen.send((service, endpoint_delta(&update))).is_err() {
            break;
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.services == 0 || cli.endpoints < 2 || cli.watches < cli.services {
        bail!("need at least one service, two endpoints each, and a watch per service");
    }
    let dir = std::env::temp_dir().join(format!("weft-destination-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&cli, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn run(cli: &Cli, dir: &Path) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "writing {} services x {} endpoints to {}",
        cli.services,
        cli.endpoints,
        dir.display()
    );
    for s in 0..cli.services {
        std::fs::write(
            dir.join(format!("svc-{s:04}.yaml")),
            service_file(s, cli.endpoints),
        )?;
    }
    let started = Instant::now();
    let destination = start_destination(&cli.weft, dir)?;
    let pid = destination.child.id();

    // Loaded when the last service answers with all its endpoints.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", destination.addr))?
        .connect_timeout(Duration::from_secs(1));
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = loop {
        if Instant::now() > deadline {
            bail!("the destination service did not load the manifests within 60 s");
        }
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let last = cli.services - 1;
    tokio::spawn(watch(DestinationClient::new(probe), last, probe_tx));
    let mut loaded = 0i64;
    while loaded < cli.endpoints as i64 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, probe_rx.recv()).await {
            Ok(Some((_, delta))) => loaded += delta,
            _ => bail!("the destination service did not load the manifests within 60 s"),
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_loaded, _, _) = usage(pid)?;
    eprintln!(
        "loaded in {load_s:.2}s, {rss_loaded} KiB; opening {} watches on {} connections",
        cli.watches, cli.connections
    );

    let mut channels = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        channels.push(endpoint.connect().await?);
    }
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    // Set when the measurement ends: the watches then end with the server.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opening = Instant::now();
    for w in 0..cli.watches {
        let client = DestinationClient::new(channels[w % channels.len()].clone());
        let (seen, service) = (seen_tx.clone(), w % cli.services);
        let finished = finished.clone();
        tokio::spawn(async move {
            let result = watch(client, service, seen).await;
            if let (Err(e), false) = (result, finished.load(Ordering::Relaxed)) {
                eprintln!("watch {w} ended: {e}");
            }
        });
    }
    drop(seen_tx);
    let mut first = 0;
    while first < cli.watches {
        match tokio::time::timeout(Duration::from_secs(60), seen_rx.recv()).await {
            Ok(Some(_)) => first += 1,
            _ => bail!("only {first} of {} watches answered", cli.watches),
        }
    }
    let open_s = opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_watched, _, cpu_before_idle) = usage(pid)?;
    tokio::time::sleep(Duration::from_secs(cli.idle_seconds)).await;
    let (_, _, cpu_after_idle) = usage(pid)?;
    let idle_cpu_percent =
        (cpu_after_idle - cpu_before_idle) / cli.idle_seconds.max(1) as f64 * 100.0;
    eprintln!(
        "{} watches answered in {open_s:.2}s; {rss_watched} KiB; idle CPU {idle_cpu_percent:.1}%",
        cli.watches
    );

    // An edit's latency is until the last of that service's watchers has
    // heard of it.
    let watchers_per_service =
        |s: usize| (0..cli.watches).filter(|w| w % cli.services == s).count();
    let mut latencies_ms = Vec::with_capacity(cli.updates);
    let cpu_before_updates = usage(pid)?.2;
    for u in 0..cli.updates {
        // Edits come in pairs on one service: drop an endpoint, restore it.
        let service = (u / 2 * 37) % cli.services;
        let endpoints = if u % 2 == 0 {
            cli.endpoints - 1
        } else {
            cli.endpoints
        };
        let mut text = service_file(service, cli.endpoints);
        if endpoints < cli.endpoints {
            let cut = text.rfind("---\n").unwrap_or(text.len());
            text.truncate(cut);
        }
        // Drain anything stale before timing.
        while seen_rx.try_recv().is_ok() {}
        let edited = Instant::now();
        write_atomically(dir, &format!("svc-{service:04}.yaml"), &text)?;
        let mut heard = 0;
        let expected = watchers_per_service(service);
        while heard < expected {
            match tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await {
                Ok(Some((s, _))) if s == service => heard += 1,
                Ok(Some(_)) => {}
                _ => bail!("edit {u} of svc-{service:04} reached {heard} of {expected} watchers"),
            }
        }
        latencies_ms.push(edited.elapsed().as_secs_f64() * 1e3);
        // Let the store's next poll see a settled directory.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (rss_end, hwm_end, cpu_end) = usage(pid)?;
    latencies_ms.sort_by(f64::total_cmp);
    eprintln!(
        "{} edits: p50 {:.0} ms, max {:.0} ms",
        cli.updates,
        percentile(&latencies_ms, 50.0),
        percentile(&latencies_ms, 100.0)
    );
    finished.store(true, Ordering::Relaxed);
    drop(destination);
    Ok(serde_json::json!({
        "services": cli.services,
        "endpoints_per_service": cli.endpoints,
        "watches": cli.watches,
        "connections": cli.connections,
        "load_s": round(load_s),
        "rss_loaded_kib": rss_loaded,
        "watches_open_s": round(open_s),
        "rss_watched_kib": rss_watched,
        "rss_end_kib": rss_end,
        "hwm_kib": hwm_end,
        "idle_cpu_percent": round(idle_cpu_percent),
        "update_cpu_s": round(cpu_end - cpu_before_updates),
        "updates": cli.updates,
        "update_latency_ms": {
            "p50": round(percentile(&latencies_ms, 50.0)),
            "p90": round(percentile(&latencies_ms, 90.0)),
            "max": round(percentile(&latencies_ms, 100.0)),
        },
    }))
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
