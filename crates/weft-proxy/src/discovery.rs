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
//!
//! With a policy service, a target's resolution also follows its outbound
//! policy (`outbound/policy.rs`); the backends that policy names are
//! resolved as [`Discovery::subscribe_endpoints`], endpoints only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_identity::verify::TrustAnchors;

use crate::balance::Balancer;
use crate::dial::{Dialer, MeshEndpoint};
use crate::metrics::{DstLabels, Metrics};
use crate::outbound::policy::{OutboundClient, PolicyAnswer};
use crate::profile::Profile;
use weft_identity::control::ControlAddr;

/// Resolutions unused for this long are dropped (their streams closed).
const IDLE_EXPIRY: Duration = Duration::from_secs(60);
/// Most resolutions kept for reuse. Explicit-proxy clients name any target
/// they like; past this, the least recently used one nobody holds makes room,
/// and if every one is held, the new one lives only as long as its users
/// (the connection caps bound those).
const MAX_RESOLUTIONS: usize = 1000;
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);

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
    pub labels: DstLabels,
}

/// One target's live resolution.
#[derive(Debug)]
pub struct Resolution {
    pub target: String,
    answer: watch::Receiver<Option<Arc<Answer>>>,
    profile: watch::Receiver<Option<Arc<Profile>>>,
    /// The outbound policy, when a policy service is configured and this is
    /// a target the application addressed (not a policy's backend).
    policy: Option<watch::Receiver<Option<Arc<PolicyAnswer>>>>,
    pub balancer: Balancer,
    last_used: Mutex<Instant>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Resolution {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Resolution {
    /// The logical name this resolution's connections are labelled with:
    /// the service's fully qualified name and port once the profile names
    /// it (as Linkerd's `authority`), the target as asked until then.
    pub fn authority(&self) -> Arc<str> {
        let profile = self.profile.borrow();
        match (profile.as_deref(), self.target.rsplit_once(':')) {
            (Some(p), Some((_, port))) if !p.name.is_empty() => format!("{}:{port}", p.name).into(),
            _ => self.target.as_str().into(),
        }
    }

    /// The service profile, once the destination service has sent one.
    pub fn profile(&self) -> Option<Arc<Profile>> {
        self.profile.borrow().clone()
    }

    /// The outbound policy, waiting up to `timeout` for the first answer;
    /// `None` without a policy service, before an answer, or when the
    /// controller has none for the target.
    pub async fn policy(
        &self,
        timeout: Duration,
    ) -> Option<Arc<crate::outbound::policy::Compiled>> {
        let rx = self.policy.as_ref()?;
        let current = rx.borrow().clone();
        let answer = match current {
            Some(a) => a,
            None => {
                let mut rx = rx.clone();
                let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
                waited.ok()?.ok()?.clone()?
            }
        };
        match &*answer {
            PolicyAnswer::Policy(p) => Some(p.clone()),
            PolicyAnswer::None => None,
        }
    }

    /// Discovery's metric labels for one of the target's endpoints.
    pub fn labels(&self, addr: SocketAddr) -> DstLabels {
        match self.answer.borrow().as_deref() {
            Some(Answer::Endpoints(endpoints)) => endpoints
                .get(&addr)
                .map(|e| e.labels.clone())
                .unwrap_or_default(),
            _ => DstLabels::default(),
        }
    }

    /// The current answer, waiting up to `timeout` for the first one.
    pub async fn answer(&self, timeout: Duration) -> Option<Arc<Answer>> {
        *self.last_used.lock() = Instant::now();
        if let Some(a) = self.answer.borrow().clone() {
            return Some(a);
        }
        let mut rx = self.answer.clone();
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
    /// By target and whether only its endpoints are followed.
    resolutions: Mutex<HashMap<(String, Follow), Arc<Resolution>>>,
    dialer: Arc<Dialer>,
    metrics: Arc<Metrics>,
    policy: Option<Arc<OutboundClient>>,
}

/// What a resolution follows.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Follow {
    /// Endpoints, profile and (with a policy service) outbound policy: a
    /// target the application addressed.
    Target,
    /// Endpoints only: a backend an outbound policy names. Kept apart so a
    /// policy never holds its own target's resolution (a cycle).
    Endpoints,
}

impl Discovery {
    /// A client for the destination service (TLS when its identity is
    /// known). The connection is made lazily and re-made as needed.
    pub fn new(
        service: &ControlAddr,
        anchors: Option<&TrustAnchors>,
        context_token: String,
        dialer: Arc<Dialer>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        policy: Option<(&ControlAddr, &str)>,
    ) -> anyhow::Result<Arc<Discovery>> {
        let channel = weft_identity::control::channel(service, anchors, connect_timeout)?;
        let policy = match policy {
            Some((svc, workload)) => {
                let channel = weft_identity::control::channel(svc, anchors, connect_timeout)?;
                Some(Arc::new(OutboundClient::new(
                    channel,
                    svc.addr.clone(),
                    workload.to_string(),
                )))
            }
            None => None,
        };
        let discovery = Arc::new(Discovery {
            client: DestinationClient::new(channel),
            addr: service.addr.clone(),
            context_token,
            resolutions: Mutex::new(HashMap::new()),
            dialer,
            metrics,
            policy,
        });
        tokio::spawn(sweep(Arc::downgrade(&discovery)));
        Ok(discovery)
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared resolution of `target` (`ip:port` or `host:port`), as the
    /// application addressed it.
    pub fn subscribe(self: &Arc<Self>, target: &str) -> Arc<Resolution> {
        self.resolution(target, Follow::Target)
    }

    /// The shared resolution of a policy's backend (`name.ns.svc.domain:port`):
    /// its endpoints only.
    pub fn subscribe_endpoints(self: &Arc<Self>, target: &str) -> Arc<Resolution> {
        self.resolution(target, Follow::Endpoints)
    }

    fn resolution(self: &Arc<Self>, target: &str, follow: Follow) -> Arc<Resolution> {
        let key = (target.to_string(), follow);
        let mut map = self.resolutions.lock();
        if let Some(r) = map.get(&key) {
            return r.clone();
        }
        let (tx, rx) = watch::channel(None);
        let (profile_tx, profile_rx) = watch::channel(None);
        let resolution = Arc::new_cyclic(|weak: &std::sync::Weak<Resolution>| {
            let endpoints = tokio::spawn(follow_endpoints(
                self.clone(),
                target.to_string(),
                tx,
                weak.clone(),
            ));
            let mut tasks = vec![endpoints.abort_handle()];
            let mut policy = None;
            if follow == Follow::Target {
                let profile =
                    tokio::spawn(follow_profile(self.clone(), target.to_string(), profile_tx));
                tasks.push(profile.abort_handle());
                if let Some(client) = &self.policy {
                    let (policy_tx, policy_rx) = watch::channel(None);
                    let task = tokio::spawn(crate::outbound::policy::follow(
                        self.clone(),
                        client.clone(),
                        target.to_string(),
                        policy_tx,
                    ));
                    tasks.push(task.abort_handle());
                    policy = Some(policy_rx);
                }
            }
            Resolution {
                target: target.into(),
                answer: rx,
                profile: profile_rx,
                policy,
                balancer: Balancer::default(),
                last_used: Mutex::new(Instant::now()),
                tasks,
            }
        });
        if map.len() >= MAX_RESOLUTIONS {
            let unheld = map
                .iter()
                .filter(|(_, r)| Arc::strong_count(r) == 1)
                .min_by_key(|(_, r)| *r.last_used.lock())
                .map(|(key, _)| key.clone());
            match unheld {
                Some(oldest) => {
                    map.remove(&oldest);
                }
                None => {
                    warn!(
                        max = MAX_RESOLUTIONS,
                        "every kept resolution is in use; this one is not kept"
                    );
                    return resolution;
                }
            }
        }
        map.insert(key, resolution.clone());
        resolution
    }

    /// How many resolutions are kept for reuse.
    pub fn kept(&self) -> usize {
        self.resolutions.lock().len()
    }
}

/// Drops resolutions nobody has used for a while.
async fn sweep(discovery: std::sync::Weak<Discovery>) {
    loop {
        tokio::time::sleep(IDLE_EXPIRY / 4).await;
        let Some(d) = discovery.upgrade() else { return };
        let now = Instant::now();
        d.resolutions.lock().retain(|_, r| {
            Arc::strong_count(r) > 1 || now.duration_since(*r.last_used.lock()) < IDLE_EXPIRY
        });
    }
}

/// Keeps a stream open for `target` for as long as the resolution lives:
/// `open` starts it, `on_message` sees each message (and whether it is the
/// first of its stream); failures are retried with back-off.
async fn follow<T, F, Fut>(
    discovery: &Discovery,
    target: &str,
    what: &'static str,
    open: F,
    mut on_message: impl FnMut(T, bool),
    has_answer: impl Fn() -> bool,
) where
    F: Fn(DestinationClient<Channel>, api::GetDestination) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let metrics = &discovery.metrics;
    let mut backoff = BACKOFF_MIN;
    loop {
        let request = api::GetDestination {
            scheme: "k8s".into(),
            path: target.to_string(),
            context_token: discovery.context_token.clone(),
        };
        metrics.control_request(&discovery.addr);
        let ended = match open(discovery.client.clone(), request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                let _active = metrics.control_stream_active(&discovery.addr);
                let mut first = true;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            metrics.control_update(&discovery.addr);
                            backoff = BACKOFF_MIN;
                            on_message(message, first);
                            first = false;
                        }
                        Ok(None) => break tonic::Status::unavailable("stream ended"),
                        Err(status) => break status,
                    }
                }
            }
        };
        metrics.control_failure(&discovery.addr);
        if has_answer() {
            info!(%target, what, error = weft_identity::control::status_reason(&ended), ?backoff, "destination stream lost; serving the last known answer");
        } else {
            warn!(%target, what, error = weft_identity::control::status_reason(&ended), ?backoff, "cannot resolve through the destination service; retrying");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Follows `Get` for `target`.
async fn follow_endpoints(
    discovery: Arc<Discovery>,
    target: String,
    tx: watch::Sender<Option<Arc<Answer>>>,
    resolution: std::sync::Weak<Resolution>,
) {
    let mut endpoints: BTreeMap<SocketAddr, EndpointInfo> = BTreeMap::new();
    let mut exists = false;
    let on_update = |update: api::Update, first: bool| {
        if first {
            // The first message of a stream replaces what an earlier stream left.
            endpoints.clear();
        }
        apply(update, &mut endpoints, &mut exists);
        publish(&discovery, &tx, &resolution, &endpoints, exists);
    };
    follow(
        &discovery,
        &target,
        "endpoints",
        |mut client, req| async move { client.get(req).await },
        on_update,
        || tx.borrow().is_some(),
    )
    .await;
}

/// Follows `GetProfile` for `target`.
async fn follow_profile(
    discovery: Arc<Discovery>,
    target: String,
    tx: watch::Sender<Option<Arc<Profile>>>,
) {
    let on_profile = |p: api::DestinationProfile, _first: bool| {
        // The retry budget carries over when its parameters are unchanged.
        let previous = tx.borrow().as_ref().map(|p| p.budget.clone());
        let profile = Profile::from_proto(p, previous);
        tx.send_replace(Some(Arc::new(profile)));
    };
    follow(
        &discovery,
        &target,
        "profile",
        |mut client, req| async move { client.get_profile(req).await },
        on_profile,
        || tx.borrow().is_some(),
    )
    .await;
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
        let gone: Vec<SocketAddr> = match tx.borrow().as_deref() {
            Some(Answer::Endpoints(before)) => before
                .keys()
                .filter(|a| !endpoints.contains_key(a))
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        discovery.dialer.learn_labels(
            resolution,
            endpoints.iter().map(|(a, e)| (a, &e.labels)),
            gone.into_iter(),
        );
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
                let labels = DstLabels::new(&labels);
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
    let hint = a.protocol_hint.as_ref();
    let opaque_transport_port = hint
        .and_then(|h| h.opaque_transport.as_ref())
        .and_then(|t| u16::try_from(t.inbound_port).ok())
        .filter(|p| *p != 0);
    let http2_upgrade = hint.is_some_and(|h| {
        matches!(
            h.protocol,
            Some(api::protocol_hint::Protocol::H2(api::protocol_hint::H2 {}))
        )
    });
    Ok(Some(MeshEndpoint {
        identity,
        opaque_transport_port,
        http2_upgrade,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_resolutions_are_bounded_whatever_targets_clients_name() {
        let metrics = Metrics::new(Default::default(), false);
        let dialer = Arc::new(Dialer {
            metrics: metrics.clone(),
            inbound_connect_timeout: Duration::from_secs(1),
            outbound_connect_timeout: Duration::from_secs(1),
            outbound_identities: Default::default(),
            endpoint_labels: Default::default(),
            mesh: None,
        });
        // Nothing listens there; the channel is lazy and only retries.
        let service = ControlAddr {
            addr: "127.0.0.1:9".into(),
            identity: None,
        };
        let discovery = Discovery::new(
            &service,
            None,
            String::new(),
            dialer,
            metrics,
            Duration::from_millis(100),
            None,
        )
        .unwrap();
        for n in 0..MAX_RESOLUTIONS + 500 {
            discovery.subscribe(&format!("attacker-{n}.svc.cluster.local:80"));
        }
        assert_eq!(discovery.kept(), MAX_RESOLUTIONS);

        // Held ones are never evicted; a new one past them is not kept.
        let held: Vec<_> = (0..MAX_RESOLUTIONS)
            .map(|n| discovery.subscribe(&format!("held-{n}:80")))
            .collect();
        let extra = discovery.subscribe("one-more:80");
        assert_eq!(discovery.kept(), MAX_RESOLUTIONS);
        assert!(Arc::ptr_eq(&held[0], &discovery.subscribe("held-0:80")));
        assert_eq!(Arc::strong_count(&extra), 1);
    }
}
