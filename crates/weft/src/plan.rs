//! What the local mesh runs from a directory of manifests: the Services
//! with their virtual (cluster) IPs, and one pod per Deployment replica with
//! its address, identity and program. Pure functions of a store snapshot,
//! so `weft diagnostics plan` can show it and `weft up` can carry it out.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for network
//! benchmarks: pods from 198.18.0.0/16 (the bridge is 198.18.0.1), cluster
//! IPs from 198.19.0.0/16. Both are chosen by a stable hash of the name, so
//! adding a Service or a replica never moves the others (running pods keep
//! their addresses and `/etc/hosts`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use weft_identity::Identity;

use weft_api::{ContainerPort, Key};
use weft_control::store::Snapshot;

/// The host side of every pod's veth: the control plane listens here.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Rootless mode: the control plane's loopback address.
pub const ROOTLESS_CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 18, 0, 1);

/// Rootless mode has no namespaces: pod 198.18.a.b becomes two loopback
/// addresses, 127.18.a.b where its proxy listens (what other pods reach)
/// and 127.19.a.b where its program listens (behind its proxy).
pub fn rootless_addrs(pod_ip: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    let [_, _, a, b] = pod_ip.octets();
    (Ipv4Addr::new(127, 18, a, b), Ipv4Addr::new(127, 19, a, b))
}

/// The mesh's control namespace and trust domain, in every identity.
use weft_api::CONTROL_NAMESPACE;
const TRUST_DOMAIN: &str = "cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PlannedService {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<u16>,
}

impl PlannedService {
    /// The names a pod in `namespace` may use for it, longest first.
    pub fn host_names(&self, namespace: &str) -> Vec<String> {
        let (name, ns) = (&self.name, &self.namespace);
        let mut names = vec![
            format!("{name}.{ns}.svc.{TRUST_DOMAIN}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}"),
        ];
        if ns == namespace {
            names.push(name.clone());
        }
        names
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pod {
    /// `<deployment>-<replica>`, unique within its namespace.
    pub name: String,
    pub namespace: String,
    pub deployment: String,
    /// Kubernetes' `pod-template-hash`: a stable hash of the pod template.
    pub template_hash: String,
    pub replica: u32,
    pub ip: Ipv4Addr,
    pub identity: String,
    pub labels: BTreeMap<String, String>,
    /// The pod template's annotations (`config.linkerd.io/default-inbound-policy`,
    /// `config.linkerd.io/opaque-ports`...), which the policy controller reads.
    pub annotations: BTreeMap<String, String>,
    /// The program and its arguments (`command` then `args`).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<(Option<String>, u16)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub services: Vec<PlannedService>,
    pub pods: Vec<Pod>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("Deployment {deployment}: service account {account:?} makes no identity: {reason}")]
    Identity {
        deployment: Key,
        account: String,
        reason: String,
    },
    #[error("the address range for {what} is full ({count} asked)")]
    Full { what: &'static str, count: usize },
}

/// FNV-1a: small, and the same on every run and machine.
fn stable_hash(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// An address in `base`/16 for `key`: its hash's slot, or the next free
/// one. Slots 0 and 1 (and 255s) are left out: network, bridge, broadcast.
fn allocate(
    base: [u8; 2],
    key: &str,
    taken: &mut BTreeSet<Ipv4Addr>,
    what: &'static str,
) -> Result<Ipv4Addr, PlanError> {
    const SLOTS: u32 = 254 * 256;
    let start = stable_hash(key) % SLOTS;
    (0..SLOTS)
        .map(|probe| (start + probe) % SLOTS)
        .map(|slot| Ipv4Addr::new(base[0], base[1], (slot / 254) as u8, (slot % 254 + 2) as u8))
        .find(|ip| taken.insert(*ip))
        .ok_or(PlanError::Full {
            what,
            count: taken.len() + 1,
        })
}

/// The plan for `snapshot`, with `replicas` overriding Deployments'
/// counts (`weft scale`).
pub fn plan(snapshot: &Snapshot, replicas: &BTreeMap<Key, u32>) -> Result<Plan, PlanError> {
    let mut taken: BTreeSet<Ipv4Addr> = snapshot
        .services
        .values()
        .filter_map(|s| match s.spec.cluster_ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    let mut services = Vec::new();
    for (key, svc) in &snapshot.services {
        let cluster_ip = match svc.spec.cluster_ip {
            Some(ip) => ip,
            None => IpAddr::V4(allocate(
                [198, 19],
                &key.to_string(),
                &mut taken,
                "cluster IPs",
            )?),
        };
        services.push(PlannedService {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            cluster_ip,
            ports: svc.spec.ports.iter().map(|p| p.port).collect(),
        });
    }

    let mut pod_ips = BTreeSet::from([BRIDGE_IP]);
    let mut pods = Vec::new();
    for (key, d) in &snapshot.deployments {
        let account = d
            .spec
            .template
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let identity =
            Identity::service_account(&account, &key.namespace, CONTROL_NAMESPACE, TRUST_DOMAIN)
                .map_err(|e| PlanError::Identity {
                    deployment: key.clone(),
                    account: account.clone(),
                    reason: e.to_string(),
                })?;
        // Validation guarantees exactly one container.
        let Some(container) = d.spec.template.spec.containers.first() else {
            continue;
        };
        let count = replicas.get(key).copied().unwrap_or(d.spec.replicas);
        let template_hash = format!(
            "{:08x}",
            stable_hash(&serde_json::to_string(&d.spec.template).unwrap_or_default())
        );
        for replica in 0..count {
            let name = format!("{}-{replica}", key.name);
            let ip = allocate(
                [198, 18],
                &format!("{}/{name}", key.namespace),
                &mut pod_ips,
                "pods",
            )?;
            pods.push(Pod {
                name,
                namespace: key.namespace.clone(),
                deployment: key.name.clone(),
                template_hash: template_hash.clone(),
                replica,
                ip,
                identity: identity.to_string(),
                labels: d.spec.template.metadata.labels.clone(),
                annotations: d.spec.template.metadata.annotations.clone(),
                argv: container
                    .command
                    .iter()
                    .chain(&container.args)
                    .cloned()
                    .collect(),
                env: container
                    .env
                    .iter()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect(),
                ports: container
                    .ports
                    .iter()
                    .map(
                        |ContainerPort {
                             name,
                             container_port,
                         }| (name.clone(), *container_port),
                    )
                    .collect(),
            });
        }
    }
    Ok(Plan { services, pods })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use weft_api::parse_manifests;

    fn snapshot(text: &str) -> Snapshot {
        let (m, errors) = parse_manifests(Path::new("m.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        Snapshot::new(1, m, Vec::new())
    }

    /// The demo mesh's manifests, as one multi-document text.
    fn demo_text() -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/emojivoto");
        let mut text = String::new();
        for name in ["emoji.yaml", "voting.yaml", "web.yaml", "vote-bot.yaml"] {
            text.push_str(&std::fs::read_to_string(dir.join(name)).unwrap());
            text.push_str("\n---\n");
        }
        text
    }

    fn demo() -> Snapshot {
        snapshot(&demo_text())
    }

    #[test]
    fn the_demo_plan_has_a_pod_per_replica_with_its_identity() {
        let plan = plan(&demo(), &BTreeMap::new()).unwrap();
        let names: Vec<&str> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["emoji-0", "emoji-v2-0", "vote-bot-0", "voting-0", "web-0"]
        );
        let web = &plan.pods[4];
        assert_eq!(
            web.identity,
            "web.demo.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(web.argv, ["weft-demo", "web"]);
        assert_eq!(web.ports, [(Some("http".to_string()), 8080)]);
        assert!(
            web.env
                .contains(&("LISTEN".into(), "$(POD_IP):8080".into()))
        );
        let ips: BTreeSet<Ipv4Addr> = plan.pods.iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 5, "distinct addresses");
        assert!(
            plan.pods
                .iter()
                .all(|p| p.ip.octets()[..2] == [198, 18] && p.ip != BRIDGE_IP)
        );
        assert_eq!(plan.services.len(), 4);
        assert!(
            plan.services
                .iter()
                .all(|s| matches!(s.cluster_ip, IpAddr::V4(ip) if ip.octets()[..2] == [198, 19]))
        );
        let web_svc = plan.services.iter().find(|s| s.name == "web-svc").unwrap();
        assert_eq!(
            web_svc.host_names("demo"),
            [
                "web-svc.demo.svc.cluster.local",
                "web-svc.demo.svc",
                "web-svc.demo",
                "web-svc"
            ]
        );
        assert_eq!(web_svc.host_names("other").len(), 3);
    }

    #[test]
    fn scaling_and_new_services_move_no_existing_address() {
        let before = plan(&demo(), &BTreeMap::new()).unwrap();
        let web = Key {
            namespace: "demo".into(),
            name: "web".into(),
        };
        let scaled = plan(&demo(), &BTreeMap::from([(web, 5)])).unwrap();
        assert_eq!(
            scaled.pods.iter().filter(|p| p.deployment == "web").count(),
            5
        );
        for pod in &before.pods {
            let same = scaled.pods.iter().find(|p| p.name == pod.name).unwrap();
            assert_eq!(same.ip, pod.ip, "{} kept its address", pod.name);
        }
        let more = "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\nspec: {ports: [{port: 1}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: pinned, namespace: demo}\nspec: {clusterIP: 198.19.7.7, ports: [{port: 1}]}\n";
        let text = demo_text() + more;
        let grown = plan(&snapshot(&text), &BTreeMap::new()).unwrap();
        for svc in &before.services {
            let same = grown.services.iter().find(|s| s.name == svc.name).unwrap();
            assert_eq!(same.cluster_ip, svc.cluster_ip);
        }
        let pinned = grown.services.iter().find(|s| s.name == "pinned").unwrap();
        assert_eq!(pinned.cluster_ip, "198.19.7.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn colliding_hashes_take_the_next_free_address() {
        let mut taken = BTreeSet::new();
        let a = allocate([198, 18], "same", &mut taken, "pods").unwrap();
        let b = allocate([198, 18], "same", &mut taken, "pods").unwrap();
        assert_ne!(a, b);
        assert!(a.octets()[3] >= 2 && b.octets()[3] >= 2);
    }
}
