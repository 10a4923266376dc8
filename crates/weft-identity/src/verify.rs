//! Checking a certificate chain against the trust anchors and an identity:
//! what a proxy does with the certificate it was given, and (for mesh TLS)
//! with its peer's.
//!
//! Path building and verification are rustls-webpki's (the code rustls
//! itself trusts): signatures, validity at the given time, basic
//! constraints and path length, key usage and extended key usage, and
//! refusal of unknown critical extensions. On top of it, a mesh certificate
//! must name a mesh identity (a DNS SAN that is one): a certificate the CA
//! signed for anything else proves nobody.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::Identity;
use crate::ca::{CaError, pem_certificates};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("certificate is not valid DER: {0}")]
    Malformed(String),
    #[error("the chain does not lead to any of the trust anchors")]
    Untrusted,
    #[error("a certificate in the chain is not valid now")]
    OutOfDate,
    #[error("the certificate is for {found:?}, not {expected}")]
    WrongIdentity {
        found: Vec<String>,
        expected: String,
    },
    #[error("the certificate is not for this proxy's key")]
    WrongKey,
    #[error("the certificate names no mesh identity (no DNS SAN that is one)")]
    NoIdentity,
    #[error("the certificate is not valid for {0}: {1}")]
    Rejected(&'static str, String),
}

/// What a certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server proving its identity (and a proxy's own certificate).
    Server,
    /// A client proving its identity to a server.
    Client,
}

/// Parsed trust anchors (DER kept; parsing is cheap and borrows from it).
#[derive(Clone, Debug)]
pub struct TrustAnchors(Vec<Vec<u8>>);

impl TrustAnchors {
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let ders = pem_certificates(pem, "trust anchors")?;
        for der in &ders {
            X509Certificate::from_der(der).map_err(|e| CaError::BadPem {
                what: "trust anchors",
                reason: e.to_string(),
            })?;
        }
        Ok(TrustAnchors(ders))
    }

    /// Verifies `leaf` (with `chain`, issuer first) for `identity` at `now`;
    /// returns the leaf's expiry.
    pub fn verify<C: AsRef<[u8]>>(
        &self,
        leaf: &[u8],
        chain: &[C],
        identity: &Identity,
        now: SystemTime,
    ) -> Result<SystemTime, VerifyError> {
        let (names, not_after) = self.verify_chain(leaf, chain, now, Usage::Server)?;
        if !names.iter().any(|n| n == identity.as_str()) {
            return Err(VerifyError::WrongIdentity {
                found: names,
                expected: identity.to_string(),
            });
        }
        Ok(not_after)
    }

    /// Verifies that `leaf` chains to a trust anchor at `now` for `usage`,
    /// whoever it names; returns its DNS names (at least one a mesh identity)
    /// and expiry (a server learning its client's identity).
    pub fn verify_chain<C: AsRef<[u8]>>(
        &self,
        leaf: &[u8],
        chain: &[C],
        now: SystemTime,
        usage: Usage,
    ) -> Result<(Vec<String>, SystemTime), VerifyError> {
        use rustls_pki_types::{CertificateDer, UnixTime};
        let parsed = X509Certificate::from_der(leaf)
            .map(|(_, c)| c)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let names = names_of(&parsed);
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);

        let anchors = self
            .0
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| VerifyError::Malformed(format!("trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leaf_der = CertificateDer::from(leaf);
        let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let intermediates: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let time = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let (key_usage, what) = match usage {
            Usage::Server => (webpki::KeyUsage::server_auth(), "server authentication"),
            Usage::Client => (webpki::KeyUsage::client_auth(), "client authentication"),
        };
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                time,
                key_usage,
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    VerifyError::Untrusted
                }
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    VerifyError::OutOfDate
                }
                other => VerifyError::Rejected(what, format!("{other:?}")),
            })?;
        if !names.iter().any(|n| n.parse::<Identity>().is_ok()) {
            return Err(VerifyError::NoIdentity);
        }
        Ok((names, not_after))
    }
}

/// Whether the certificate carries `public_key` (the raw key bits).
pub fn certifies_key(cert_der: &[u8], public_key: &[u8]) -> bool {
    X509Certificate::from_der(cert_der)
        .is_ok_and(|(_, c)| &*c.public_key().subject_public_key.data == public_key)
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The identity a certificate names (its first DNS SAN that is an identity
/// name). Call it only on a certificate that was verified.
pub fn identity_of(cert_der: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    names_of(&cert).iter().find_map(|n| n.parse().ok())
}
