//! The destination client: resolves outbound targets through the control
//! plane's `Destination/Get` and keeps each answer current.
//!
//! Each target (an original destination `ip:port`, or a service authority in
//! explicit-proxy mode) has one [`Resolution`], shared by every connection
//! to it and kept for a while after the last one ends, so short-lived
//! connections do not re-subscribe. A background task follows the stream;
//! when the control plane goes away, the last known endpoints keep serving
//! while the task reconnects with back-off, and the first message of the new
//! stream replaces the stale set (as destination.proto asks).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::balance::Balancer;
use crate::metrics::Metrics;
use crate::tcp::{Dialer, MeshEndpoint};

/// Resolutions unused for this long are dropped (their streams closed).
const IDLE_EXPIRY: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the destination service says about a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not a mesh service: forward to the address as given.
    Unknown,
    /// A service with these endpoints (possibly none).
    Endpoints(BTreeMap<SocketAddr, EndpointInfo>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub mesh: Option<MeshEndpoint>,
    pub labels: BTreeMap<String, String>,
}

/// One target's live resolution.
#[derive(Debug)]
pub struct Resolution {
    pub target: String,
    answer: watch::Receiver<Option<Arc<Answer>>>,
    pub balancer: Balancer,
    last_used: Mutex<Instant>,
    task: tokio::task::AbortHandle,
}

impl Drop for Resolution {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolution {
    /// The current answer, waiting up to `timeout` for the first one.
    pub async fn answer(&self, timeout: Duration) -> Option<Arc<Answer>> {
        *lock(&self.last_used) = Instant::now();
        let mut rx = self.answer.clone();
        if let Some(a) = rx.borrow_and_update().clone() {
            return Some(a);
        }
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(a)) => a.clone(),
            _ => None,
        }
    }
}

/// The proxy's destination client and its resolutions.
#[derive(Debug)]
pub struct Discovery {
    client: DestinationClient<Channel>,
    addr: String,
    context_token: String,
    resolutions: Mutex<HashMap<String, Arc<Resolution>>>,
    dialer: Arc<Dialer>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// A client for the destination service at `addr` (host:port). The
    /// connection is made lazily and re-made as needed.
    pub fn new(
        addr: &str,
        context_token: String,
        dialer: Arc<Dialer>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Arc<Discovery>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| anyhow::anyhow!("destination address {addr:?}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let discovery = Arc::new(Discovery {
            client: DestinationClient::new(channel),
            addr: addr.into(),
            context_token,
            resolutions: Mutex::new(HashMap::new()),
            dialer,
            metrics,
        });
        tokio::spawn(sweep(Arc::downgrade(&discovery)));
        Ok(discovery)
    }

    /// The shared resolution of `target` (`ip:port` or `host:port`).
    pub fn resolve(self: &Arc<Self>, target: &str) -> Arc<Resolution> {
        let mut map = lock(&self.resolutions);
        if let Some(r) = map.get(target) {
            return r.clone();
        }
        let (tx, rx) = watch::channel(None);
        let resolution = Arc::new_cyclic(|weak: &std::sync::Weak<Resolution>| {
            let task = tokio::spawn(follow(self.clone(), target.to_string(), tx, weak.clone()));
            Resolution {
                target: target.into(),
                answer: rx,
                balancer: Balancer::default(),
                last_used: Mutex::new(Instant::now()),
                task: task.abort_handle(),
            }
        });
        map.insert(target.into(), resolution.clone());
        resolution
    }
}

/// Drops resolutions nobody has used for a while.
async fn sweep(discovery: std::sync::Weak<Discovery>) {
    loop {
        tokio::time::sleep(IDLE_EXPIRY / 4).await;
        let Some(d) = discovery.upgrade() else { return };
        let now = Instant::now();
        lock(&d.resolutions).retain(|_, r| {
            Arc::strong_count(r) > 1 || now.duration_since(*lock(&r.last_used)) < IDLE_EXPIRY
        });
    }
}

/// Follows the Get stream for `target` for as long as the resolution lives.
async fn follow(
    discovery: Arc<Discovery>,
    target: String,
    tx: watch::Sender<Option<Arc<Answer>>>,
    resolution: std::sync::Weak<Resolution>,
) {
    let metrics = &discovery.metrics;
    let mut backoff = BACKOFF_MIN;
    let mut endpoints: BTreeMap<SocketAddr, EndpointInfo> = BTreeMap::new();
    let mut exists = false;
    loop {
        let request = api::GetDestination {
            scheme: "k8s".into(),
            path: target.clone(),
            context_token: discovery.context_token.clone(),
        };
        metrics.control_request(&discovery.addr);
        let ended = match discovery.client.clone().get(request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                let _active = metrics.control_stream_active(&discovery.addr);
                let mut first = true;
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            metrics.control_update(&discovery.addr);
                            backoff = BACKOFF_MIN;
                            if first {
                                // The first message of a stream replaces what an
                                // earlier stream left.
                                endpoints.clear();
                                first = false;
                            }
                            apply(update, &mut endpoints, &mut exists);
                            publish(&discovery, &tx, &resolution, &endpoints, exists);
                        }
                        Ok(None) => break tonic::Status::unavailable("stream ended"),
                        Err(status) => break status,
                    }
                }
            }
        };
        metrics.control_failure(&discovery.addr);
        if tx.borrow().is_some() {
            info!(%target, error = %ended.message(), ?backoff, "destination stream lost; serving the last known endpoints");
        } else {
            warn!(%target, error = %ended.message(), ?backoff, "cannot resolve through the destination service; retrying");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn publish(
    discovery: &Discovery,
    tx: &watch::Sender<Option<Arc<Answer>>>,
    resolution: &std::sync::Weak<Resolution>,
    endpoints: &BTreeMap<SocketAddr, EndpointInfo>,
    exists: bool,
) {
    let answer = if exists || !endpoints.is_empty() {
        Answer::Endpoints(endpoints.clone())
    } else {
        Answer::Unknown
    };
    for (addr, info) in endpoints {
        if let Some(mesh) = &info.mesh {
            discovery.dialer.learn(*addr, mesh.clone());
        }
    }
    if let Some(r) = resolution.upgrade() {
        r.balancer.update(endpoints.keys().copied());
    }
    debug!(endpoints = endpoints.len(), exists, "destination update");
    tx.send_if_modified(|current| {
        let changed = current.as_deref() != Some(&answer);
        if changed {
            *current = Some(Arc::new(answer));
        }
        changed
    });
}

fn apply(
    update: api::Update,
    endpoints: &mut BTreeMap<SocketAddr, EndpointInfo>,
    exists: &mut bool,
) {
    match update.update {
        Some(api::update::Update::Add(set)) => {
            *exists = true;
            for a in set.addrs {
                let Some(addr) = a.addr.and_then(|a| SocketAddr::try_from(a).ok()) else {
                    continue;
                };
                let mut labels: BTreeMap<String, String> = set
                    .metric_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                labels.extend(a.metric_labels.clone());
                let mesh = match mesh_endpoint(&a) {
                    Ok(mesh) => mesh,
                    Err(e) => {
                        // Reaching it in plaintext would be unsafe: leave it out.
                        warn!(%addr, error = %e, "endpoint with an unusable identity skipped");
                        continue;
                    }
                };
                endpoints.insert(addr, EndpointInfo { mesh, labels });
            }
        }
        Some(api::update::Update::Remove(set)) => {
            for a in set.addrs {
                if let Ok(addr) = SocketAddr::try_from(a) {
                    endpoints.remove(&addr);
                }
            }
        }
        Some(api::update::Update::NoEndpoints(n)) => {
            endpoints.clear();
            *exists = n.exists;
        }
        None => {}
    }
}

/// The identity (and transport-header port) an address must be reached
/// with; `None` for an unmeshed endpoint.
fn mesh_endpoint(a: &api::WeightedAddr) -> Result<Option<MeshEndpoint>, String> {
    use api::tls_identity::Strategy;
    let Some(strategy) = a.tls_identity.as_ref().and_then(|t| t.strategy.as_ref()) else {
        return Ok(None);
    };
    let name = match strategy {
        Strategy::DnsLikeIdentity(d) => d.name.as_str(),
        Strategy::UriLikeIdentity(u) => u.uri.as_str(),
    };
    let identity = name
        .parse()
        .map_err(|e: weft_identity::name::NameError| format!("identity {name:?}: {e}"))?;
    let opaque_transport_port = a
        .protocol_hint
        .as_ref()
        .and_then(|h| h.opaque_transport.as_ref())
        .and_then(|t| u16::try_from(t.inbound_port).ok())
        .filter(|p| *p != 0);
    Ok(Some(MeshEndpoint {
        identity,
        opaque_transport_port,
    }))
}
