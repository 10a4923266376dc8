//! rustls glue shared by the proxy and the control plane.
//!
//! A server in the mesh, a peer proxy or a control-plane service alike, is
//! trusted when its certificate chains to the trust anchors and names
//! exactly the identity the client asked for in the SNI. Names from the
//! public web PKI mean nothing here, so the check is this crate's
//! [`TrustAnchors::verify`], not webpki's hostname rules. TLS 1.3 only,
//! rustls with ring.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig};

use crate::Identity;
use crate::verify::{TrustAnchors, VerifyError};

/// Implements the handshake-signature half of a rustls verifier: checked
/// with the provider's algorithms (the verifier's `algorithms` field)
/// against the certificate already verified. Shared by every verifier in
/// the mesh, client or server side.
#[macro_export]
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// rustls' time as a `SystemTime`.
pub fn unix(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

/// A verification failure as the TLS alert rustls should send.
pub fn certificate_error(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(match e {
        VerifyError::Untrusted => CertificateError::UnknownIssuer,
        VerifyError::OutOfDate => CertificateError::Expired,
        VerifyError::WrongIdentity { .. } => CertificateError::NotValidForName,
        VerifyError::Malformed(_) | VerifyError::WrongKey => CertificateError::BadEncoding,
        VerifyError::NoIdentity => CertificateError::NotValidForName,
        VerifyError::Rejected(_, reason) => CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(std::io::Error::other(reason)),
        )),
    })
}

/// Accepts a server certificate only for the identity named in the SNI.
#[derive(Debug)]
pub struct IdentityVerifier {
    anchors: TrustAnchors,
    algorithms: WebPkiSupportedAlgorithms,
}

impl IdentityVerifier {
    pub fn new(anchors: TrustAnchors, provider: &CryptoProvider) -> Self {
        IdentityVerifier {
            anchors,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        let expected: Identity = name
            .as_ref()
            .parse()
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        self.anchors
            .verify(end_entity, intermediates, &expected, unix(now))
            .map(|_| ServerCertVerified::assertion())
            .map_err(certificate_error)
    }

    handshake_signatures!();
}

/// A client configuration that trusts servers proving their mesh identity
/// and presents no certificate: how the proxy and the CLI reach the
/// control plane (the proxy may have no certificate yet when it asks for
/// one).
pub fn server_auth_config(anchors: TrustAnchors) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(IdentityVerifier::new(anchors, &provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // gRPC runs over HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate chain (leaf first) and its PKCS#8 private key, as rustls
/// wants them.
pub fn chain_and_key(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    key_pkcs8: &[u8],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = std::iter::once(leaf.to_vec())
        .chain(intermediates.iter().cloned())
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    (chain, key)
}

/// The same as a rustls `CertifiedKey`, for servers that pick their
/// certificate per handshake.
pub fn certified_key(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    key_pkcs8: &[u8],
) -> Result<CertifiedKey, rustls::Error> {
    let (chain, key) = chain_and_key(leaf, intermediates, key_pkcs8);
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, key))
}
