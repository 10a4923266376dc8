//! A workload's own identity, as a client of the identity service: a private
//! key made at start that never leaves the process, and a certificate for it
//! from Certify, renewed before it expires. The proxy and the control plane's
//! other services (which get their serving certificates this way) share it.
//!
//! The loop: send the CSR with the credential read from the token file; check
//! what comes back (chains to the trust anchors, names this identity,
//! certifies this key); publish it; sleep until 70% of its remaining life;
//! repeat. Failures retry with capped exponential back-off, and the last good
//! certificate keeps serving meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::Identity;
use crate::control::{ChannelError, ControlAddr};
use crate::csr::new_key_and_csr;
use crate::verify::TrustAnchors;

/// How a workload gets its identity.
#[derive(Clone, Debug)]
pub struct CertifyConfig {
    /// The identity service, always over TLS.
    pub svc: ControlAddr,
    pub local_name: Identity,
    /// Read anew at every request: tokens are rotated underneath.
    pub token_file: std::path::PathBuf,
    pub trust_anchors: TrustAnchors,
}

/// Told of every Certify outcome: `Some(valid_until)` on success, `None` on
/// failure (the proxy's `identity_cert_*` metrics).
pub type OnRefresh = Box<dyn Fn(Option<SystemTime>) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot make a key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// How long a Certify call may take.
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Renew when this share of the certificate's remaining life has passed.
const RENEW_AT: f64 = 0.7;

/// A certificate this proxy may present, with its private key.
pub struct Credentials {
    pub identity: Identity,
    pub leaf_der: Vec<u8>,
    /// Intermediates, issuer first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER of the private key.
    pub key_der: Vec<u8>,
    pub valid_until: SystemTime,
}

/// Never prints the key, so no log line or panic message can carry it.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("leaf_der", &format_args!("{} bytes", self.leaf_der.len()))
            .field("chain", &self.chain.len())
            .field("key_der", &"<redacted>")
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

pub type CredentialsWatch = watch::Receiver<Option<Arc<Credentials>>>;

#[derive(Debug, thiserror::Error)]
enum CertifyError {
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the identity service at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the identity service refused: {0}")]
    Refused(String),
    #[error("no answer from the identity service within {0:?}")]
    Timeout(Duration),
    #[error("the certificate received is not acceptable: {0}")]
    Invalid(String),
}

/// Starts the identity loop; the returned watch holds the current credentials
/// (`None` until the first certificate arrives).
pub fn spawn(config: CertifyConfig, on_refresh: OnRefresh) -> Result<CredentialsWatch, StartError> {
    let (key, csr) = new_key_and_csr(&config.local_name)?;
    let key_der = key.serialize_der();
    let channel =
        crate::control::channel(&config.svc, Some(&config.trust_anchors), CERTIFY_TIMEOUT)?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(
        config,
        IdentityClient::new(channel),
        csr,
        key_der,
        key.public_key_raw().to_vec(),
        on_refresh,
        tx,
    ));
    Ok(rx)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    config: CertifyConfig,
    client: IdentityClient<Channel>,
    csr: Vec<u8>,
    key_der: Vec<u8>,
    public_key: Vec<u8>,
    on_refresh: OnRefresh,
    tx: watch::Sender<Option<Arc<Credentials>>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match certify(&config, client.clone(), &csr, &public_key).await {
            Ok((leaf_der, chain, valid_until)) => {
                on_refresh(Some(valid_until));
                let remaining = valid_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let renew_in = remaining.mul_f64(RENEW_AT);
                info!(identity = %config.local_name, valid_for = ?remaining, ?renew_in, "certified");
                let creds = Credentials {
                    identity: config.local_name.clone(),
                    leaf_der,
                    chain,
                    key_der: key_der.clone(),
                    valid_until,
                };
                tx.send_replace(Some(Arc::new(creds)));
                backoff = BACKOFF_MIN;
                tokio::time::sleep(renew_in).await;
            }
            Err(e) => {
                on_refresh(None);
                warn!(identity = %config.local_name, error = %e, retry_in = ?backoff, "certify failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn certify(
    config: &CertifyConfig,
    mut client: IdentityClient<Channel>,
    csr: &[u8],
    public_key: &[u8],
) -> Result<(Vec<u8>, Vec<Vec<u8>>, SystemTime), CertifyError> {
    // A few bytes from a local file, once per refresh: a blocking read is fine.
    let token = std::fs::read(&config.token_file).map_err(|source| CertifyError::Token {
        path: config.token_file.display().to_string(),
        source,
    })?;
    let call = async {
        let request = CertifyRequest {
            identity: config.local_name.to_string(),
            token: trim_ascii(token),
            certificate_signing_request: csr.to_vec(),
        };
        client
            .certify(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => CertifyError::Connect {
                    addr: config.svc.addr.clone(),
                    reason: crate::control::status_reason(&s),
                },
                _ => CertifyError::Refused(crate::control::status_reason(&s)),
            })
    };
    let resp = tokio::time::timeout(CERTIFY_TIMEOUT, call)
        .await
        .map_err(|_| CertifyError::Timeout(CERTIFY_TIMEOUT))??;
    let valid_until = config
        .trust_anchors
        .verify(
            &resp.leaf_certificate,
            &resp.intermediate_certificates,
            &config.local_name,
            SystemTime::now(),
        )
        .map_err(|e| CertifyError::Invalid(e.to_string()))?;
    if !crate::verify::certifies_key(&resp.leaf_certificate, public_key) {
        return Err(CertifyError::Invalid(
            "it certifies another key than this workload's".into(),
        ));
    }
    Ok((
        resp.leaf_certificate,
        resp.intermediate_certificates,
        valid_until,
    ))
}

/// Token files usually end with a newline that is not part of the token.
fn trim_ascii(mut token: Vec<u8>) -> Vec<u8> {
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let creds = Credentials {
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            leaf_der: vec![1; 10],
            chain: vec![],
            key_der: b"SECRET-KEY-BYTES".to_vec(),
            valid_until: SystemTime::UNIX_EPOCH,
        };
        let shown = format!("{creds:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("83, 69, 67"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
