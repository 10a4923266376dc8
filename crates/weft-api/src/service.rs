//! `Service` (core/v1): a name, a selector and ports, and Linkerd's
//! opaque-ports annotation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, OPAQUE_PORTS_ANNOTATION, check_name};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// A port number, or the name of a workload port; default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

pub(crate) fn check_service(s: &Service) -> Result<(), String> {
    check_name(&s.metadata)?;
    let mut seen = std::collections::HashSet::new();
    for p in &s.spec.ports {
        if p.port == 0 {
            return Err("port 0 is not a port".into());
        }
        if !seen.insert(p.port) {
            return Err(format!("port {} is listed twice", p.port));
        }
        if let Some(PortRef::Number(0)) = p.target_port {
            return Err(format!("port {}: targetPort 0 is not a port", p.port));
        }
    }
    opaque_ports(&s.metadata)?;
    crate::traffic::check_annotations(&s.metadata.annotations)?;
    Ok(())
}

/// The ports listed in the opaque-ports annotation (`3306,5432` or `4000-4010`).
pub fn opaque_ports(meta: &Metadata) -> Result<Vec<(u16, u16)>, String> {
    let Some(list) = meta.annotations.get(OPAQUE_PORTS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo @ 1..), Ok(hi)) if lo <= hi => Ok((lo, hi)),
                _ => Err(format!(
                    "annotation {OPAQUE_PORTS_ANNOTATION}: {part:?} is not a port or range"
                )),
            }
        })
        .collect()
}
