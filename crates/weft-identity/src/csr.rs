//! Certificate signing requests: made by a proxy for its own identity, checked
//! by the CA before it signs anything.
//!
//! The CA signs only what it has verified: the request is signed by the key it
//! carries (so the requester holds that key), the key is ECDSA P-256, and every
//! name it asks for is exactly the identity its credential proves.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the CSR is not valid DER: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify with the key it carries")]
    BadSignature,
    #[error("the CSR's key is not ECDSA P-256")]
    WrongKeyType,
    #[error("the CSR asks for {asked:?}, but the credential proves {identity}")]
    NameMismatch { asked: String, identity: String },
    #[error("the CSR names no identity (no DNS SAN and no common name)")]
    NoName,
}

/// A new P-256 key and a CSR for `identity` (DNS SAN and common name). The key
/// stays with the caller; only the CSR is sent.
pub fn new_key_and_csr(identity: &Identity) -> Result<(KeyPair, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![identity.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// Checks a CSR against the identity the requester proved; returns the DER
/// SubjectPublicKeyInfo to certify.
pub fn check_csr(der: &[u8], identity: &Identity) -> Result<Vec<u8>, CsrError> {
    let (_, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let info = &csr.certification_request_info;
    let alg = &info.subject_pki.algorithm;
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::WrongKeyType);
    }
    let mismatch = |asked: &str| CsrError::NameMismatch {
        asked: asked.to_string(),
        identity: identity.to_string(),
    };
    let mut named = false;
    for cn in info.subject.iter_common_name() {
        let cn = cn
            .as_str()
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if cn != identity.as_str() {
            return Err(mismatch(cn));
        }
        named = true;
    }
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(dns) if *dns == identity.as_str() => named = true,
                GeneralName::URI(uri) if *uri == identity.spiffe_uri() => {}
                other => return Err(mismatch(&other.to_string())),
            }
        }
    }
    if !named {
        return Err(CsrError::NoName);
    }
    Ok(info.subject_pki.raw.to_vec())
}
