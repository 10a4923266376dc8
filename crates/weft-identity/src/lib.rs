//! Weft's mesh identity, shared by the control plane (the CA) and the proxy
//! (which asks for certificates).
//!
//! - [`name`]: identity names (Linkerd's DNS-like form and SPIFFE URIs).
//! - [`ca`]: trust anchor and issuer generation, issuer checks, leaf signing.
//! - [`csr`]: making a key and CSR (proxy side), checking a CSR (CA side).
//! - [`token`]: credentials the control plane mints for workloads.
//! - [`verify`]: checking a chain against trust anchors and an identity.
//! - [`tls`]: rustls verifiers and configurations built on [`verify`].
//! - [`control`]: gRPC channels to the control plane, TLS requiring the
//!   service's identity (used by the proxy, the control plane and the CLI).
//! - [`certify`]: a workload's key and the Certify loop that keeps its
//!   certificate fresh.

pub mod ca;
pub mod certify;
pub mod control;
pub mod csr;
pub mod name;
pub mod tls;
pub mod token;
pub mod verify;

pub use name::Identity;

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    use super::Identity;
    use super::ca::*;
    use super::csr::*;
    use super::token::*;

    fn id(sa: &str) -> Identity {
        Identity::service_account(sa, "demo", "weft", "cluster.local").unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_csr_for_the_proven_identity_is_signed_into_a_chained_leaf() {
        let anchor = generate_trust_anchor("root.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "issuer.weft", 30 * DAY).unwrap();
        let ca = Ca::new(&issuer, &anchor.cert_pem, DEFAULT_LEAF_LIFETIME).unwrap();
        let web = id("web");
        let (_key, csr) = new_key_and_csr(&web).unwrap();
        let now = SystemTime::now();
        let leaf = ca.sign(&csr, &web, now).unwrap();

        let (_, cert) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "dns:web.demo.serviceaccount.identity.weft.cluster.local",
                "uri:spiffe://cluster.local/ns/demo/sa/web"
            ]
        );
        let issuer_der = &pem_certificates(&issuer.cert_pem, "issuer").unwrap()[0];
        let (_, issuer_cert) = X509Certificate::from_der(issuer_der).unwrap();
        cert.verify_signature(Some(issuer_cert.public_key()))
            .expect("leaf is signed by the issuer");
        assert_eq!(leaf.chain, vec![issuer_der.clone()]);
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(
            lifetime as u64,
            (DEFAULT_LEAF_LIFETIME + CLOCK_SKEW_ALLOWANCE).as_secs()
        );
        assert!(!cert.is_ca());
    }

    #[test]
    fn the_ca_refuses_mismatched_or_bad_requests() {
        let anchor = generate_trust_anchor("root.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "issuer.weft", 30 * DAY).unwrap();
        let ca = Ca::new(&issuer, &anchor.cert_pem, DEFAULT_LEAF_LIFETIME).unwrap();
        let (_, csr_for_db) = new_key_and_csr(&id("db")).unwrap();
        let err = ca
            .sign(&csr_for_db, &id("web"), SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(err, CaError::Csr(CsrError::NameMismatch { .. })),
            "{err}"
        );

        let mut tampered = new_key_and_csr(&id("web")).unwrap().1;
        let last = tampered.len() - 1;
        tampered[last] ^= 0x55;
        let err = ca
            .sign(&tampered, &id("web"), SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(
                err,
                CaError::Csr(CsrError::BadSignature | CsrError::Malformed(_))
            ),
            "{err}"
        );
        assert!(matches!(
            ca.sign(b"garbage", &id("web"), SystemTime::now()),
            Err(CaError::Csr(CsrError::Malformed(_)))
        ));
    }

    #[test]
    fn an_issuer_must_chain_to_a_trust_anchor_in_the_bundle() {
        let old = generate_trust_anchor("old.weft", 365 * DAY).unwrap();
        let new = generate_trust_anchor("new.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&new, "issuer.weft", 30 * DAY).unwrap();
        assert!(matches!(
            Ca::new(&issuer, &old.cert_pem, DAY),
            Err(CaError::NotChained(1))
        ));
        let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
        Ca::new(&issuer, &bundle, DAY).expect("the new root in a rotation bundle");
        // A leaf key is not a CA.
        let not_ca = CertAndKey {
            cert_pem: anchor_leaf(&new),
            key_pem: issuer.key_pem.clone(),
        };
        assert!(matches!(
            Ca::new(&not_ca, &new.cert_pem, DAY),
            Err(CaError::NotCa)
        ));
        assert!(matches!(
            Ca::new(&issuer, "not pem", DAY),
            Err(CaError::BadPem { .. })
        ));
    }

    #[test]
    fn an_issuer_is_proven_by_signing_a_leaf_that_peers_would_accept() {
        let anchor = generate_trust_anchor("root.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "issuer.weft", 30 * DAY).unwrap();
        // The certificate of one issuer with the key of another.
        let other = generate_issuer(&anchor, "other.weft", 30 * DAY).unwrap();
        let mismatched = CertAndKey {
            cert_pem: issuer.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let err = Ca::new(&mismatched, &anchor.cert_pem, DAY).unwrap_err();
        assert!(matches!(err, CaError::Unusable(_)), "{err}");
        assert!(err.to_string().contains("would not verify"), "{err}");
        // A CA certificate (signed by the anchor) that may not sign certificates.
        let anchor_key = rcgen::KeyPair::from_pem(&anchor.key_pem).unwrap();
        let signer = rcgen::Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let no_cert_sign = CertAndKey {
            cert_pem: p.signed_by(&key, &signer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let err = Ca::new(&no_cert_sign, &anchor.cert_pem, DAY).unwrap_err();
        assert!(matches!(err, CaError::MayNotSign), "{err}");
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }

    fn anchor_leaf(anchor: &CertAndKey) -> String {
        let issuer = generate_issuer(anchor, "i", DAY).unwrap();
        let ca = Ca::new(&issuer, &anchor.cert_pem, DAY).unwrap();
        let (_, csr) = new_key_and_csr(&id("web")).unwrap();
        let leaf = ca.sign(&csr, &id("web"), SystemTime::now()).unwrap();
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &leaf.cert_der);
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    }

    /// A certificate the issuer signs outside the CA's checks.
    fn rogue(
        issuer: &super::ca::CertAndKey,
        dns: &str,
        ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
        is_ca: bool,
    ) -> (Vec<u8>, super::ca::CertAndKey) {
        let signer_key = rcgen::KeyPair::from_pem(&issuer.key_pem).unwrap();
        let signer = rcgen::Issuer::from_ca_cert_pem(&issuer.cert_pem, signer_key).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
        p.extended_key_usages = ekus;
        if is_ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.signed_by(&key, &signer).unwrap();
        let pair = super::ca::CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        (cert.der().to_vec(), pair)
    }

    #[test]
    fn certificates_the_issuer_signed_for_the_wrong_purpose_prove_nothing() {
        use super::verify::{TrustAnchors, Usage, VerifyError};
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let anchor = generate_trust_anchor("root.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "issuer.weft", 30 * DAY).unwrap();
        let issuer_der = super::ca::pem_certificates(&issuer.cert_pem, "issuer").unwrap();
        let anchors = TrustAnchors::from_pem(&anchor.cert_pem).unwrap();
        let now = SystemTime::now();
        let web = "web.demo.serviceaccount.identity.weft.cluster.local";

        // Signed by the mesh CA, but naming no mesh identity.
        let (plain, _) = rogue(&issuer, "example.com", vec![ServerAuth, ClientAuth], false);
        assert_eq!(
            anchors.verify_chain(&plain, &issuer_der, now, Usage::Client),
            Err(VerifyError::NoIdentity)
        );
        // A server-only certificate presented by a client.
        let (server_only, _) = rogue(&issuer, web, vec![ServerAuth], false);
        assert!(matches!(
            anchors.verify_chain(&server_only, &issuer_der, now, Usage::Client),
            Err(VerifyError::Rejected(..))
        ));
        assert!(
            anchors
                .verify_chain(&server_only, &issuer_der, now, Usage::Server)
                .is_ok()
        );
        // A leaf used as a CA: what it signs is not trusted.
        let (_, leaf) = rogue(&issuer, web, vec![ServerAuth, ClientAuth], false);
        let (forged, _) = rogue(&leaf, web, vec![ServerAuth, ClientAuth], false);
        let chain = [
            super::ca::pem_certificates(&leaf.cert_pem, "leaf")
                .unwrap()
                .remove(0),
            issuer_der[0].clone(),
        ];
        assert!(
            anchors
                .verify_chain(&forged, &chain, now, Usage::Client)
                .is_err()
        );
        // The issuer may not make CAs (path length 0): a sub-CA's leaf is refused.
        let (_, sub_ca) = rogue(&issuer, "sub.weft", vec![], true);
        let (deep, _) = rogue(&sub_ca, web, vec![ServerAuth, ClientAuth], false);
        let chain = [
            super::ca::pem_certificates(&sub_ca.cert_pem, "sub")
                .unwrap()
                .remove(0),
            issuer_der[0].clone(),
        ];
        assert!(
            anchors
                .verify_chain(&deep, &chain, now, Usage::Client)
                .is_err()
        );
    }

    #[test]
    fn chains_verify_against_anchors_identity_and_time() {
        use super::verify::{TrustAnchors, VerifyError};
        let anchor = generate_trust_anchor("root.weft", 365 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "issuer.weft", 30 * DAY).unwrap();
        let ca = Ca::new(&issuer, &anchor.cert_pem, DAY).unwrap();
        let (_, csr) = new_key_and_csr(&id("web")).unwrap();
        let now = SystemTime::now();
        let leaf = ca.sign(&csr, &id("web"), now).unwrap();
        let anchors = TrustAnchors::from_pem(&anchor.cert_pem).unwrap();
        let until = anchors
            .verify(&leaf.cert_der, &leaf.chain, &id("web"), now)
            .unwrap();
        assert!(
            until > now + DAY - Duration::from_secs(5)
                && until <= now + DAY + Duration::from_secs(1)
        );
        assert!(matches!(
            anchors.verify(&leaf.cert_der, &leaf.chain, &id("db"), now),
            Err(VerifyError::WrongIdentity { .. })
        ));
        assert_eq!(
            anchors.verify::<Vec<u8>>(&leaf.cert_der, &[], &id("web"), now),
            Err(VerifyError::Untrusted)
        );
        assert_eq!(
            anchors.verify(&leaf.cert_der, &leaf.chain, &id("web"), now + 2 * DAY),
            Err(VerifyError::OutOfDate)
        );
        let other =
            TrustAnchors::from_pem(&generate_trust_anchor("other", DAY).unwrap().cert_pem).unwrap();
        assert_eq!(
            other.verify(&leaf.cert_der, &leaf.chain, &id("web"), now),
            Err(VerifyError::Untrusted)
        );
    }

    #[test]
    fn tokens_prove_one_identity_until_they_expire() {
        let keys = TokenKeys::new(TokenKey::generate().unwrap());
        let now = SystemTime::now();
        let token = keys.mint(&id("web"), Duration::from_secs(60), now).unwrap();
        assert_eq!(keys.verify(&token, now).unwrap(), id("web"));
        assert_eq!(
            keys.verify(&token, now + Duration::from_secs(61)),
            Err(TokenError::Expired(1))
        );
        let other = TokenKeys::new(TokenKey::generate().unwrap());
        assert!(matches!(
            other.verify(&token, now),
            Err(TokenError::UnknownKey(_))
        ));
        let forged = token.replacen("weft2.", "weft2.x", 1);
        assert!(keys.verify(&forged, now).is_err());
        assert!(matches!(
            keys.verify("nonsense", now),
            Err(TokenError::Malformed(_))
        ));
        let reloaded = TokenKeys::parse(&keys.to_text()).unwrap();
        assert_eq!(reloaded.verify(&token, now).unwrap(), id("web"));
        assert!(matches!(
            TokenKey::from_base64("c2hvcnQ"),
            Err(TokenError::BadKey(_))
        ));
        assert_eq!(
            TokenKeys::parse("\n# none\n").unwrap_err(),
            TokenError::NoKey
        );
    }

    #[test]
    fn token_lifetimes_are_capped_and_issue_times_checked() {
        let keys = TokenKeys::new(TokenKey::generate().unwrap());
        let now = SystemTime::now();
        let forever = Duration::from_secs(86_400 * 1_000_000_000_000);
        assert!(matches!(
            keys.mint(&id("web"), forever, now),
            Err(TokenError::TooLong(_))
        ));
        assert!(keys.mint(&id("web"), MAX_TTL, now).is_ok());
        let future = keys
            .mint(
                &id("web"),
                Duration::from_secs(60),
                now + Duration::from_secs(3600),
            )
            .unwrap();
        assert!(matches!(
            keys.verify(&future, now),
            Err(TokenError::NotYetValid(_))
        ));
        // Two tokens for the same identity differ (jti).
        let a = keys.mint(&id("web"), Duration::from_secs(60), now).unwrap();
        let b = keys.mint(&id("web"), Duration::from_secs(60), now).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_rotated_key_signs_the_old_one_verifies_until_retired() {
        let now = SystemTime::now();
        let old = TokenKeys::new(TokenKey::generate().unwrap());
        let old_token = old.mint(&id("web"), Duration::from_secs(60), now).unwrap();
        let rotated = TokenKeys::parse(&old.to_text())
            .unwrap()
            .rotate(false)
            .unwrap();
        let new_token = rotated
            .mint(&id("web"), Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(rotated.keys().len(), 2);
        assert!(rotated.verify(&old_token, now).is_ok());
        assert!(rotated.verify(&new_token, now).is_ok());
        let retired = rotated.rotate(true).unwrap();
        assert_eq!(retired.keys().len(), 1);
        assert!(matches!(
            retired.verify(&old_token, now),
            Err(TokenError::UnknownKey(_))
        ));
    }
}
