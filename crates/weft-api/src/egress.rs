//! `EgressNetwork` (policy.linkerd.io/v1alpha1): networks outside the
//! cluster that workloads may (`Allow`) or may not (`Deny`) reach, as a
//! parent that HTTPRoutes and GRPCRoutes attach to, to let only some hosts
//! or paths out.
//!
//! An EgressNetwork applies to clients in its own namespace; one in the
//! global egress namespace (`--global-egress-network-namespace`, Linkerd's
//! `linkerd-egress` by default) to every client.

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, check_name};
use crate::policy::Network;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct EgressNetwork {
    pub metadata: Metadata,
    pub spec: EgressNetworkSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressNetworkSpec {
    /// None: every address outside the cluster networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    pub traffic_policy: TrafficPolicy,
}

/// What happens to traffic no attached route lets out.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum TrafficPolicy {
    Allow,
    Deny,
}

pub(crate) fn check_egress_network(e: &EgressNetwork) -> Result<(), String> {
    check_name(&e.metadata)?;
    crate::traffic::outbound_rate_limit(&e.metadata.annotations)?;
    crate::policy::check_networks(&e.spec.networks)
}
