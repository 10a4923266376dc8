//! The identity service (the mesh CA) and its CLI.
//!
//! Files of a CA directory (`weft identity ca create`):
//!
//! | file | what |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | trust anchor (root); the key can be moved offline once the issuer exists |
//! | `issuer.crt`, `issuer.key` | issuer, signed by the anchor; signs proxies' leaf certificates |
//! | `token.key` | key for workload tokens (`weft identity token`) |
//!
//! `ca.crt` may hold several roots (a bundle during trust-anchor rotation).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use linkerd2_proxy_api::identity::identity_server::{Identity as IdentityApi, IdentityServer};
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_identity::Identity;
use weft_identity::ca::{self, Ca, CaError, CertAndKey};
use weft_identity::token::{TokenKey, TokenKeys};

const ANCHOR_CERT: &str = "ca.crt";
const ANCHOR_KEY: &str = "ca.key";
const ISSUER_CERT: &str = "issuer.crt";
const ISSUER_KEY: &str = "issuer.key";
const TOKEN_KEY: &str = "token.key";

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// The mesh CA's files.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Mint a token that proves one identity, for a workload's proxy.
    Token(TokenArgs),
    /// Print a certificate (subject, SANs, issuer, validity), from a file or a proxy.
    Show(crate::show::ShowArgs),
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Generate a trust anchor, an issuer signed by it, and a token key (ECDSA P-256).
    Create(CreateArgs),
    /// Replace the issuer with a new one signed by the same trust anchor. A running
    /// identity service picks it up on its next request.
    RotateIssuer(RotateArgs),
    /// Put a new token-signing key in front; the old ones keep verifying the
    /// tokens they signed until retired. A running identity service picks it up.
    RotateTokenKey(RotateTokenKeyArgs),
}

#[derive(Args)]
pub struct RotateTokenKeyArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// Drop every older key: tokens they signed stop working at once.
    #[arg(long)]
    retire: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Directory to write the CA's files into.
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// Trust domain, the last part of every identity name.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    anchor_validity: Duration,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// The identity the token proves, e.g. web.demo.serviceaccount.identity.weft.cluster.local
    #[arg(long)]
    identity: String,
    /// How long the token is good for (at most 90 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Args)]
pub struct ServeArgs {
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

/// The identity service's own identity, unless told otherwise.
pub const IDENTITY_SERVICE_NAME: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";

pub fn run(cmd: IdentityCmd) -> anyhow::Result<()> {
    match cmd {
        IdentityCmd::Ca(CaCmd::Create(args)) => create(&args),
        IdentityCmd::Ca(CaCmd::RotateIssuer(args)) => rotate_issuer(&args),
        IdentityCmd::Show(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::show::run(args)),
        IdentityCmd::Ca(CaCmd::RotateTokenKey(args)) => {
            let keys = load_token_keys(&args.dir)?.rotate(args.retire)?;
            write_secret(&args.dir.join(TOKEN_KEY), &keys.to_text())?;
            println!(
                "token key {} signs from now on; {} key(s) verify",
                keys.keys()[0].id(),
                keys.keys().len()
            );
            Ok(())
        }
        IdentityCmd::Token(args) => {
            let identity: Identity = args.identity.parse()?;
            let keys = load_token_keys(&args.dir)?;
            println!("{}", keys.mint(&identity, args.ttl, SystemTime::now())?);
            Ok(())
        }
    }
}

/// Keys are written 0600 and certificates 0644, atomically (secure_fs).
fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::secure_fs::write_atomic(path, contents.as_bytes(), 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::secure_fs::write_atomic(path, contents.as_bytes(), 0o644)
}

fn create(args: &CreateArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    crate::secure_fs::private_dir(dir)?;
    let files = [ANCHOR_CERT, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY];
    if !args.force
        && let Some(existing) = files.iter().find(|f| dir.join(f).exists())
    {
        bail!(
            "{} already exists; use --force to replace the CA",
            dir.join(existing).display()
        );
    }
    let anchor =
        ca::generate_trust_anchor(&format!("root.{}", args.trust_domain), args.anchor_validity)?;
    let issuer = ca::generate_issuer(
        &anchor,
        &format!("identity.{}", args.trust_domain),
        args.issuer_validity,
    )?;
    let token_key = TokenKey::generate()?;
    write_public(&dir.join(ANCHOR_CERT), &anchor.cert_pem)?;
    write_secret(&dir.join(ANCHOR_KEY), &anchor.key_pem)?;
    write_public(&dir.join(ISSUER_CERT), &issuer.cert_pem)?;
    write_secret(&dir.join(ISSUER_KEY), &issuer.key_pem)?;
    write_secret(&dir.join(TOKEN_KEY), &TokenKeys::new(token_key).to_text())?;
    let days = |d: Duration| d.as_secs() / 86_400;
    println!(
        "created trust anchor (valid {} days) and issuer (valid {} days) in {}",
        days(args.anchor_validity),
        days(args.issuer_validity),
        dir.display()
    );
    Ok(())
}

fn rotate_issuer(args: &RotateArgs) -> anyhow::Result<()> {
    let anchor = CertAndKey {
        cert_pem: read(&args.dir, ANCHOR_CERT)?,
        key_pem: read_key(&args.dir, ANCHOR_KEY)?,
    };
    let issuer = ca::generate_issuer(
        &anchor,
        &format!("identity.{}", args.trust_domain),
        args.issuer_validity,
    )?;
    // Key first: a service reading between the two renames fails its check and
    // keeps the old issuer, instead of pairing a new certificate with an old key.
    write_secret(&args.dir.join(ISSUER_KEY), &issuer.key_pem)?;
    write_public(&args.dir.join(ISSUER_CERT), &issuer.cert_pem)?;
    println!(
        "rotated the issuer in {} (valid {} days)",
        args.dir.display(),
        args.issuer_validity.as_secs() / 86_400
    );
    Ok(())
}

fn read(dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (create a CA with `weft identity ca create --dir {}`)",
            path.display(),
            dir.display()
        )
    })
}

/// A key file of the CA directory: present, and private.
fn read_key(dir: &Path, file: &str) -> anyhow::Result<String> {
    if !dir.join(file).exists() {
        // Says how to make one.
        read(dir, file)?;
    }
    crate::secure_fs::read_key(&dir.join(file))
}

pub(crate) fn load_token_keys(dir: &Path) -> anyhow::Result<TokenKeys> {
    TokenKeys::parse(&read_key(dir, TOKEN_KEY)?)
        .with_context(|| format!("{}", dir.join(TOKEN_KEY).display()))
}

fn load_ca(dir: &Path, leaf_lifetime: Duration) -> anyhow::Result<Ca> {
    let issuer = CertAndKey {
        cert_pem: read(dir, ISSUER_CERT)?,
        key_pem: read_key(dir, ISSUER_KEY)?,
    };
    let anchors = read(dir, ANCHOR_CERT)?;
    Ca::new(&issuer, &anchors, leaf_lifetime)
        .with_context(|| format!("loading the issuer from {}", dir.display()))
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
    current: std::sync::Mutex<(Arc<TokenKeys>, Option<SystemTime>)>,
}

impl MintedTokens {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join(TOKEN_KEY);
        let stamp = modified(&file);
        Ok(MintedTokens {
            current: std::sync::Mutex::new((Arc::new(load_token_keys(dir)?), stamp)),
            file,
        })
    }

    fn keys(&self) -> Arc<TokenKeys> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
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
    current: std::sync::Mutex<(Arc<Ca>, Vec<Option<SystemTime>>)>,
}

impl CaSource {
    pub fn load(dir: &Path, leaf_lifetime: Duration) -> anyhow::Result<Self> {
        let stamp = Self::stamp(dir);
        let ca = Arc::new(load_ca(dir, leaf_lifetime)?);
        Ok(CaSource {
            dir: dir.to_path_buf(),
            leaf_lifetime,
            current: std::sync::Mutex::new((ca, stamp)),
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
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
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

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ca = Arc::new(CaSource::load(&args.dir, args.leaf_lifetime)?);
    let serving = crate::serving_tls::ServingIdentity::new(args.name.clone(), ca.clone())?;
    let verifier = MintedTokens::load(&args.dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the identity service to {}", args.listen))?;
    info!(addr = %listener.local_addr()?, name = %args.name, leaf_lifetime = ?args.leaf_lifetime, "identity service listening (TLS)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let metrics = IdentityMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let admin = tokio::spawn(crate::admin::serve(args.admin_listen, Arc::new(registry)));
    let service = IdentityService::new(ca, Box::new(verifier), metrics);
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(service))
        .serve_with_incoming_shutdown(crate::serving_tls::incoming(listener, serving)?, shutdown);
    tokio::select! {
        served = server => served?,
        admin = admin => admin??,
    }
    Ok(())
}
