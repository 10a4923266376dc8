//! `weft control identity|destination`: the clap form of each control-plane
//! service's settings, turned into the library's `Config`. The services
//! themselves live in `weft_control`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_control::destination::DESTINATION_SERVICE_NAME;
use weft_control::identity::IDENTITY_SERVICE_NAME;
use weft_identity::Identity;

#[derive(Subcommand)]
pub enum ControlCmd {
    /// The identity service (io.linkerd.proxy.identity.Identity/Certify): the mesh CA.
    Identity(IdentityArgs),
    /// The destination service (io.linkerd.proxy.destination.Destination): endpoints and
    /// profiles from a directory of manifests.
    Destination(DestinationArgs),
    /// The metrics API (`linkerd viz`'s questions, answered from Prometheus,
    /// as JSON).
    Viz(crate::viz::ServeArgs),
}

pub async fn run(cmd: ControlCmd) -> anyhow::Result<()> {
    match cmd {
        ControlCmd::Identity(args) => weft_control::identity::serve(args.config()).await,
        ControlCmd::Destination(args) => weft_control::destination::serve(args.config()?).await,
        ControlCmd::Viz(args) => crate::viz::serve(args).await,
    }
}

#[derive(Args)]
pub struct IdentityArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// Where the Certify gRPC service listens (Linkerd's identity port is 8080).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Admin server: /metrics, /ready, /live.
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_listen: SocketAddr,
    /// Lifetime of the leaf certificates it signs.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_lifetime: Duration,
    /// The identity this service proves over TLS (proxies name it in
    /// WEFT_PROXY_IDENTITY_SVC_NAME).
    #[arg(long, default_value = IDENTITY_SERVICE_NAME)]
    name: Identity,
}

impl IdentityArgs {
    fn config(self) -> weft_control::identity::Config {
        weft_control::identity::Config {
            dir: self.dir,
            listen: self.listen,
            admin_listen: self.admin_listen,
            leaf_lifetime: self.leaf_lifetime,
            name: self.name,
        }
    }
}

#[derive(Args)]
pub struct DestinationArgs {
    /// Directory of manifests (Service, ExternalWorkload, ServiceProfile), watched for changes.
    #[arg(long)]
    manifests: PathBuf,
    /// Where the Destination gRPC service listens (Linkerd's destination port is 8086).
    #[arg(long, default_value = "0.0.0.0:8086")]
    listen: SocketAddr,
    /// Admin server: /metrics, /ready, /live.
    #[arg(long, default_value = "0.0.0.0:9996")]
    admin_listen: SocketAddr,
    /// Service names are `<name>.<namespace>.svc.<cluster domain>`.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// How often the manifests directory is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// The identity service (host:port) to get this service's certificate
    /// from, as any workload does: with it, the service serves TLS as
    /// `--name`. Without it the service is plaintext, for a trusted network only.
    #[arg(long, requires_all = ["token_file", "trust_anchors"])]
    identity_addr: Option<String>,
    /// The identity the identity service proves.
    #[arg(long, default_value = IDENTITY_SERVICE_NAME)]
    identity_name: Identity,
    /// A token for `--name` (`weft identity token --identity NAME`), read anew
    /// at each renewal.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The trust anchors (PEM, e.g. the CA directory's ca.crt).
    #[arg(long)]
    trust_anchors: Option<PathBuf>,
    /// The identity this service proves over TLS (proxies name it in
    /// WEFT_PROXY_DESTINATION_SVC_NAME and WEFT_PROXY_POLICY_SVC_NAME).
    #[arg(long, default_value = DESTINATION_SERVICE_NAME)]
    name: Identity,
    /// The inbound policy of ports no Server selects (all-unauthenticated,
    /// all-authenticated, cluster-unauthenticated, cluster-authenticated,
    /// deny, audit); a workload's config.linkerd.io/default-inbound-policy
    /// overrides it.
    #[arg(long, default_value = "all-unauthenticated")]
    default_inbound_policy: weft_api::DefaultPolicy,
    /// The cluster's networks (comma-separated CIDRs): what `cluster-*`
    /// policies admit, and where authorizations without a
    /// NetworkAuthentication admit clients from.
    #[arg(long, default_value = weft_control::policy::DEFAULT_CLUSTER_NETWORKS)]
    cluster_networks: String,
    /// The namespace whose EgressNetworks apply to clients of every
    /// namespace (others apply to their own namespace's clients).
    #[arg(long, default_value = weft_control::policy::DEFAULT_EGRESS_NAMESPACE)]
    global_egress_network_namespace: String,
}

impl DestinationArgs {
    fn config(self) -> anyhow::Result<weft_control::destination::Config> {
        let identity = match (self.identity_addr, self.token_file, self.trust_anchors) {
            (Some(addr), Some(token_file), Some(anchors)) => {
                let pem = std::fs::read_to_string(&anchors)
                    .with_context(|| format!("reading the trust anchors {}", anchors.display()))?;
                Some(weft_identity::certify::CertifyConfig {
                    svc: weft_identity::control::ControlAddr {
                        addr,
                        identity: Some(self.identity_name),
                    },
                    local_name: self.name.clone(),
                    token_file,
                    trust_anchors: weft_identity::verify::TrustAnchors::from_pem(&pem)
                        .with_context(|| format!("trust anchors in {}", anchors.display()))?,
                })
            }
            _ => None,
        };
        Ok(weft_control::destination::Config {
            manifests: self.manifests,
            poll: self.poll,
            listen: self.listen,
            admin_listen: self.admin_listen,
            policy: weft_control::policy::PolicyConfig {
                default_policy: self.default_inbound_policy,
                cluster_networks: weft_control::policy::parse_networks(&self.cluster_networks)
                    .map_err(|e| anyhow::anyhow!("--cluster-networks: {e}"))?,
                trust_domain: self.cluster_domain.clone(),
                cluster_domain: self.cluster_domain.clone(),
                egress_namespace: self.global_egress_network_namespace,
                ..Default::default()
            },
            cluster_domain: self.cluster_domain,
            identity,
            name: self.name,
        })
    }
}
