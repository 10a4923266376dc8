//! Checking a certificate chain against the trust anchors and an identity:
//! what a proxy does with the certificate it was given, and (for mesh TLS)
//! with its peer's.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

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
        let (names, not_after) = self.verify_chain(leaf, chain, now)?;
        if !names.iter().any(|n| n == identity.as_str()) {
            return Err(VerifyError::WrongIdentity {
                found: names,
                expected: identity.to_string(),
            });
        }
        Ok(not_after)
    }

    /// Verifies that `leaf` chains to a trust anchor at `now`, whoever it names;
    /// returns its DNS names and expiry (a server learning its client's identity).
    pub fn verify_chain<C: AsRef<[u8]>>(
        &self,
        leaf: &[u8],
        chain: &[C],
        now: SystemTime,
    ) -> Result<(Vec<String>, SystemTime), VerifyError> {
        let parse = |der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| VerifyError::Malformed(e.to_string()))
        };
        let leaf = parse(leaf)?;
        let at = ASN1Time::from_timestamp(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        )
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let names = names_of(&leaf);
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(leaf.validity().not_after.timestamp().max(0) as u64);
        // Walk up: each certificate must be signed by the next one, and the last
        // one by a trust anchor. Every step must be valid at `now`.
        let mut current = leaf;
        let mut rest = chain.iter();
        loop {
            if !current.validity().is_valid_at(at) {
                return Err(VerifyError::OutOfDate);
            }
            let anchored = self.0.iter().any(|der| {
                X509Certificate::from_der(der).is_ok_and(|(_, anchor)| {
                    anchor.validity().is_valid_at(at)
                        && current.verify_signature(Some(anchor.public_key())).is_ok()
                })
            });
            if anchored {
                break;
            }
            let Some(next) = rest.next() else {
                return Err(VerifyError::Untrusted);
            };
            let next = parse(next.as_ref())?;
            if !next.is_ca() || current.verify_signature(Some(next.public_key())).is_err() {
                return Err(VerifyError::Untrusted);
            }
            current = next;
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
