//! Mesh TLS, server side: terminating mTLS for connections whose ClientHello
//! names this proxy's identity (SNI), with the client's certificate verified
//! against the trust anchors. TLS 1.3 only, rustls with the ring provider.
//!
//! The server configuration is rebuilt only when the credentials change (a
//! renewal), not per connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tracing::warn;
use weft_identity::Identity;
use weft_identity::verify::{TrustAnchors, VerifyError};

use crate::identity::{Credentials, CredentialsWatch};

/// What the inbound side needs to terminate mesh TLS.
pub struct MeshTls {
    creds: CredentialsWatch,
    provider: Arc<CryptoProvider>,
    verifier: Arc<MeshClientVerifier>,
    cached: Mutex<Option<(Arc<Credentials>, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").finish_non_exhaustive()
    }
}

impl MeshTls {
    pub fn new(creds: CredentialsWatch, anchors: TrustAnchors) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(MeshClientVerifier {
            anchors,
            algorithms: provider.signature_verification_algorithms,
        });
        MeshTls {
            creds,
            provider,
            verifier,
            cached: Mutex::new(None),
        }
    }

    /// This proxy's identity, once it holds a certificate.
    pub fn local_identity(&self) -> Option<Identity> {
        self.creds.borrow().as_ref().map(|c| c.identity.clone())
    }

    /// The server configuration for the current certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        let creds = self.creds.borrow().clone()?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, config)) = cached.as_ref()
            && Arc::ptr_eq(c, &creds)
        {
            return Some(config.clone());
        }
        let chain: Vec<CertificateDer<'static>> = std::iter::once(creds.leaf_der.clone())
            .chain(creds.chain.iter().cloned())
            .map(CertificateDer::from)
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key_der.clone()));
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| b.with_client_cert_verifier(self.verifier.clone()))
            .and_then(|b| b.with_single_cert(chain, key));
        match config {
            Ok(config) => {
                let config = Arc::new(config);
                *cached = Some((creds, config.clone()));
                Some(config)
            }
            Err(e) => {
                warn!(error = %e, "cannot build the mesh TLS server configuration");
                None
            }
        }
    }
}

/// Accepts client certificates that chain to the trust anchors.
#[derive(Debug)]
struct MeshClientVerifier {
    anchors: TrustAnchors,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        match self.anchors.verify_chain(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => Err(rustls::Error::InvalidCertificate(match e {
                VerifyError::Untrusted => CertificateError::UnknownIssuer,
                VerifyError::OutOfDate => CertificateError::Expired,
                _ => CertificateError::BadEncoding,
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client's identity from its verified certificate.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<Identity> {
    weft_identity::verify::identity_of(conn.peer_certificates()?.first()?)
}
