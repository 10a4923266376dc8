//! `ExternalWorkload` (workload.linkerd.io/v1beta1): an endpoint outside
//! Kubernetes' own pods, with its mesh identity, ports and readiness. The
//! local mesh renders one per pod.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, PROXY_INBOUND_PORT_ANNOTATION, check_name};
use crate::service::opaque_ports;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExternalWorkload {
    pub metadata: Metadata,
    pub spec: ExternalWorkloadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkloadStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalWorkloadSpec {
    #[serde(default, rename = "meshTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadPort>,
    #[serde(rename = "workloadIPs")]
    pub workload_ips: Vec<WorkloadIp>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTls {
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIp {
    pub ip: IpAddr,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct WorkloadStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl ExternalWorkload {
    /// Ready unless a `Ready` condition says otherwise: hand-written local
    /// manifests have no status, and `weft up` sets one from health checks.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.kind == "Ready"))
            .is_none_or(|c| c.status == "True")
    }

    pub fn proxy_inbound_port(&self) -> u16 {
        self.metadata
            .annotations
            .get(PROXY_INBOUND_PORT_ANNOTATION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(4143)
    }
}

pub(crate) fn check_workload(w: &ExternalWorkload) -> Result<(), String> {
    check_name(&w.metadata)?;
    if w.spec.workload_ips.is_empty() {
        return Err("spec.workloadIPs needs at least one address".into());
    }
    if let Some(tls) = &w.spec.mesh_tls {
        tls.identity
            .parse::<weft_identity::Identity>()
            .map_err(|e| format!("spec.meshTLS.identity: {e}"))?;
    }
    if let Some(p) = w.metadata.annotations.get(PROXY_INBOUND_PORT_ANNOTATION)
        && !matches!(p.parse::<u16>(), Ok(1..))
    {
        return Err(format!(
            "annotation {PROXY_INBOUND_PORT_ANNOTATION}={p:?} is not a port"
        ));
    }
    opaque_ports(&w.metadata)?;
    Ok(())
}
