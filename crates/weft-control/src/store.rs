//! The control plane's view of the mesh's resources: versioned, indexed
//! snapshots behind the [`Store`] trait, with change notification.
//!
//! A backend (the files store here, kube-rs reflectors later) produces whole
//! snapshots and publishes them on a watch channel; readers never lock and
//! never see a half-applied change. Indexes (by cluster IP, workload IP and
//! selector label) are built once per snapshot, so thousands of watchers
//! share them instead of scanning.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{info, warn};

use weft_api::{
    ExternalWorkload, Key, ManifestError, Manifests, Origins, Resources, Service, parse_manifests,
};

/// A source of snapshots. The destination service depends only on this.
pub trait Store: Send + Sync + 'static {
    /// The current snapshot, and every later one as it is published.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}

/// The resources at one version, with indexes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every published change.
    pub version: u64,
    /// One resource per kind and key (`snapshot.services`, ... through Deref).
    pub resources: Resources,
    /// What is wrong with the manifests right now (the resources above are
    /// the last good state of the files in question).
    pub problems: Vec<ManifestError>,
    by_cluster_ip: HashMap<IpAddr, Key>,
    by_workload_ip: HashMap<IpAddr, Key>,
    /// (namespace, label key, label value) → workloads with that label.
    by_label: HashMap<(String, String, String), Vec<Key>>,
    /// The file each resource was served from, so that a duplicate added
    /// later in another file never takes over from it.
    origins: Origins,
}

/// A snapshot reads as its resources (`snapshot.services`), with the
/// indexes and problems beside them.
impl std::ops::Deref for Snapshot {
    type Target = Resources;
    fn deref(&self) -> &Resources {
        &self.resources
    }
}

impl Snapshot {
    /// Builds a snapshot; a resource defined twice keeps its first definition
    /// and the second is reported.
    pub fn new(version: u64, manifests: Manifests, problems: Vec<ManifestError>) -> Self {
        Self::after(version, manifests, problems, &Origins::new())
    }

    /// Like [`Snapshot::new`], but a resource keeps the definition from the
    /// file that `served` it, wherever a duplicate appears.
    pub fn after(
        version: u64,
        manifests: Manifests,
        mut problems: Vec<ManifestError>,
        served: &Origins,
    ) -> Self {
        let mut s = Snapshot {
            version,
            ..Snapshot::default()
        };
        let mut seen: HashMap<(&'static str, Key), (PathBuf, usize)> = HashMap::new();
        let mut first = |kind: &'static str, key: Key, file: &Path, line: usize| match seen
            .get(&(kind, key.clone()))
        {
            Some((f, l)) => {
                problems.push(ManifestError {
                    file: file.display().to_string(),
                    line,
                    reason: format!(
                        "{kind} {key} is already defined at {}:{l}; this one is ignored",
                        f.display()
                    ),
                });
                false
            }
            None => {
                seen.insert((kind, key), (file.to_path_buf(), line));
                true
            }
        };
        s.resources = Resources::first_of_each(manifests, served, &mut first);
        for (kind, key, reason) in weft_api::dangling_references(&s.resources) {
            let (file, line) = seen
                .get(&(kind, key.clone()))
                .map_or((String::new(), 0), |(f, l)| (f.display().to_string(), *l));
            problems.push(ManifestError {
                file,
                line,
                reason: format!("{kind} {key}: {reason}"),
            });
        }
        s.origins = seen.into_iter().map(|(k, (file, _))| (k, file)).collect();
        for (key, svc) in &s.resources.services {
            if let Some(ip) = svc.spec.cluster_ip {
                s.by_cluster_ip.insert(ip, key.clone());
            }
        }
        for (key, w) in &s.resources.workloads {
            for ip in &w.spec.workload_ips {
                s.by_workload_ip.insert(ip.ip, key.clone());
            }
            for (k, v) in &w.metadata.labels {
                s.by_label
                    .entry((key.namespace.clone(), k.clone(), v.clone()))
                    .or_default()
                    .push(key.clone());
            }
        }
        s.problems = problems;
        s
    }

    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<(&Key, &Service)> {
        let key = self.by_cluster_ip.get(&ip)?;
        Some((key, &**self.services.get(key)?))
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&ExternalWorkload> {
        self.workloads
            .get(self.by_workload_ip.get(&ip)?)
            .map(|w| &**w)
    }

    /// The workloads a service selects (in its namespace, every selector
    /// label matching). An empty selector selects nothing, as in Kubernetes.
    pub fn selected(&self, svc: &Service) -> Vec<&ExternalWorkload> {
        let ns = &svc.metadata.namespace;
        let mut selector = svc.spec.selector.iter();
        let Some((k, v)) = selector.next() else {
            return Vec::new();
        };
        let Some(candidates) = self.by_label.get(&(ns.clone(), k.clone(), v.clone())) else {
            return Vec::new();
        };
        candidates
            .iter()
            .filter_map(|key| self.workloads.get(key).map(|w| &**w))
            .filter(|w| {
                svc.spec
                    .selector
                    .iter()
                    .all(|(k, v)| w.metadata.labels.get(k) == Some(v))
            })
            .collect()
    }

    fn same_content(&self, other: &Snapshot) -> bool {
        self.resources == other.resources && self.problems == other.problems
    }
}

/// The files store: a directory of YAML manifests (`*.yaml`, `*.yml`, in
/// subdirectories too), polled for changes.
///
/// Polling file metadata rather than using inotify: it sees every way a file
/// changes (editors that write a new file and rename it, bind mounts,
/// ConfigMap-style symlink swaps) with no watch limits, and a `stat` of a few
/// hundred files every 200 ms costs nothing measurable. A file that fails to
/// parse keeps serving its last good content, and its problems are published
/// in the snapshot until it is fixed.
pub struct FilesStore {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Store for FilesStore {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

/// A file's change signature: modification time, size and inode.
type Signature = (SystemTime, u64, u64);

#[derive(Default)]
struct FileState {
    signature: Option<Signature>,
    last_good: Manifests,
    problems: Vec<ManifestError>,
}

struct Loader {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Where each resource of the last snapshot came from.
    served: Origins,
}

impl FilesStore {
    /// Loads `dir` now, then watches it every `poll` for as long as the
    /// runtime runs.
    pub fn start(dir: &Path, poll: Duration) -> anyhow::Result<Arc<FilesStore>> {
        let mut loader = Loader::open(dir)?;
        let snapshot = loader.snapshot(1);
        report(&snapshot);
        let (tx, _) = watch::channel(Arc::new(snapshot));
        let store = Arc::new(FilesStore { tx });
        let weak = Arc::downgrade(&store);
        // Reading and parsing happen on a blocking thread: a slow or hostile
        // file delays only the next snapshot, never the tasks that serve or
        // supervise (weft up's supervision shares this runtime).
        tokio::spawn(async move {
            let mut loader = Some(loader);
            loop {
                tokio::time::sleep(poll).await;
                let Some(store) = weak.upgrade() else { return };
                let Some(mut scanning) = loader.take() else {
                    return;
                };
                let version = store.tx.borrow().version + 1;
                let scanned = tokio::task::spawn_blocking(move || {
                    let next = scanning.scan().then(|| scanning.snapshot(version));
                    (scanning, next)
                })
                .await;
                let Ok((scanning, next)) = scanned else {
                    return warn!("the manifest scan panicked; manifests are no longer watched");
                };
                loader = Some(scanning);
                let Some(next) = next else { continue };
                let current = store.tx.borrow().clone();
                if !next.same_content(&current) {
                    report(&next);
                    store.tx.send_replace(Arc::new(next));
                }
            }
        });
        Ok(store)
    }
}

/// The manifests in `dir` now, once (for commands that do not watch).
pub fn load(dir: &Path) -> anyhow::Result<Snapshot> {
    Ok(Loader::open(dir)?.snapshot(1))
}

fn report(s: &Snapshot) {
    // Every kind, so a directory of Deployments does not read as empty.
    let resources: Vec<String> = s
        .counts()
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    info!(
        version = s.version,
        resources = resources.join(" "),
        problems = s.problems.len(),
        "manifests loaded"
    );
    for p in &s.problems {
        warn!("manifest problem: {p}");
    }
}

impl Loader {
    /// A loader for `dir`, with every file read once.
    fn open(dir: &Path) -> anyhow::Result<Loader> {
        let meta = std::fs::metadata(dir)
            .with_context(|| format!("reading the manifests directory {}", dir.display()))?;
        anyhow::ensure!(
            meta.is_dir(),
            "{} is not a directory of manifests",
            dir.display()
        );
        let mut loader = Loader {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            served: Origins::new(),
        };
        loader.scan();
        Ok(loader)
    }

    /// Re-reads changed files; true when anything changed.
    fn scan(&mut self) -> bool {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        collect_files(&self.dir, &mut found, &mut problems, 0);
        let present: std::collections::HashSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let before = self.files.len();
        let dir = self.dir.clone();
        self.files
            .retain(|path, _| *path == dir || present.contains(path));
        let mut changed = self.files.len() != before;
        for (path, signature) in found {
            let state = self.files.entry(path.clone()).or_default();
            if state.signature == Some(signature) {
                continue;
            }
            changed = true;
            state.signature = Some(signature);
            if signature.1 > weft_api::MAX_MANIFEST_BYTES {
                // Not read at all: its last good content keeps serving.
                state.problems = vec![ManifestError {
                    file: path.display().to_string(),
                    line: 1,
                    reason: format!(
                        "{} bytes is more than a manifest file may hold ({} bytes); split it",
                        signature.1,
                        weft_api::MAX_MANIFEST_BYTES
                    ),
                }];
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let (manifests, errors) = parse_manifests(&path, &text);
                    if errors.is_empty() {
                        state.last_good = manifests;
                    }
                    state.problems = errors;
                }
                Err(e) => {
                    state.problems = vec![ManifestError {
                        file: path.display().to_string(),
                        line: 0,
                        reason: format!("cannot read: {e}"),
                    }];
                    // Read again at the next scan.
                    state.signature = None;
                }
            }
        }
        // Directory-level problems (unreadable subdirectories) are rare and
        // reported through a pseudo-file entry.
        let dir_state = self.files.entry(self.dir.clone()).or_default();
        if dir_state.problems != problems {
            dir_state.problems = problems;
            changed = true;
        }
        changed
    }

    fn snapshot(&mut self, version: u64) -> Snapshot {
        let mut manifests = Manifests::default();
        let mut problems = Vec::new();
        for state in self.files.values() {
            manifests.extend_from(&state.last_good);
            problems.extend(state.problems.iter().cloned());
        }
        let snapshot = Snapshot::after(version, manifests, problems, &self.served);
        self.served = snapshot.origins.clone();
        snapshot
    }
}

/// Manifest files under `dir`, sorted, with their signatures. Hidden files
/// (editor swap files, `..data` symlink farms' internals) are skipped.
fn collect_files(
    dir: &Path,
    out: &mut Vec<(PathBuf, Signature)>,
    problems: &mut Vec<ManifestError>,
    depth: usize,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return problems.push(ManifestError {
                file: dir.display().to_string(),
                line: 0,
                reason: format!("cannot list the directory: {e}"),
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // Follows symlinks: manifests may be linked in.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < 8 {
                collect_files(&path, out, problems, depth + 1);
            }
            continue;
        }
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml {
            use std::os::unix::fs::MetadataExt;
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((path, (modified, meta.len(), meta.ino())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  clusterIP: 198.18.100.1\n  selector: {app: web, tier: front}\n  ports: [{port: 80, targetPort: 8080}]\n";

    fn workload(name: &str, ip: &str, labels: &str) -> String {
        format!(
            "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {name}, namespace: demo, labels: {labels}}}\nspec:\n  workloadIPs: [{{ip: {ip}}}]\n"
        )
    }

    #[test]
    fn indexes_select_by_every_label_in_the_namespace() {
        let text = [
            SVC.to_string(),
            workload("web-0", "198.18.1.1", "{app: web, tier: front}"),
            workload("web-1", "198.18.1.2", "{app: web}"),
            workload("api-0", "198.18.1.3", "{app: api, tier: front}"),
        ]
        .concat();
        let (m, errors) = parse_manifests(Path::new("m.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let s = Snapshot::new(1, m, Vec::new());
        let (key, svc) = s
            .service_by_cluster_ip("198.18.100.1".parse().unwrap())
            .unwrap();
        assert_eq!(key.to_string(), "demo/web");
        let names: Vec<_> = s
            .selected(svc)
            .iter()
            .map(|w| w.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["web-0"]);
        assert_eq!(
            s.workload_by_ip("198.18.1.3".parse().unwrap())
                .map(|w| w.metadata.name.as_str()),
            Some("api-0")
        );
    }

    #[test]
    fn duplicates_are_reported_and_the_first_wins() {
        let (mut m, _) = parse_manifests(Path::new("a.yaml"), SVC);
        let (again, _) = parse_manifests(Path::new("b.yaml"), SVC);
        m.services.extend(again.services);
        let s = Snapshot::new(1, m, Vec::new());
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(
            s.problems[0].to_string(),
            "b.yaml:1: Service demo/web is already defined at a.yaml:1; this one is ignored"
        );
    }

    #[test]
    fn dangling_policy_references_are_reported_where_they_are_written() {
        let text = "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: gone}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: nobody}
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: lan}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: lan, namespace: demo}
spec:
  networks: [{cidr: 10.0.0.0/8}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: r, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: other, namespace: prod}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: l, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: gone}
  total: {requestsPerSecond: 5}
";
        let (m, errors) = parse_manifests(Path::new("p.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let s = Snapshot::new(1, m, Vec::new());
        let problems: Vec<String> = s.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "p.yaml:1: AuthorizationPolicy demo/a: targetRef names Server demo/gone, which does not exist",
                "p.yaml:1: AuthorizationPolicy demo/a: requiredAuthenticationRefs names MeshTLSAuthentication demo/nobody, which does not exist",
                "p.yaml:22: HTTPLocalRateLimitPolicy demo/l: targetRef names Server demo/gone, which does not exist",
                "p.yaml:16: HTTPRoute demo/r: parentRefs names Server prod/other, which does not exist",
            ]
        );
        // Still served: the other side may come later.
        assert_eq!(s.authorization_policies.len(), 1);
    }

    #[test]
    fn routes_to_missing_services_ports_and_zero_weights_are_reported() {
        let text = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports: [{port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 8080}, {kind: Service, name: gone}]
  rules:
  - backendRefs: [{name: web, port: 80}, {name: web-v9, port: 80}]
  - backendRefs: [{name: web, port: 80, weight: 0}]
";
        let (m, errors) = parse_manifests(Path::new("r.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let s = Snapshot::new(1, m, Vec::new());
        let problems: Vec<String> = s.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "r.yaml:7: HTTPRoute demo/r: parentRefs names port 8080 of Service demo/web, which it does not define",
                "r.yaml:7: HTTPRoute demo/r: parentRefs names Service demo/gone, which does not exist",
                "r.yaml:7: HTTPRoute demo/r: rules[0].backendRefs names Service demo/web-v9, which does not exist",
                "r.yaml:7: HTTPRoute demo/r: rules[1].backendRefs all have weight 0: every request of the rule fails",
            ]
        );
        assert_eq!(s.http_routes.len(), 1, "still served");
    }

    #[test]
    fn overlapping_egress_networks_and_missing_egress_parents_are_reported() {
        let text = "apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: internet, namespace: demo}
spec: {trafficPolicy: Allow}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: partners, namespace: demo}
spec:
  networks: [{cidr: 203.0.113.0/24}]
  trafficPolicy: Deny
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: elsewhere, namespace: other}
spec: {trafficPolicy: Deny}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTgrpcRoute
";
        // The last document is a typo'd kind: reported, the rest read.
        let (m, errors) = parse_manifests(Path::new("e.yaml"), text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: out, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: EgressNetwork, name: nowhere}]
";
        let (routes, errors) = parse_manifests(Path::new("r.yaml"), route);
        assert!(errors.is_empty(), "{errors:?}");
        let mut all = m;
        all.extend_from(&routes);
        let s = Snapshot::new(1, all, Vec::new());
        let problems: Vec<String> = s.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "r.yaml:1: HTTPRoute demo/out: parentRefs names EgressNetwork demo/nowhere, which does not exist",
                "e.yaml:6: EgressNetwork demo/partners: overlaps EgressNetwork demo/internet (203.0.113.0/24 and 0.0.0.0/0): an address in both takes the more specific network",
            ],
            "one namespace's overlap only"
        );
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_duplicate_added_later_never_takes_over_from_the_served_definition() {
        let dir = scratch("dup");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let mut loader = Loader::open(&dir).unwrap();
        let first = loader.snapshot(1);
        let served = |s: &Snapshot| {
            s.services
                .values()
                .next()
                .unwrap()
                .spec
                .cluster_ip
                .unwrap()
                .to_string()
        };
        assert_eq!(served(&first), "198.18.100.1");
        // A file that sorts earlier defines the same Service elsewhere.
        std::fs::write(
            dir.join("0-hijack.yaml"),
            SVC.replace("198.18.100.1", "198.18.66.6"),
        )
        .unwrap();
        assert!(loader.scan());
        let next = loader.snapshot(2);
        assert_eq!(
            served(&next),
            "198.18.100.1",
            "the serving definition stays"
        );
        let problem = next.problems[0].to_string();
        assert!(
            problem.starts_with(&format!(
                "{}:1: Service demo/web is already defined at {}:1",
                dir.join("0-hijack.yaml").display(),
                dir.join("web.yaml").display()
            )),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversized_and_deeply_nested_files_are_refused_and_the_last_good_state_serves() {
        let dir = scratch("big");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let mut loader = Loader::open(&dir).unwrap();
        assert_eq!(loader.snapshot(1).services.len(), 1);
        let big = format!("{SVC}# {}\n", "x".repeat(2 << 20));
        std::fs::write(dir.join("web.yaml"), big).unwrap();
        std::fs::write(dir.join("deep.yaml"), "[".repeat(200_000)).unwrap();
        let started = std::time::Instant::now();
        assert!(loader.scan());
        let next = loader.snapshot(2);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            next.services.len(),
            1,
            "the last good content keeps serving"
        );
        let problems: Vec<String> = next.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("web.yaml:1: ")
                    && p.contains("more than a manifest file may hold")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("deep.yaml:1: brackets nested deeper than 64 levels")),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
