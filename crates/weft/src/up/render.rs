//! The cluster state the destination service reads while the local mesh
//! runs: the user's Services with their cluster IPs filled in, their
//! ServiceProfiles, and one ExternalWorkload per pod (its address, identity,
//! labels, ports, and whether it is ready). Written into one file, replaced
//! atomically, so the files store never sees half of it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::plan::Plan;
use weft_api::{
    CONTROL_NAMESPACE, CONTROL_PLANE_NS_LABEL, Condition, ExternalWorkload, ExternalWorkloadSpec,
    MeshTls, Metadata, POD_TEMPLATE_HASH_LABEL, WORKLOAD_LABEL, WorkloadIp, WorkloadPort,
    WorkloadStatus, to_manifest,
};
use weft_control::store::Snapshot;

/// Renders the cluster state for `plan`; `ready` says which pods (by
/// namespace/name) are ready.
pub fn cluster_state(
    snapshot: &Snapshot,
    plan: &Plan,
    ready: &BTreeMap<(String, String), bool>,
) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for planned in &plan.services {
        let key = weft_api::Key {
            namespace: planned.namespace.clone(),
            name: planned.name.clone(),
        };
        if let Some(svc) = snapshot.services.get(&key) {
            let mut svc = (**svc).clone();
            svc.spec.cluster_ip = Some(planned.cluster_ip);
            docs.push(to_manifest(&svc)?);
        }
    }
    rendered(&mut docs, &snapshot.profiles)?;
    // Policy, as written: the controller reads it beside the workloads.
    rendered(&mut docs, &snapshot.servers)?;
    rendered(&mut docs, &snapshot.authorization_policies)?;
    rendered(&mut docs, &snapshot.meshtls_authentications)?;
    rendered(&mut docs, &snapshot.network_authentications)?;
    rendered(&mut docs, &snapshot.http_routes)?;
    rendered(&mut docs, &snapshot.grpc_routes)?;
    rendered(&mut docs, &snapshot.rate_limits)?;
    rendered(&mut docs, &snapshot.egress_networks)?;
    for pod in &plan.pods {
        let is_ready = ready
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .copied()
            .unwrap_or(false);
        let mut labels = pod.labels.clone();
        labels.insert(WORKLOAD_LABEL.into(), pod.deployment.clone());
        labels.insert(CONTROL_PLANE_NS_LABEL.into(), CONTROL_NAMESPACE.into());
        labels.insert(POD_TEMPLATE_HASH_LABEL.into(), pod.template_hash.clone());
        let workload = ExternalWorkload {
            metadata: Metadata {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                labels,
                annotations: pod.annotations.clone(),
            },
            spec: ExternalWorkloadSpec {
                mesh_tls: Some(MeshTls {
                    identity: pod.identity.clone(),
                    server_name: None,
                }),
                ports: pod
                    .ports
                    .iter()
                    .map(|(name, port)| WorkloadPort {
                        name: name.clone(),
                        port: *port,
                        protocol: None,
                    })
                    .collect(),
                workload_ips: vec![WorkloadIp { ip: pod.ip.into() }],
            },
            status: Some(WorkloadStatus {
                conditions: vec![Condition {
                    kind: "Ready".into(),
                    status: if is_ready { "True" } else { "False" }.into(),
                }],
            }),
        };
        docs.push(to_manifest(&workload)?);
    }
    Ok(docs.join("---\n"))
}

fn rendered<T: weft_api::Resource>(
    docs: &mut Vec<String>,
    resources: &BTreeMap<weft_api::Key, std::sync::Arc<T>>,
) -> anyhow::Result<()> {
    for r in resources.values() {
        docs.push(to_manifest(&**r)?);
    }
    Ok(())
}

/// Replaces `dir/cluster.yaml` with `text` (write, then rename).
pub fn write(dir: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(".cluster.yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("cluster.yaml"))
        .with_context(|| format!("replacing {}/cluster.yaml", dir.display()))
}
