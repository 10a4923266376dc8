//! The CA directory's files, and what operators do with them.
//!
//! | file | what |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | trust anchor (root); the key can be moved offline once the issuer exists |
//! | `issuer.crt`, `issuer.key` | issuer, signed by the anchor; signs proxies' leaf certificates |
//! | `token.key` | keys for workload tokens (`weft identity token`), signing key first |
//!
//! `ca.crt` may hold several roots (a bundle during trust-anchor rotation).
//! The directory is 0700 and keys 0600, written atomically (`secure_fs`);
//! a key others can read is refused.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use weft_identity::ca::{self, Ca, CertAndKey};
use weft_identity::token::{TokenKey, TokenKeys};

pub const ANCHOR_CERT: &str = "ca.crt";
pub const ANCHOR_KEY: &str = "ca.key";
pub const ISSUER_CERT: &str = "issuer.crt";
pub const ISSUER_KEY: &str = "issuer.key";
pub const TOKEN_KEY: &str = "token.key";

/// Keys are written 0600 and certificates 0644, atomically (secure_fs).
fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::secure_fs::write_atomic(path, contents.as_bytes(), 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::secure_fs::write_atomic(path, contents.as_bytes(), 0o644)
}

/// Makes a trust anchor, an issuer signed by it and a token key in `dir`.
pub fn create(
    dir: &Path,
    trust_domain: &str,
    anchor_validity: Duration,
    issuer_validity: Duration,
    force: bool,
) -> anyhow::Result<()> {
    crate::secure_fs::private_dir(dir)?;
    let files = [ANCHOR_CERT, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY];
    if !force && let Some(existing) = files.iter().find(|f| dir.join(f).exists()) {
        bail!(
            "{} already exists; use --force to replace the CA",
            dir.join(existing).display()
        );
    }
    let anchor = ca::generate_trust_anchor(&format!("root.{trust_domain}"), anchor_validity)?;
    let issuer = ca::generate_issuer(
        &anchor,
        &format!("identity.{trust_domain}"),
        issuer_validity,
    )?;
    let token_key = TokenKey::generate()?;
    write_public(&dir.join(ANCHOR_CERT), &anchor.cert_pem)?;
    write_secret(&dir.join(ANCHOR_KEY), &anchor.key_pem)?;
    write_public(&dir.join(ISSUER_CERT), &issuer.cert_pem)?;
    write_secret(&dir.join(ISSUER_KEY), &issuer.key_pem)?;
    write_secret(&dir.join(TOKEN_KEY), &TokenKeys::new(token_key).to_text())?;
    Ok(())
}

/// Replaces the issuer with a new one signed by the same trust anchor.
pub fn rotate_issuer(
    dir: &Path,
    trust_domain: &str,
    issuer_validity: Duration,
) -> anyhow::Result<()> {
    let anchor = CertAndKey {
        cert_pem: read(dir, ANCHOR_CERT)?,
        key_pem: read_key(dir, ANCHOR_KEY)?,
    };
    let issuer = ca::generate_issuer(
        &anchor,
        &format!("identity.{trust_domain}"),
        issuer_validity,
    )?;
    // Key first: a service reading between the two renames fails its check and
    // keeps the old issuer, instead of pairing a new certificate with an old key.
    write_secret(&dir.join(ISSUER_KEY), &issuer.key_pem)?;
    write_public(&dir.join(ISSUER_CERT), &issuer.cert_pem)?;
    Ok(())
}

/// Puts a new token-signing key in front (dropping the others when
/// `retire`); returns the new bundle.
pub fn rotate_token_key(dir: &Path, retire: bool) -> anyhow::Result<TokenKeys> {
    let keys = load_token_keys(dir)?.rotate(retire)?;
    write_secret(&dir.join(TOKEN_KEY), &keys.to_text())?;
    Ok(keys)
}

pub fn read(dir: &Path, file: &str) -> anyhow::Result<String> {
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
pub fn read_key(dir: &Path, file: &str) -> anyhow::Result<String> {
    if !dir.join(file).exists() {
        // Says how to make one.
        read(dir, file)?;
    }
    crate::secure_fs::read_key(&dir.join(file))
}

pub fn load_token_keys(dir: &Path) -> anyhow::Result<TokenKeys> {
    TokenKeys::parse(&read_key(dir, TOKEN_KEY)?)
        .with_context(|| format!("{}", dir.join(TOKEN_KEY).display()))
}

pub fn load_ca(dir: &Path, leaf_lifetime: Duration) -> anyhow::Result<Ca> {
    let issuer = CertAndKey {
        cert_pem: read(dir, ISSUER_CERT)?,
        key_pem: read_key(dir, ISSUER_KEY)?,
    };
    let anchors = read(dir, ANCHOR_CERT)?;
    Ca::new(&issuer, &anchors, leaf_lifetime)
        .with_context(|| format!("loading the issuer from {}", dir.display()))
}
