//! The destination service: `io.linkerd.proxy.destination.Destination` over
//! the store's snapshots.
//!
//! Each distinct lookup target (a service authority or an IP:port) has one
//! shared entry in the [`Index`]: a watch channel holding its current
//! resolution and profile. When the store publishes a snapshot, the index
//! recomputes only the targets someone watches, and wakes a target's
//! watchers only if its answer changed. Each `Get` stream then turns
//! successive resolutions into Add / Remove / NoEndpoints deltas, following
//! the ordering rules in destination.proto.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_server::Destination as DestinationApi;
use linkerd2_proxy_api::meta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::store::Snapshot;
use weft_api::{
    ExternalWorkload, Key, PortRef, RequestMatchSpec, ResponseMatchSpec, Service, ServiceProfile,
    http_method, opaque_ports,
};

/// Linkerd's default endpoint weight.
const DEFAULT_WEIGHT: u32 = 10_000;

/// What a proxy asked about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `name.namespace.svc.<cluster domain>:port`.
    Service { key: Key, port: u16 },
    /// An IP:port: a service's cluster IP or a workload's IP.
    Addr(SocketAddr),
    /// A name outside the cluster domain: not ours to answer.
    Unknown(String),
}

impl Target {
    pub fn parse(path: &str, cluster_domain: &str) -> Result<Target, String> {
        if let Ok(addr) = path.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = match path.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or(format!("{path:?}: {port:?} is not a port"))?,
            ),
            None => (path, 80),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{path:?} names no host"));
        }
        let suffix = format!(".svc.{cluster_domain}");
        let Some(service) = host.strip_suffix(&suffix) else {
            return Ok(Target::Unknown(host));
        };
        match service.split_once('.') {
            Some((name, namespace)) if !name.is_empty() && !namespace.contains('.') => {
                Ok(Target::Service {
                    key: Key {
                        namespace: namespace.into(),
                        name: name.into(),
                    },
                    port,
                })
            }
            _ => Err(format!(
                "{path:?} is not <service>.<namespace>{suffix}:<port>"
            )),
        }
    }
}

/// One endpoint as the destination service describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub workload: Key,
    /// The workload's own metric labels (`pod`, `deployment`, ...).
    pub metric_labels: BTreeMap<String, String>,
    pub identity: Option<String>,
    pub weight: u32,
    /// The target port is opaque: no HTTP, transport header to `inbound_port`.
    pub opaque: bool,
    pub inbound_port: u16,
}

/// The answer to a `Get`, at one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    pub exists: bool,
    /// Labels for the whole set (namespace, service).
    pub labels: BTreeMap<String, String>,
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
}

fn endpoint(w: &ExternalWorkload, opaque: bool) -> Endpoint {
    Endpoint {
        workload: w.metadata.key(),
        metric_labels: metric_labels(w),
        identity: w.spec.mesh_tls.as_ref().map(|t| t.identity.clone()),
        weight: DEFAULT_WEIGHT,
        opaque,
        inbound_port: w.proxy_inbound_port(),
    }
}

/// The labels a proxy puts on its metrics of requests to `w` (as
/// `dst_<name>`), as Linkerd's destination service gives them: a pod of a
/// Deployment is `pod` and `deployment`, with its control plane and template
/// hash; any other workload is `external_workload`. `zone` is always there
/// (empty here: the local mesh has no zones).
fn metric_labels(w: &ExternalWorkload) -> BTreeMap<String, String> {
    let meta = &w.metadata;
    let mut labels = BTreeMap::from([
        ("namespace".to_string(), meta.namespace.clone()),
        ("zone".to_string(), String::new()),
    ]);
    match meta.labels.get(weft_api::WORKLOAD_LABEL) {
        Some(deployment) => {
            labels.insert("pod".into(), meta.name.clone());
            labels.insert("deployment".into(), deployment.clone());
            for (label, name) in [
                (weft_api::CONTROL_PLANE_NS_LABEL, "control_plane_ns"),
                (weft_api::POD_TEMPLATE_HASH_LABEL, "pod_template_hash"),
            ] {
                if let Some(value) = meta.labels.get(label) {
                    labels.insert(name.into(), value.clone());
                }
            }
        }
        None => {
            labels.insert("external_workload".into(), meta.name.clone());
        }
    }
    labels
}

/// The ready endpoints of `svc` for its port `port`.
fn service_endpoints(snapshot: &Snapshot, key: &Key, svc: &Service, port: u16) -> EndpointSet {
    let mut res = EndpointSet {
        exists: true,
        labels: BTreeMap::from([
            ("namespace".into(), key.namespace.clone()),
            ("service".into(), key.name.clone()),
        ]),
        endpoints: BTreeMap::new(),
    };
    let Some(sp) = svc.spec.ports.iter().find(|p| p.port == port) else {
        return res;
    };
    let service_opaque = in_ranges(&opaque_ports(&svc.metadata).unwrap_or_default(), port);
    for w in snapshot.selected(svc) {
        if !w.is_ready() {
            continue;
        }
        let target_port = match &sp.target_port {
            None => port,
            Some(PortRef::Number(n)) => *n,
            Some(PortRef::Name(name)) => {
                match w
                    .spec
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name))
                {
                    Some(p) => p.port,
                    None => continue,
                }
            }
        };
        let opaque = service_opaque
            || in_ranges(&opaque_ports(&w.metadata).unwrap_or_default(), target_port);
        for ip in &w.spec.workload_ips {
            res.endpoints
                .insert(SocketAddr::new(ip.ip, target_port), endpoint(w, opaque));
        }
    }
    res
}

/// What the store says about `target` now.
pub fn endpoint_set(snapshot: &Snapshot, target: &Target) -> EndpointSet {
    match target {
        Target::Service { key, port } => match snapshot.services.get(key) {
            Some(svc) => service_endpoints(snapshot, key, svc, *port),
            None => EndpointSet::default(),
        },
        Target::Addr(addr) => {
            if let Some((key, svc)) = snapshot.service_by_cluster_ip(addr.ip()) {
                return service_endpoints(snapshot, key, svc, addr.port());
            }
            match snapshot.workload_by_ip(addr.ip()) {
                Some(w) => {
                    let opaque =
                        in_ranges(&opaque_ports(&w.metadata).unwrap_or_default(), addr.port());
                    EndpointSet {
                        exists: true,
                        labels: BTreeMap::from([(
                            "namespace".into(),
                            w.metadata.namespace.clone(),
                        )]),
                        endpoints: BTreeMap::from([(*addr, endpoint(w, opaque))]),
                    }
                }
                None => EndpointSet::default(),
            }
        }
        Target::Unknown(_) => EndpointSet::default(),
    }
}

fn weighted_addr(addr: SocketAddr, e: &Endpoint) -> api::WeightedAddr {
    let mut labels: HashMap<String, String> = e.metric_labels.clone().into_iter().collect();
    let tls_identity = e.identity.as_ref().map(|id| {
        if let Some(sa) = id.split('.').next() {
            labels.insert("serviceaccount".into(), sa.into());
        }
        api::TlsIdentity {
            strategy: Some(api::tls_identity::Strategy::DnsLikeIdentity(
                api::tls_identity::DnsLikeIdentity { name: id.clone() },
            )),
            server_name: Some(api::tls_identity::DnsLikeIdentity { name: id.clone() }),
        }
    });
    // Meshed endpoints take HTTP/2 (Linkerd's HTTP/1 upgrade) or, on opaque
    // ports, a transport header on their proxy's inbound port.
    let protocol_hint = e.identity.as_ref().map(|_| {
        use api::protocol_hint::{H2, Opaque, OpaqueTransport, Protocol};
        if e.opaque {
            api::ProtocolHint {
                protocol: Some(Protocol::Opaque(Opaque {})),
                opaque_transport: Some(OpaqueTransport {
                    inbound_port: u32::from(e.inbound_port),
                }),
            }
        } else {
            api::ProtocolHint {
                protocol: Some(Protocol::H2(H2 {})),
                opaque_transport: None,
            }
        }
    });
    api::WeightedAddr {
        addr: Some(addr.into()),
        weight: e.weight,
        metric_labels: labels,
        tls_identity,
        protocol_hint,
        resource_ref: Some(resource(
            "workload.linkerd.io",
            "ExternalWorkload",
            &e.workload,
            0,
        )),
        ..Default::default()
    }
}

fn resource(group: &str, kind: &str, key: &Key, port: u16) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: group.into(),
            kind: kind.into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            port: u32::from(port),
            ..Default::default()
        })),
    }
}

fn update(u: api::update::Update) -> api::Update {
    api::Update { update: Some(u) }
}

fn no_endpoints(exists: bool) -> api::Update {
    update(api::update::Update::NoEndpoints(api::NoEndpoints {
        exists,
    }))
}

fn add<'a>(
    labels: &BTreeMap<String, String>,
    endpoints: impl Iterator<Item = (&'a SocketAddr, &'a Endpoint)>,
) -> api::Update {
    update(api::update::Update::Add(api::WeightedAddrSet {
        addrs: endpoints.map(|(a, e)| weighted_addr(*a, e)).collect(),
        metric_labels: labels.clone().into_iter().collect(),
    }))
}

/// The messages that take a client from `last` (None: nothing sent yet) to
/// `next`. The first message is always sent and is never `no_endpoints`
/// when there are endpoints; an emptied set becomes `no_endpoints{exists}`.
pub fn deltas(last: Option<&EndpointSet>, next: &EndpointSet) -> Vec<api::Update> {
    let Some(last) = last else {
        return vec![if next.endpoints.is_empty() {
            no_endpoints(next.exists)
        } else {
            add(&next.labels, next.endpoints.iter())
        }];
    };
    if next.endpoints.is_empty() {
        let changed = !last.endpoints.is_empty() || last.exists != next.exists;
        return if changed {
            vec![no_endpoints(next.exists)]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let removed: Vec<_> = last
        .endpoints
        .keys()
        .filter(|a| !next.endpoints.contains_key(a))
        .map(|a| (*a).into())
        .collect();
    if !removed.is_empty() {
        out.push(update(api::update::Update::Remove(api::AddrSet {
            addrs: removed,
        })));
    }
    let labels_changed = last.labels != next.labels;
    let added: Vec<_> = next
        .endpoints
        .iter()
        .filter(|(a, e)| labels_changed || last.endpoints.get(a) != Some(e))
        .collect();
    if !added.is_empty() {
        out.push(add(&next.labels, added.into_iter()));
    }
    out
}

/// The profile for `target` now.
pub fn profile(
    snapshot: &Snapshot,
    target: &Target,
    cluster_domain: &str,
) -> api::DestinationProfile {
    let service = match target {
        Target::Service { key, port } => snapshot
            .services
            .get(key)
            .map(|svc| (key.clone(), &**svc, *port)),
        Target::Addr(addr) => snapshot
            .service_by_cluster_ip(addr.ip())
            .map(|(key, svc)| (key.clone(), svc, addr.port())),
        Target::Unknown(_) => None,
    };
    let Some((key, svc, port)) = service else {
        // A workload IP: the endpoint itself, no service routes.
        if let Target::Addr(addr) = target
            && let Some(w) = snapshot.workload_by_ip(addr.ip())
        {
            let opaque = in_ranges(&opaque_ports(&w.metadata).unwrap_or_default(), addr.port());
            return api::DestinationProfile {
                opaque_protocol: opaque,
                endpoint: Some(weighted_addr(*addr, &endpoint(w, opaque))),
                retry_budget: Some(default_budget()),
                ..Default::default()
            };
        }
        return api::DestinationProfile::default();
    };
    let fqdn = format!("{}.{}.svc.{cluster_domain}", key.name, key.namespace);
    let sp = snapshot.profiles.get(&Key {
        namespace: key.namespace.clone(),
        name: fqdn.clone(),
    });
    let opaque = in_ranges(&opaque_ports(&svc.metadata).unwrap_or_default(), port)
        || sp.is_some_and(|p| p.spec.opaque_ports.contains(&port));
    api::DestinationProfile {
        fully_qualified_name: fqdn,
        opaque_protocol: opaque,
        // Opaque traffic has no requests to route.
        routes: sp
            .filter(|_| !opaque)
            .map(|p| routes(p))
            .unwrap_or_default(),
        retry_budget: Some(
            sp.and_then(|p| p.spec.retry_budget.as_ref())
                .map(|b| api::RetryBudget {
                    retry_ratio: b.retry_ratio,
                    min_retries_per_second: b.min_retries_per_second,
                    ttl: b.ttl.and_then(|t| prost_types::Duration::try_from(t).ok()),
                })
                .unwrap_or_else(default_budget),
        ),
        parent_ref: Some(resource("core", "Service", &key, port)),
        profile_ref: sp.map(|p| resource("linkerd.io", "ServiceProfile", &p.metadata.key(), 0)),
        ..Default::default()
    }
}

/// Linkerd's default: 20% extra load, at least 10 retries a second, 10 s window.
fn default_budget() -> api::RetryBudget {
    api::RetryBudget {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl: prost_types::Duration::try_from(Duration::from_secs(10)).ok(),
    }
}

fn routes(p: &ServiceProfile) -> Vec<api::Route> {
    p.spec
        .routes
        .iter()
        .map(|r| api::Route {
            condition: Some(request_match(&r.condition)),
            response_classes: r
                .response_classes
                .iter()
                .map(|c| api::ResponseClass {
                    condition: Some(response_match(&c.condition)),
                    is_failure: c.is_failure,
                })
                .collect(),
            metrics_labels: HashMap::from([("route".to_string(), r.name.clone())]),
            is_retryable: r.is_retryable,
            timeout: r
                .timeout
                .and_then(|t| prost_types::Duration::try_from(t).ok()),
        })
        .collect()
}

/// Adds a condition's nested `all`, `any` and `not` to its leaf `parts`,
/// then ANDs everything: request and response conditions share this shape.
macro_rules! condition_tree {
    ($spec:expr, $parts:expr, $recurse:ident, $message:ident, $module:ident) => {{
        use api::$module::{Match, Seq};
        let spec = $spec;
        let mut parts: Vec<Match> = $parts;
        if !spec.all.is_empty() {
            parts.push(Match::All(Seq {
                matches: spec.all.iter().map($recurse).collect(),
            }));
        }
        if !spec.any.is_empty() {
            parts.push(Match::Any(Seq {
                matches: spec.any.iter().map($recurse).collect(),
            }));
        }
        if let Some(not) = &spec.not {
            parts.push(Match::Not(Box::new($recurse(not))));
        }
        let r#match = if parts.len() == 1 {
            parts.pop()
        } else {
            Some(Match::All(Seq {
                matches: parts
                    .into_iter()
                    .map(|m| api::$message { r#match: Some(m) })
                    .collect(),
            }))
        };
        api::$message { r#match }
    }};
}

/// A ServiceProfile condition's fields all have to match (they are ANDed).
fn request_match(m: &RequestMatchSpec) -> api::RequestMatch {
    use api::request_match::Match;
    let mut leaves = Vec::new();
    if let Some(method) = m.method.as_deref().and_then(http_method) {
        leaves.push(Match::Method(method.into()));
    }
    if let Some(re) = &m.path_regex {
        leaves.push(Match::Path(api::PathMatch { regex: re.clone() }));
    }
    condition_tree!(m, leaves, request_match, RequestMatch, request_match)
}

fn response_match(m: &ResponseMatchSpec) -> api::ResponseMatch {
    use api::response_match::Match;
    let mut leaves = Vec::new();
    if let Some(s) = m.status {
        leaves.push(Match::Status(api::HttpStatusRange {
            min: s.min.map_or(0, u32::from),
            max: s.max.map_or(0, u32::from),
        }));
    }
    condition_tree!(m, leaves, response_match, ResponseMatch, response_match)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub(crate) kind: &'static str,
}

/// The destination service's metrics.
#[derive(Clone, Default)]
pub struct DestinationMetrics {
    pub(crate) watchers: Family<KindLabels, Gauge>,
    pub(crate) updates: Family<KindLabels, Counter>,
    pub(crate) targets: Family<KindLabels, Gauge>,
    store_version: Gauge,
    store_snapshots: Counter,
    store_problems: Gauge,
}

impl DestinationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "destination_watchers",
            "Open Get (kind=endpoints), GetProfile (kind=profile) and WatchPort (kind=inbound_policy) streams",
            self.watchers.clone(),
        );
        registry.register(
            "destination_updates",
            "Messages sent on Get, GetProfile and WatchPort streams",
            self.updates.clone(),
        );
        registry.register(
            "destination_index_targets",
            "Distinct watched targets, each resolved once per store change",
            self.targets.clone(),
        );
        registry.register(
            "store_version",
            "Version of the store snapshot being served",
            self.store_version.clone(),
        );
        registry.register(
            "store_snapshots",
            "Store snapshots applied (each a change in the manifests)",
            self.store_snapshots.clone(),
        );
        registry.register(
            "store_manifest_problems",
            "Manifest problems in the current snapshot (see the log for file and line)",
            self.store_problems.clone(),
        );
    }
}

const ENDPOINTS: KindLabels = KindLabels { kind: "endpoints" };
const PROFILE: KindLabels = KindLabels { kind: "profile" };

type Watches<T> = crate::watches::Watches<Target, T>;

/// One shared, incrementally maintained answer per watched target.
pub struct Index {
    store: watch::Receiver<Arc<Snapshot>>,
    cluster_domain: String,
    endpoints: Watches<EndpointSet>,
    profiles: Watches<api::DestinationProfile>,
    metrics: DestinationMetrics,
}

impl Index {
    /// Starts following the store; the index lives as long as the runtime.
    pub fn start(
        store: watch::Receiver<Arc<Snapshot>>,
        cluster_domain: String,
        metrics: DestinationMetrics,
    ) -> Arc<Index> {
        let index = Arc::new(Index {
            store,
            cluster_domain,
            endpoints: Mutex::new(HashMap::new()),
            profiles: Mutex::new(HashMap::new()),
            metrics,
        });
        index.observe(&index.store.borrow());
        crate::watches::follow(&index.store, &index, Index::apply);
        index
    }

    fn observe(&self, snapshot: &Snapshot) {
        self.metrics.store_version.set(snapshot.version as i64);
        self.metrics
            .store_problems
            .set(snapshot.problems.len() as i64);
    }

    /// Recomputes every watched target; forgets targets nobody watches.
    fn apply(&self, snapshot: &Snapshot) {
        self.observe(snapshot);
        self.metrics.store_snapshots.inc();
        let started = std::time::Instant::now();
        crate::watches::refresh(&self.endpoints, |t| endpoint_set(snapshot, t));
        crate::watches::refresh(&self.profiles, |t| {
            profile(snapshot, t, &self.cluster_domain)
        });
        self.metrics
            .targets
            .get_or_create(&ENDPOINTS)
            .set(self.endpoints.lock().len() as i64);
        self.metrics
            .targets
            .get_or_create(&PROFILE)
            .set(self.profiles.lock().len() as i64);
        debug!(version = snapshot.version, elapsed = ?started.elapsed(), "index refreshed");
    }

    pub fn watch_endpoints(&self, target: &Target) -> watch::Receiver<Arc<EndpointSet>> {
        crate::watches::subscribe(&self.endpoints, target, || {
            endpoint_set(&self.store.borrow(), target)
        })
    }

    pub fn watch_profile(&self, target: &Target) -> watch::Receiver<Arc<api::DestinationProfile>> {
        crate::watches::subscribe(&self.profiles, target, || {
            profile(&self.store.borrow(), target, &self.cluster_domain)
        })
    }
}

/// Decrements a watcher gauge when its stream is dropped.
pub(crate) struct WatcherGuard(Gauge);

impl WatcherGuard {
    pub(crate) fn new(metrics: &DestinationMetrics, kind: &KindLabels) -> Self {
        let gauge = metrics.watchers.get_or_create(kind).clone();
        gauge.inc();
        WatcherGuard(gauge)
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct DestinationService {
    index: Arc<Index>,
}

impl DestinationService {
    pub fn new(index: Arc<Index>) -> Self {
        DestinationService { index }
    }

    fn target(&self, req: &api::GetDestination) -> Result<Target, Status> {
        Target::parse(&req.path, &self.index.cluster_domain).map_err(Status::invalid_argument)
    }
}

type UpdateStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl DestinationApi for DestinationService {
    type GetStream = UpdateStream<api::Update>;
    type GetProfileStream = UpdateStream<api::DestinationProfile>;

    async fn get(
        &self,
        request: Request<api::GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let target = self.target(request.get_ref())?;
        debug!(?target, "Get");
        let rx = self.index.watch_endpoints(&target);
        let metrics = self.index.metrics.clone();
        let guard = WatcherGuard::new(&metrics, &ENDPOINTS);
        let counter = metrics.updates.get_or_create(&ENDPOINTS).clone();
        // State: the receiver, what the client has, and whether this is the start.
        let state = (rx, None::<Arc<EndpointSet>>, guard);
        let stream = futures_util::stream::unfold(state, |(mut rx, last, guard)| async move {
            loop {
                if last.is_some() && rx.changed().await.is_err() {
                    return None;
                }
                let next = rx.borrow_and_update().clone();
                let messages = deltas(last.as_deref(), &next);
                if !messages.is_empty() {
                    return Some((messages, (rx, Some(next), guard)));
                }
            }
        })
        .flat_map(move |messages| {
            counter.inc_by(messages.len() as u64);
            futures_util::stream::iter(messages.into_iter().map(Ok))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_profile(
        &self,
        request: Request<api::GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let target = self.target(request.get_ref())?;
        debug!(?target, "GetProfile");
        let rx = self.index.watch_profile(&target);
        let metrics = self.index.metrics.clone();
        let guard = WatcherGuard::new(&metrics, &PROFILE);
        let counter = metrics.updates.get_or_create(&PROFILE).clone();
        let stream =
            futures_util::stream::unfold((rx, true, guard), |(mut rx, first, guard)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let profile = (**rx.borrow_and_update()).clone();
                Some((profile, (rx, false, guard)))
            })
            .map(move |p| {
                counter.inc();
                Ok(p)
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The destination service's own identity, unless told otherwise.
pub const DESTINATION_SERVICE_NAME: &str =
    "destination.weft.serviceaccount.identity.weft.cluster.local";

/// How long the service waits for its first certificate before giving up.
const CERTIFY_WITHIN: Duration = Duration::from_secs(30);

/// What the destination service needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory of manifests it watches.
    pub manifests: PathBuf,
    /// How often the directory is checked for changes.
    pub poll: Duration,
    /// Where the Destination service listens (Linkerd's port is 8086).
    pub listen: SocketAddr,
    /// The admin server: /metrics, /ready, /live.
    pub admin_listen: SocketAddr,
    /// Service names are `<name>.<namespace>.svc.<cluster domain>`.
    pub cluster_domain: String,
    /// How it gets its serving certificate (its own identity is
    /// `local_name`); `None` serves plaintext, for a trusted network only.
    pub identity: Option<weft_identity::certify::CertifyConfig>,
    /// The identity it proves over TLS.
    pub name: weft_identity::Identity,
    /// The inbound policy service it serves beside Destination.
    pub policy: crate::policy::PolicyConfig,
}

/// Runs the destination service over the files store until Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    use crate::store::Store as _;
    let store = crate::store::FilesStore::start(&config.manifests, config.poll)?;
    let tls = match config.identity {
        Some(certify) => {
            let certified =
                crate::serving_tls::CertifiedIdentity::obtain(certify, CERTIFY_WITHIN).await?;
            Some(certified as Arc<dyn rustls::server::ResolvesServerCert>)
        }
        None => {
            tracing::warn!(
                "serving plaintext (no --identity-addr): keep the destination service on a trusted network"
            );
            None
        }
    };
    tracing::info!(manifests = %config.manifests.display(), tls = tls.is_some(), name = %config.name, "destination service starting");
    let metrics = DestinationMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let policies = crate::policy::service::PolicyIndexes::start(
        store.subscribe(),
        config.policy,
        metrics.clone(),
    );
    let inbound_policy = linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPoliciesServer::new(
        policies.inbound(),
    );
    let outbound_policy = policies.outbound();
    let index = Index::start(store.subscribe(), config.cluster_domain, metrics);
    let service = api::destination_server::DestinationServer::new(DestinationService::new(index));
    crate::grpc::serve(
        crate::grpc::Serving {
            what: "destination and policy service",
            listen: config.listen,
            admin_listen: config.admin_listen,
            registry,
            tls,
        },
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(inbound_policy)
            .add_service(outbound_policy),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use weft_api::parse_manifests;

    const DOMAIN: &str = "cluster.local";

    fn snapshot(text: &str) -> Snapshot {
        let (m, errors) = parse_manifests(Path::new("m.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        Snapshot::new(1, m, Vec::new())
    }

    const MESH: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, annotations: {config.linkerd.io/opaque-ports: "5432"}}
spec:
  clusterIP: 198.18.100.1
  selector: {app: web}
  ports: [{port: 80, targetPort: http}, {port: 5432}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web-0, namespace: demo, labels: {app: web}, annotations: {weft.io/proxy-inbound-port: "4200"}}
spec:
  meshTLS: {identity: web.demo.serviceaccount.identity.weft.cluster.local}
  ports: [{name: http, port: 8080}]
  workloadIPs: [{ip: 198.18.1.1}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec:
  ports: [{name: http, port: 8081}]
  workloadIPs: [{ip: 198.18.1.2}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web-2, namespace: demo, labels: {app: web}}
spec:
  ports: [{name: http, port: 8080}]
  workloadIPs: [{ip: 198.18.1.3}]
status:
  conditions: [{type: Ready, status: "False"}]
"#;

    #[test]
    fn targets_parse_authorities_and_addresses() {
        let t = Target::parse("web.demo.svc.cluster.local:80", DOMAIN).unwrap();
        assert_eq!(
            t,
            Target::Service {
                key: Key {
                    namespace: "demo".into(),
                    name: "web".into()
                },
                port: 80
            }
        );
        assert_eq!(
            Target::parse("198.18.1.1:8080", DOMAIN).unwrap(),
            Target::Addr("198.18.1.1:8080".parse().unwrap())
        );
        assert_eq!(
            Target::parse("example.com:443", DOMAIN).unwrap(),
            Target::Unknown("example.com".into())
        );
        assert!(Target::parse("a.b.c.svc.cluster.local:80", DOMAIN).is_err());
        assert!(Target::parse("web.demo.svc.cluster.local:http", DOMAIN).is_err());
    }

    #[test]
    fn services_resolve_to_ready_workloads_with_named_target_ports() {
        let s = snapshot(MESH);
        let web = Target::parse("web.demo.svc.cluster.local:80", DOMAIN).unwrap();
        let res = endpoint_set(&s, &web);
        assert!(res.exists);
        let addrs: Vec<String> = res.endpoints.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["198.18.1.1:8080", "198.18.1.2:8081"]);
        let meshed = &res.endpoints[&"198.18.1.1:8080".parse().unwrap()];
        assert_eq!(
            meshed.identity.as_deref(),
            Some("web.demo.serviceaccount.identity.weft.cluster.local")
        );
        assert!(!meshed.opaque);
        // The cluster IP resolves the same way.
        let by_ip = endpoint_set(&s, &Target::Addr("198.18.100.1:80".parse().unwrap()));
        assert_eq!(by_ip, res);
        // An opaque port carries the transport-header hint to the proxy port.
        let db = endpoint_set(&s, &Target::Addr("198.18.100.1:5432".parse().unwrap()));
        let e = &db.endpoints[&"198.18.1.1:5432".parse().unwrap()];
        assert!(e.opaque && e.inbound_port == 4200);
        let wa = weighted_addr("198.18.1.1:5432".parse().unwrap(), e);
        assert_eq!(
            wa.protocol_hint
                .unwrap()
                .opaque_transport
                .unwrap()
                .inbound_port,
            4200
        );
        // A declared service with an undeclared port exists but has no endpoints.
        let none = endpoint_set(&s, &Target::Addr("198.18.100.1:81".parse().unwrap()));
        assert!(none.exists && none.endpoints.is_empty());
        // Unknown things do not exist.
        assert!(!endpoint_set(&s, &Target::Unknown("example.com".into())).exists);
        assert!(!endpoint_set(&s, &Target::Addr("198.18.9.9:80".parse().unwrap())).exists);
        // A workload IP is an endpoint of its own.
        let pod = endpoint_set(&s, &Target::Addr("198.18.1.2:9000".parse().unwrap()));
        assert_eq!(pod.endpoints.len(), 1);
    }

    fn kinds(updates: &[api::Update]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u.update.as_ref().unwrap() {
                api::update::Update::Add(set) => format!("add {}", set.addrs.len()),
                api::update::Update::Remove(set) => format!("remove {}", set.addrs.len()),
                api::update::Update::NoEndpoints(n) => format!("none exists={}", n.exists),
            })
            .collect()
    }

    #[test]
    fn deltas_follow_the_protocol_rules() {
        let s = snapshot(MESH);
        let full = endpoint_set(&s, &Target::Addr("198.18.100.1:80".parse().unwrap()));
        let mut one = full.clone();
        one.endpoints.pop_last();
        let empty = EndpointSet {
            endpoints: BTreeMap::new(),
            ..full.clone()
        };
        assert_eq!(kinds(&deltas(None, &full)), ["add 2"]);
        assert_eq!(kinds(&deltas(None, &empty)), ["none exists=true"]);
        assert_eq!(
            kinds(&deltas(None, &EndpointSet::default())),
            ["none exists=false"]
        );
        assert_eq!(kinds(&deltas(Some(&full), &one)), ["remove 1"]);
        assert_eq!(kinds(&deltas(Some(&one), &full)), ["add 1"]);
        assert_eq!(kinds(&deltas(Some(&full), &full)), Vec::<String>::new());
        assert_eq!(kinds(&deltas(Some(&full), &empty)), ["none exists=true"]);
        assert_eq!(
            kinds(&deltas(Some(&empty), &EndpointSet::default())),
            ["none exists=false"]
        );
        let mut reweighted = full.clone();
        reweighted.endpoints.values_mut().next().unwrap().weight = 1;
        assert_eq!(kinds(&deltas(Some(&full), &reweighted)), ["add 1"]);
    }

    #[test]
    fn profiles_carry_routes_budget_and_opaqueness() {
        let text = format!(
            "{MESH}---\napiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {{name: web.demo.svc.cluster.local, namespace: demo}}\nspec:\n  routes:\n  - name: get-api\n    condition: {{method: GET, pathRegex: /api/.*}}\n    isRetryable: true\n    timeout: 250ms\n    responseClasses: [{{condition: {{status: {{min: 500}}}}, isFailure: true}}]\n  retryBudget: {{retryRatio: 0.5, minRetriesPerSecond: 3, ttl: 5s}}\n"
        );
        let s = snapshot(&text);
        let p = profile(
            &s,
            &Target::Addr("198.18.100.1:80".parse().unwrap()),
            DOMAIN,
        );
        assert_eq!(p.fully_qualified_name, "web.demo.svc.cluster.local");
        assert!(!p.opaque_protocol);
        assert_eq!(p.routes.len(), 1);
        let route = &p.routes[0];
        assert!(route.is_retryable);
        assert_eq!(route.timeout.unwrap().nanos, 250_000_000);
        assert_eq!(route.metrics_labels["route"], "get-api");
        let Some(api::request_match::Match::All(seq)) = &route.condition.as_ref().unwrap().r#match
        else {
            panic!("method and path are ANDed: {route:?}");
        };
        assert_eq!(seq.matches.len(), 2);
        assert_eq!(p.retry_budget.unwrap().min_retries_per_second, 3);
        assert!(p.profile_ref.is_some());

        let db = profile(
            &s,
            &Target::Addr("198.18.100.1:5432".parse().unwrap()),
            DOMAIN,
        );
        assert!(db.opaque_protocol);
        assert!(db.routes.is_empty(), "opaque traffic has no routes");
        let pod = profile(
            &s,
            &Target::Addr("198.18.1.1:8080".parse().unwrap()),
            DOMAIN,
        );
        assert!(pod.fully_qualified_name.is_empty() && pod.endpoint.is_some());
        let unknown = profile(&s, &Target::Unknown("example.com".into()), DOMAIN);
        assert_eq!(unknown, api::DestinationProfile::default());
    }
}
