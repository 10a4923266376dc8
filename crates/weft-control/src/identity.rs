//! The identity service (the mesh CA) over Linkerd's `Identity/Certify`:
//! a caller proves an identity with a credential (a [`CredentialVerifier`]),
//! sends a CSR for it, and gets a short-lived leaf signed by the issuer. The
//! CA's files are reloaded when they change (issuer rotation, a trust-anchor
//! bundle), and the token keys likewise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::identity_server::{Identity as IdentityApi, IdentityServer};
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_identity::Identity;
use weft_identity::ca::{Ca, CaError};
use weft_identity::token::TokenKeys;

use crate::ca_dir::{ANCHOR_CERT, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY, load_ca, load_token_keys};

/// The identity service's own identity, unless told otherwise.
pub const IDENTITY_SERVICE_NAME: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";

/// What the identity service needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The CA directory (`weft identity ca create`).
    pub dir: PathBuf,
    /// Where Certify listens (Linkerd's identity port is 8080).
    pub listen: SocketAddr,
    /// The admin server: /metrics, /ready, /live.
    pub admin_listen: SocketAddr,
    /// Lifetime of the leaf certificates it signs.
    pub leaf_lifetime: Duration,
    /// The identity this service proves over TLS.
    pub name: Identity,
}

/// Proves which identity a Certify caller holds. Minted tokens now; Kubernetes
/// ServiceAccount tokens (TokenReview) implement the same trait later.
#[tonic::async_trait]
pub trait CredentialVerifier: Send + Sync + 'static {
    async fn verify(&self, token: &[u8]) -> Result<Identity, Status>;
}

/// Tokens minted by `weft identity token` with this control plane's keys,
/// re-read when the key file changes (a rotated or retired key takes effect
/// without a restart; a file that does not load keeps the last good keys).
pub struct MintedTokens {
    file: PathBuf,
    current: parking_lot::Mutex<(Arc<TokenKeys>, Option<SystemTime>)>,
}

impl MintedTokens {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join(TOKEN_KEY);
        let stamp = modified(&file);
        Ok(MintedTokens {
            current: parking_lot::Mutex::new((Arc::new(load_token_keys(dir)?), stamp)),
            file,
        })
    }

    fn keys(&self) -> Arc<TokenKeys> {
        let mut current = self.current.lock();
        let stamp = modified(&self.file);
        if stamp != current.1 {
            match crate::secure_fs::read_key(&self.file)
                .and_then(|text| Ok(TokenKeys::parse(&text)?))
            {
                Ok(keys) => {
                    info!(
                        keys = keys.keys().len(),
                        signing = keys.keys()[0].id(),
                        "token keys changed"
                    );
                    *current = (Arc::new(keys), stamp);
                }
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "the token key file changed but does not load; keeping the previous keys"
                ),
            }
        }
        current.0.clone()
    }
}

fn modified(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

#[tonic::async_trait]
impl CredentialVerifier for MintedTokens {
    async fn verify(&self, token: &[u8]) -> Result<Identity, Status> {
        let token = std::str::from_utf8(token)
            .map_err(|_| Status::unauthenticated("the token is not UTF-8 text"))?;
        self.keys()
            .verify(token, SystemTime::now())
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertifyLabels {
    /// `ok`, or why the request was refused.
    result: &'static str,
}

/// The identity service's metrics.
#[derive(Clone, Default)]
pub struct IdentityMetrics {
    certify_total: Family<CertifyLabels, Counter>,
}

impl IdentityMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "identity_certify",
            "Certify requests by result",
            self.certify_total.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.certify_total
            .get_or_create(&CertifyLabels { result })
            .inc();
    }
}

/// The CA, reloaded from its directory when the files change (issuer
/// rotation, a trust-anchor bundle update) without restarting the service.
pub struct CaSource {
    dir: PathBuf,
    leaf_lifetime: Duration,
    current: parking_lot::Mutex<(Arc<Ca>, Vec<Option<SystemTime>>)>,
}

impl CaSource {
    pub fn load(dir: &Path, leaf_lifetime: Duration) -> anyhow::Result<Self> {
        let stamp = Self::stamp(dir);
        let ca = Arc::new(load_ca(dir, leaf_lifetime)?);
        Ok(CaSource {
            dir: dir.to_path_buf(),
            leaf_lifetime,
            current: parking_lot::Mutex::new((ca, stamp)),
        })
    }

    fn stamp(dir: &Path) -> Vec<Option<SystemTime>> {
        [ANCHOR_CERT, ISSUER_CERT, ISSUER_KEY]
            .iter()
            .map(|f| {
                std::fs::metadata(dir.join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }

    /// The CA to sign with: reloaded if the files changed and the new ones are
    /// good; otherwise the last good one.
    pub fn get(&self) -> Arc<Ca> {
        let mut current = self.current.lock();
        let stamp = Self::stamp(&self.dir);
        if stamp != current.1 {
            match load_ca(&self.dir, self.leaf_lifetime) {
                Ok(ca) => {
                    info!(dir = %self.dir.display(), "CA files changed; signing with the new issuer");
                    *current = (Arc::new(ca), stamp);
                }
                // Keep the stamp unchanged so the next request tries again.
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "CA files changed but do not load; keeping the previous issuer"
                ),
            }
        }
        current.0.clone()
    }
}

pub struct IdentityService {
    ca: Arc<CaSource>,
    verifier: Box<dyn CredentialVerifier>,
    metrics: IdentityMetrics,
}

impl IdentityService {
    pub fn new(
        ca: Arc<CaSource>,
        verifier: Box<dyn CredentialVerifier>,
        metrics: IdentityMetrics,
    ) -> Self {
        IdentityService {
            ca,
            verifier,
            metrics,
        }
    }

    fn refuse(&self, result: &'static str, status: Status, identity: &str) -> Status {
        self.metrics.count(result);
        warn!(identity, code = ?status.code(), reason = status.message(), "certify refused");
        status
    }
}

#[tonic::async_trait]
impl IdentityApi for IdentityService {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = req.into_inner();
        let identity: Identity =
            req.identity
                .parse()
                .map_err(|e: weft_identity::name::NameError| {
                    self.refuse(
                        "bad_request",
                        Status::invalid_argument(e.to_string()),
                        &req.identity,
                    )
                })?;
        let proven = match self.verifier.verify(&req.token).await {
            Ok(p) => p,
            Err(status) => return Err(self.refuse("unauthenticated", status, &req.identity)),
        };
        if proven != identity {
            let status = Status::permission_denied(format!(
                "the credential proves {proven}, not {identity}"
            ));
            return Err(self.refuse("identity_mismatch", status, &req.identity));
        }
        let leaf = self
            .ca
            .get()
            .sign(
                &req.certificate_signing_request,
                &identity,
                SystemTime::now(),
            )
            .map_err(|e| match e {
                CaError::Csr(e) => self.refuse(
                    "bad_csr",
                    Status::invalid_argument(format!("bad CSR: {e}")),
                    &req.identity,
                ),
                other => self.refuse(
                    "internal",
                    Status::internal(other.to_string()),
                    &req.identity,
                ),
            })?;
        self.metrics.count("ok");
        let until = leaf
            .valid_until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        info!(%identity, valid_for = ?leaf.valid_until.duration_since(SystemTime::now()).unwrap_or_default(), "certified");
        Ok(Response::new(CertifyResponse {
            leaf_certificate: leaf.cert_der,
            intermediate_certificates: leaf.chain,
            valid_until: Some(prost_types::Timestamp {
                seconds: until.as_secs() as i64,
                nanos: until.subsec_nanos() as i32,
            }),
        }))
    }
}

/// Runs the identity service until Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let ca = Arc::new(CaSource::load(&config.dir, config.leaf_lifetime)?);
    let serving = crate::serving_tls::ServingIdentity::new(config.name.clone(), ca.clone())?;
    let verifier = MintedTokens::load(&config.dir)?;
    let metrics = IdentityMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let service = IdentityServer::new(IdentityService::new(ca, Box::new(verifier), metrics));
    info!(name = %config.name, leaf_lifetime = ?config.leaf_lifetime, "identity service starting");
    crate::grpc::serve(
        crate::grpc::Serving {
            what: "identity service",
            listen: config.listen,
            admin_listen: config.admin_listen,
            registry,
            tls: Some(serving),
        },
        tonic::transport::Server::builder().add_service(service),
    )
    .await
}
