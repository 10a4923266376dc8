//! `Deployment` (apps/v1), the part the local mesh runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{CONTROL_NAMESPACE, LabelSelector, Metadata, check_name, is_dns_label};

/// A `Deployment` (apps/v1): the part the local mesh (`weft up`) runs, as
/// replicas of one local program, each a "pod" with its own proxy and the
/// identity of its service account. On Kubernetes the same manifest runs
/// the image; locally the container's `command` is run and the image is not
/// used. Pod fields the local mesh has no use for are accepted and ignored,
/// so manifests written for a cluster still load.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Deployment {
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "one_replica")]
    pub replicas: u32,
    pub selector: LabelSelector,
    pub template: PodTemplate,
}

fn one_replica() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
}

/// Replicas one Deployment may ask of the local mesh: each is a network
/// namespace with two processes.
pub const MAX_LOCAL_REPLICAS: u32 = 32;

pub(crate) fn check_deployment(d: &Deployment) -> Result<(), String> {
    check_name(&d.metadata)?;
    if d.metadata.namespace == CONTROL_NAMESPACE {
        return Err(format!(
            "namespace {CONTROL_NAMESPACE} is reserved for the control plane: a workload there would be \
             issued a control-plane identity (such as destination.{CONTROL_NAMESPACE}.serviceaccount...)"
        ));
    }
    let spec = &d.spec;
    if spec.replicas > MAX_LOCAL_REPLICAS {
        return Err(format!(
            "spec.replicas {} is more than the local mesh runs ({MAX_LOCAL_REPLICAS})",
            spec.replicas
        ));
    }
    if spec.selector.match_labels.is_empty() {
        return Err(
            "spec.selector.matchLabels is empty: it must select the template's labels".into(),
        );
    }
    for (k, v) in &spec.selector.match_labels {
        if spec.template.metadata.labels.get(k) != Some(v) {
            return Err(format!(
                "spec.selector.matchLabels {k}={v} is not among spec.template.metadata.labels"
            ));
        }
    }
    if let Some(sa) = &spec.template.spec.service_account_name
        && !is_dns_label(sa)
    {
        return Err(format!(
            "serviceAccountName {sa:?} is not a DNS label (lowercase letters, digits, '-')"
        ));
    }
    let [container] = spec.template.spec.containers.as_slice() else {
        return Err(format!(
            "the local mesh runs one container per pod, not {}",
            spec.template.spec.containers.len()
        ));
    };
    if container
        .command
        .first()
        .is_none_or(|c| c.trim().is_empty())
    {
        return Err(format!(
            "container {:?} has no command: the local mesh runs a program, not the image",
            container.name
        ));
    }
    let mut names = std::collections::HashSet::new();
    for p in &container.ports {
        if p.container_port == 0 {
            return Err(format!(
                "container {:?}: containerPort 0 is not a port",
                container.name
            ));
        }
        if let Some(name) = &p.name
            && !names.insert(name)
        {
            return Err(format!(
                "container {:?}: port name {name:?} is used twice",
                container.name
            ));
        }
    }
    Ok(())
}
