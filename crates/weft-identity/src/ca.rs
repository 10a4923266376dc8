//! The mesh CA: a trust anchor (root) signs an issuer; the issuer signs
//! short-lived leaf certificates for proxies.
//!
//! Certificates are ECDSA P-256. Leaves carry the identity as DNS SAN and its
//! SPIFFE URI, are valid from [`CLOCK_SKEW_ALLOWANCE`] before issuance (so a
//! peer whose clock is slightly behind still accepts them), and never outlive
//! the issuer.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use crate::Identity;
use crate::csr::{CsrError, check_csr};

/// How far back a leaf's validity starts (Linkerd's default allowance).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(20);
/// Default lifetime of a proxy's certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not usable: {reason}")]
    BadPem { what: &'static str, reason: String },
    #[error("the issuer certificate is not signed by any of the {0} trust anchor(s)")]
    NotChained(usize),
    #[error("the issuer certificate is not a CA certificate")]
    NotCa,
    #[error("the issuer certificate's key usage does not allow signing certificates (keyCertSign)")]
    MayNotSign,
    #[error("the issuer certificate is not valid now (valid {not_before} to {not_after})")]
    OutOfDate {
        not_before: String,
        not_after: String,
    },
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(
        "a certificate this issuer signs would not verify against the trust anchors \
         (is the key the issuer certificate's, may it sign certificates?): {0}"
    )]
    Unusable(crate::verify::VerifyError),
}

/// The identity of the leaf [`Ca::new`] signs to prove an issuer works.
const PROBE_IDENTITY: &str = "issuer-probe.weft.serviceaccount.identity.weft.cluster.local";

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn ca_params(
    common_name: &str,
    validity: Duration,
    now: SystemTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = at(now - CLOCK_SKEW_ALLOWANCE);
    p.not_after = at(now + validity);
    p
}

/// A self-signed trust anchor (the mesh's root of trust).
pub fn generate_trust_anchor(common_name: &str, validity: Duration) -> Result<CertAndKey, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(common_name, validity, SystemTime::now(), None).self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An issuer certificate signed by `anchor`; it may sign leaves, not other CAs.
pub fn generate_issuer(
    anchor: &CertAndKey,
    common_name: &str,
    validity: Duration,
) -> Result<CertAndKey, CaError> {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem).map_err(|e| CaError::BadPem {
        what: "trust anchor key",
        reason: e.to_string(),
    })?;
    let anchor =
        Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key).map_err(|e| CaError::BadPem {
            what: "trust anchor certificate",
            reason: e.to_string(),
        })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert =
        ca_params(common_name, validity, SystemTime::now(), Some(0)).signed_by(&key, &anchor)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Every certificate in a PEM bundle, as DER.
pub fn pem_certificates(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CaError::BadPem {
            what,
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            ders.push(block.contents);
        }
    }
    if ders.is_empty() {
        return Err(CaError::BadPem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(ders)
}

fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CaError::BadPem {
            what,
            reason: e.to_string(),
        })
}

/// A signed leaf and the chain a peer needs to verify it.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_der: Vec<u8>,
    /// Intermediates, leaf-side first (the issuer).
    pub chain: Vec<Vec<u8>>,
    pub valid_until: SystemTime,
}

/// The issuing side of the CA, loaded and checked.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: Vec<u8>,
    issuer_not_after: SystemTime,
    leaf_lifetime: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("leaf_lifetime", &self.leaf_lifetime)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads an issuer and checks that it is a CA, valid now, and signed by one
    /// of `trust_anchors_pem` (a bundle: old and new roots during rotation).
    /// Then it proves the whole path as peers will check it: it signs a leaf
    /// with the key and verifies it with webpki (key usage, basic constraints,
    /// path length, critical extensions, the key matching the certificate).
    pub fn new(
        issuer: &CertAndKey,
        trust_anchors_pem: &str,
        leaf_lifetime: Duration,
    ) -> Result<Ca, CaError> {
        let issuer_der = pem_certificates(&issuer.cert_pem, "issuer certificate")?.remove(0);
        let anchors = pem_certificates(trust_anchors_pem, "trust anchors")?;
        let cert = parse(&issuer_der, "issuer certificate")?;
        if !cert.is_ca() {
            return Err(CaError::NotCa);
        }
        // webpki does not look at a CA's key usage; peers such as OpenSSL do.
        if let Ok(Some(usage)) = cert.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(CaError::MayNotSign);
        }
        let validity = cert.validity();
        if !validity.is_valid() {
            return Err(CaError::OutOfDate {
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
        let chained = anchors.iter().any(|der| {
            parse(der, "trust anchor")
                .is_ok_and(|anchor| cert.verify_signature(Some(anchor.public_key())).is_ok())
        });
        if !chained {
            return Err(CaError::NotChained(anchors.len()));
        }
        let issuer_not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(validity.not_after.timestamp().max(0) as u64);
        let key = KeyPair::from_pem(&issuer.key_pem).map_err(|e| CaError::BadPem {
            what: "issuer key",
            reason: e.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&issuer.cert_pem, key).map_err(|e| CaError::BadPem {
                what: "issuer certificate",
                reason: e.to_string(),
            })?;
        let ca = Ca {
            issuer,
            issuer_der,
            issuer_not_after,
            leaf_lifetime,
        };
        ca.prove(trust_anchors_pem)?;
        Ok(ca)
    }

    fn prove(&self, trust_anchors_pem: &str) -> Result<(), CaError> {
        let probe: Identity = PROBE_IDENTITY
            .parse()
            .map_err(|e: crate::name::NameError| CaError::BadPem {
                what: "probe identity",
                reason: e.to_string(),
            })?;
        let (_, csr) = crate::csr::new_key_and_csr(&probe)?;
        let now = SystemTime::now();
        let leaf = self.sign(&csr, &probe, now)?;
        crate::verify::TrustAnchors::from_pem(trust_anchors_pem)?
            .verify(&leaf.cert_der, &leaf.chain, &probe, now)
            .map_err(CaError::Unusable)?;
        Ok(())
    }

    /// Signs a leaf for `identity` from a CSR, after checking the CSR.
    pub fn sign(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Leaf, CaError> {
        let spki = check_csr(csr_der, identity)?;
        let spki = SubjectPublicKeyInfo::from_der(&spki)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::DnsName(identity.as_str().try_into()?),
            SanType::URI(identity.spiffe_uri().as_str().try_into()?),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let valid_until = (now + self.leaf_lifetime).min(self.issuer_not_after);
        p.not_before = at(now - CLOCK_SKEW_ALLOWANCE);
        p.not_after = at(valid_until);
        let cert = p.signed_by(&spki, &self.issuer)?;
        Ok(Leaf {
            cert_der: cert.der().to_vec(),
            chain: vec![self.issuer_der.clone()],
            valid_until,
        })
    }
}
