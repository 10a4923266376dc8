//! What a proxy is told, as one value: [`ProxySpec`] and its environment.
//! `weft up` starts proxies from it, and the Kubernetes injector will write
//! the same variables into pods, so the two can never disagree on a name.
//! The names are the proxy's own settings (`weft-proxy`'s `SETTINGS`
//! table); a test in `weft-proxy` checks every name written here against it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A control-plane service: where, and the identity it proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddr {
    pub addr: SocketAddr,
    pub name: String,
}

/// A proxy's listeners when they are not the defaults (rootless: each pod
/// on its own loopback address, with no capture).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub inbound: SocketAddr,
    /// Where inbound traffic goes when nothing redirected it (the program).
    pub inbound_forward: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

/// Where a proxy watches its inbound policy, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyClient {
    pub service: ServiceAddr,
    /// `namespace:name` of the workload (an ExternalWorkload in the files store).
    pub workload: String,
}

/// Everything a meshed proxy is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub log: String,
    pub identity_service: ServiceAddr,
    pub destination_service: ServiceAddr,
    /// The inbound policy service, and this workload as it knows it
    /// (`namespace:name`).
    pub policy: Option<PolicyClient>,
    /// The identity this proxy proves.
    pub local_identity: String,
    pub token_file: PathBuf,
    /// PEM of the trust anchors.
    pub trust_anchors: String,
    /// Addresses in the mesh (pods, cluster IPs): never dialled in plaintext
    /// on a guess.
    pub mesh_networks: Vec<String>,
    pub listeners: Option<Listeners>,
}

impl ProxySpec {
    /// The environment the proxy reads, in its own setting names.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("WEFT_PROXY_LOG", self.log.clone()),
            (
                "WEFT_PROXY_IDENTITY_SVC_ADDR",
                self.identity_service.addr.to_string(),
            ),
            (
                "WEFT_PROXY_IDENTITY_SVC_NAME",
                self.identity_service.name.clone(),
            ),
            (
                "WEFT_PROXY_IDENTITY_LOCAL_NAME",
                self.local_identity.clone(),
            ),
            (
                "WEFT_PROXY_IDENTITY_TOKEN_FILE",
                self.token_file.display().to_string(),
            ),
            (
                "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
                self.trust_anchors.clone(),
            ),
            (
                "WEFT_PROXY_DESTINATION_SVC_ADDR",
                self.destination_service.addr.to_string(),
            ),
            (
                "WEFT_PROXY_DESTINATION_SVC_NAME",
                self.destination_service.name.clone(),
            ),
            ("WEFT_PROXY_MESH_NETWORKS", self.mesh_networks.join(",")),
        ];
        if let Some(p) = &self.policy {
            env.extend([
                ("WEFT_PROXY_POLICY_SVC_ADDR", p.service.addr.to_string()),
                ("WEFT_PROXY_POLICY_SVC_NAME", p.service.name.clone()),
                ("WEFT_PROXY_POLICY_WORKLOAD", p.workload.clone()),
            ]);
        }
        if let Some(l) = &self.listeners {
            env.extend([
                ("WEFT_PROXY_INBOUND_LISTEN_ADDR", l.inbound.to_string()),
                (
                    "WEFT_PROXY_INBOUND_FORWARD_ADDR",
                    l.inbound_forward.to_string(),
                ),
                ("WEFT_PROXY_OUTBOUND_LISTEN_ADDR", l.outbound.to_string()),
                ("WEFT_PROXY_ADMIN_LISTEN_ADDR", l.admin.to_string()),
            ]);
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// A spec with every field set, for checking names (tests).
    pub fn example() -> ProxySpec {
        let addr: SocketAddr = ([198, 18, 0, 1], 8080).into();
        ProxySpec {
            log: "info".into(),
            identity_service: ServiceAddr {
                addr,
                name: "identity.weft.serviceaccount.identity.weft.cluster.local".into(),
            },
            destination_service: ServiceAddr {
                addr,
                name: "destination.weft.serviceaccount.identity.weft.cluster.local".into(),
            },
            policy: Some(PolicyClient {
                service: ServiceAddr {
                    addr,
                    name: "destination.weft.serviceaccount.identity.weft.cluster.local".into(),
                },
                workload: "demo:web-0".into(),
            }),
            local_identity: "web.demo.serviceaccount.identity.weft.cluster.local".into(),
            token_file: "/run/token".into(),
            trust_anchors: "PEM".into(),
            mesh_networks: vec!["198.18.0.0/15".into()],
            listeners: Some(Listeners {
                inbound: addr,
                inbound_forward: addr,
                outbound: addr,
                admin: addr,
            }),
        }
    }
}
