//! The mesh's resources, shaped like their Kubernetes counterparts so the same
//! manifests work with the files store now and the Kubernetes store later:
//! `Service` (core/v1), `ExternalWorkload` (workload.linkerd.io/v1beta1),
//! `ServiceProfile` (linkerd.io/v1alpha2) and `Deployment` (apps/v1, the
//! subset the local mesh runs as processes).
//!
//! Every kind is declared once, in the [`kinds!`] list below: its type (in
//! its own module, with its check), the field that holds it, its `kind` and
//! the apiVersions accepted. [`Manifests`] (what files hold), [`Resources`]
//! (what a snapshot serves: one per kind and key), the parser's dispatch,
//! validation and the list of known kinds are all generated from that list,
//! so a new kind is its type, its check and one line there.
//!
//! [`parse_manifests`] reads a multi-document YAML file; see [`manifest`].

mod deployment;
mod egress;
mod grpc_route;
mod manifest;
mod meta;
mod policy;
mod profile;
pub mod proxy;
mod route;
mod service;
pub mod traffic;
mod workload;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use deployment::*;
pub use egress::*;
pub use grpc_route::*;
pub use manifest::{
    Located, MAX_MANIFEST_BYTES, ManifestError, Origins, parse_manifests, to_manifest, yaml_lines,
};
pub use meta::*;
pub use policy::*;
pub use profile::*;
pub use route::*;
pub use service::*;
pub use workload::*;

/// What every kind has: its name and apiVersions, metadata, and the checks
/// types alone cannot make.
pub trait Resource: serde::de::DeserializeOwned + serde::Serialize {
    const KIND: &'static str;
    /// Accepted apiVersions; the first is the one written.
    const API_VERSIONS: &'static [&'static str];
    fn metadata(&self) -> &Metadata;
    fn check(&self) -> Result<(), String>;
}

/// Declares every kind at once (see the crate docs).
macro_rules! kinds {
    ($(
        $(#[$doc:meta])*
        $field:ident: $type:ident = $kind:literal [$($version:literal),+], $check:path;
    )+) => {
        $(
            impl Resource for $type {
                const KIND: &'static str = $kind;
                const API_VERSIONS: &'static [&'static str] = &[$($version),+];
                fn metadata(&self) -> &Metadata {
                    &self.metadata
                }
                fn check(&self) -> Result<(), String> {
                    $check(self)
                }
            }
        )+

        /// Resources as read from manifest files, by kind, each with where it
        /// was found (duplicates included: [`Resources`] keeps one).
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Manifests {
            $( $(#[$doc])* pub $field: Vec<Located<$type>>, )+
        }

        /// One resource per kind and key: what a snapshot serves.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Resources {
            $( $(#[$doc])* pub $field: BTreeMap<Key, Arc<$type>>, )+
        }

        /// Every kind with its accepted apiVersions.
        pub const KINDS: &[(&str, &[&str])] = &[$( ($kind, &[$($version),+]) ),+];

        impl Manifests {
            /// Adds `other`'s resources (shared, not copied).
            pub fn extend_from(&mut self, other: &Manifests) {
                $( self.$field.extend(other.$field.iter().cloned()); )+
            }

            /// Reads `doc` as a `kind` into its list; `None` for a kind not
            /// in the list.
            fn read(
                &mut self,
                kind: &str,
                doc: &str,
                file: &Path,
                line: usize,
            ) -> Option<Result<(), serde_yaml_ng::Error>> {
                match kind {
                    $( $kind => Some(manifest::read_into(doc, file, line, &mut self.$field)), )+
                    _ => None,
                }
            }

            /// The resources that pass their checks; the others become errors.
            fn checked(self, errors: &mut Vec<ManifestError>) -> Manifests {
                Manifests { $( $field: manifest::checked(self.$field, errors), )+ }
            }
        }

        impl Resources {
            /// One resource per kind and key from `manifests`. Definitions
            /// from the file that `served` a key come first; `keep` is asked
            /// about each in turn and says whether it is the one kept.
            pub fn first_of_each(
                manifests: Manifests,
                served: &Origins,
                keep: &mut impl FnMut(&'static str, Key, &Path, usize) -> bool,
            ) -> Resources {
                Resources { $( $field: manifest::first_of_each(manifests.$field, served, keep), )+ }
            }

            /// How many resources of each kind, for logs.
            pub fn counts(&self) -> Vec<(&'static str, usize)> {
                vec![$( ($kind, self.$field.len()) ),+]
            }
        }
    };
}

kinds! {
    services: Service = "Service" ["v1"], service::check_service;
    workloads: ExternalWorkload = "ExternalWorkload"
        ["workload.linkerd.io/v1beta1", "workload.linkerd.io/v1alpha1"], workload::check_workload;
    /// Keyed by namespace and the profile's name (the service FQDN).
    profiles: ServiceProfile = "ServiceProfile"
        ["linkerd.io/v1alpha2", "linkerd.io/v1alpha1"], profile::check_profile;
    /// What the local mesh runs (`weft up`); the destination service does not use them.
    deployments: Deployment = "Deployment" ["apps/v1"], deployment::check_deployment;
    servers: Server = "Server"
        ["policy.linkerd.io/v1beta3", "policy.linkerd.io/v1beta2", "policy.linkerd.io/v1beta1"],
        policy::check_server;
    authorization_policies: AuthorizationPolicy = "AuthorizationPolicy"
        ["policy.linkerd.io/v1alpha1"], policy::check_authorization_policy;
    meshtls_authentications: MeshTlsAuthentication = "MeshTLSAuthentication"
        ["policy.linkerd.io/v1alpha1"], policy::check_meshtls_authentication;
    network_authentications: NetworkAuthentication = "NetworkAuthentication"
        ["policy.linkerd.io/v1alpha1"], policy::check_network_authentication;
    /// Inbound (parent: a Server) and outbound (parent: a Service).
    http_routes: HttpRoute = "HTTPRoute"
        ["policy.linkerd.io/v1beta3", "gateway.networking.k8s.io/v1",
         "policy.linkerd.io/v1beta2", "gateway.networking.k8s.io/v1beta1"],
        route::check_http_route;
    /// Outbound only (parent: a Service).
    grpc_routes: GrpcRoute = "GRPCRoute"
        ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"],
        grpc_route::check_grpc_route;
    rate_limits: HttpLocalRateLimitPolicy = "HTTPLocalRateLimitPolicy"
        ["policy.linkerd.io/v1alpha1"], policy::check_rate_limit;
    egress_networks: EgressNetwork = "EgressNetwork"
        ["policy.linkerd.io/v1alpha1"], egress::check_egress_network;
}
