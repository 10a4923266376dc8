//! Workload tokens: the credential a proxy presents outside Kubernetes.
//!
//! The control plane mints a token for exactly one identity, with an expiry,
//! and signs it with HMAC-SHA256 under a key only it holds (only the control
//! plane that minted a token ever verifies it, so a shared-secret MAC is
//! enough). Format: `weft1.<base64url(claims JSON)>.<base64url(MAC)>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::Identity;

const PREFIX: &str = "weft1";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature is not valid (not minted by this control plane)")]
    BadSignature,
    #[error("the token expired {0}s ago")]
    Expired(u64),
    #[error("the token key must be {KEY_LEN} bytes of base64, got {0}")]
    BadKey(String),
    #[error("no randomness available to make a key")]
    NoRandom,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The identity the token proves.
    id: String,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// The control plane's token-signing key.
pub struct TokenKey {
    raw: [u8; KEY_LEN],
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenKey {
    pub fn generate() -> Result<Self, TokenError> {
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| TokenError::NoRandom)?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: [u8; KEY_LEN]) -> Self {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
            raw,
        }
    }

    pub fn from_base64(text: &str) -> Result<Self, TokenError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| TokenError::BadKey(e.to_string()))?;
        let raw: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| TokenError::BadKey(format!("{} bytes", b.len())))?;
        Ok(Self::from_raw(raw))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.raw)
    }

    /// A token proving `identity` until `now + ttl`.
    pub fn mint(&self, identity: &Identity, ttl: Duration, now: SystemTime) -> String {
        let claims = Claims {
            id: identity.to_string(),
            exp: unix(now + ttl),
        };
        // Serializing two plain fields cannot fail.
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{body}");
        let mac = B64.encode(hmac::sign(&self.key, signed.as_bytes()).as_ref());
        format!("{signed}.{mac}")
    }

    /// The identity a token proves, if it is genuine and unexpired.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let token = token.trim();
        let (signed, mac) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let (prefix, body) = signed
            .split_once('.')
            .ok_or(TokenError::Malformed("no claims"))?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed("not a weft1 token"));
        }
        let mac = B64
            .decode(mac)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed("claims are not valid"))?;
        let now = unix(now);
        if claims.exp <= now {
            return Err(TokenError::Expired(now - claims.exp));
        }
        claims
            .id
            .parse()
            .map_err(|_| TokenError::Malformed("claimed identity is not valid"))
    }
}
