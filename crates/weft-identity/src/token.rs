//! Workload tokens: the credential a proxy presents outside Kubernetes.
//!
//! The control plane mints a token for exactly one identity, with an expiry,
//! and signs it with HMAC-SHA256 under a key only it holds (only the control
//! plane that minted a token ever verifies it, so a shared-secret MAC is
//! enough). Format: `weft2.<base64url(claims JSON)>.<base64url(MAC)>`; the
//! claims carry the identity, audience, issue and expiry times, a unique id
//! and the signing key's id, and a token lives at most [`MAX_TTL`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::Identity;

const PREFIX: &str = "weft2";
const KEY_LEN: usize = 32;
/// What every token is for: proving an identity to the identity service.
pub const AUDIENCE: &str = "identity.weft";
/// The longest a token may live (and be minted for).
pub const MAX_TTL: Duration = Duration::from_secs(90 * 86_400);
/// How far ahead of this clock a token's issue time may be.
const CLOCK_SKEW: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature is not valid (not minted by this control plane)")]
    BadSignature,
    #[error(
        "the token was signed with key {0}, which this control plane no longer holds (retired)"
    )]
    UnknownKey(String),
    #[error("the token is for {0:?}, not for the identity service")]
    WrongAudience(String),
    #[error("the token expired {0}s ago")]
    Expired(u64),
    #[error("the token claims to be issued {0}s in the future")]
    NotYetValid(u64),
    #[error("a token may live at most 90 days (MAX_TTL), not {0:?}")]
    TooLong(Duration),
    #[error("the token key must be {KEY_LEN} bytes of base64, got {0}")]
    BadKey(String),
    #[error("no token key in the key file")]
    NoKey,
    #[error("no randomness available to make a key")]
    NoRandom,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    /// The identity the token proves.
    id: String,
    /// Who the token is for ([`AUDIENCE`]).
    aud: String,
    /// Issued at and expiry, seconds since the Unix epoch.
    iat: u64,
    exp: u64,
    /// A unique id for this token (for audit and revocation lists).
    jti: String,
    /// Which key signed it.
    kid: String,
}

/// One token-signing key.
pub struct TokenKey {
    raw: [u8; KEY_LEN],
    key: hmac::Key,
    id: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.id)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut raw = [0u8; N];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| TokenError::NoRandom)?;
    Ok(raw)
}

impl TokenKey {
    pub fn generate() -> Result<Self, TokenError> {
        Ok(Self::from_raw(random()?))
    }

    fn from_raw(raw: [u8; KEY_LEN]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
        let id = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
            raw,
            id,
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

    /// A short public name of the key (from its hash), carried in tokens.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The control plane's token keys: the first signs, every one verifies, so a
/// new key can take over while tokens signed by the old one stay good until
/// the old key is retired. The key file holds one base64 key per line.
#[derive(Debug)]
pub struct TokenKeys(Vec<TokenKey>);

impl TokenKeys {
    pub fn new(signing: TokenKey) -> Self {
        TokenKeys(vec![signing])
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(TokenKey::from_base64)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        Ok(TokenKeys(keys))
    }

    pub fn to_text(&self) -> String {
        self.0.iter().map(|k| k.to_base64() + "\n").collect()
    }

    /// A new signing key in front; with `retire`, the others are dropped.
    pub fn rotate(mut self, retire: bool) -> Result<Self, TokenError> {
        if retire {
            self.0.clear();
        }
        self.0.insert(0, TokenKey::generate()?);
        Ok(self)
    }

    pub fn keys(&self) -> &[TokenKey] {
        &self.0
    }

    /// A token proving `identity` until `now + ttl` (at most [`MAX_TTL`]).
    pub fn mint(
        &self,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        if ttl > MAX_TTL || ttl.is_zero() {
            return Err(TokenError::TooLong(ttl));
        }
        let key = &self.0[0];
        let claims = Claims {
            id: identity.to_string(),
            aud: AUDIENCE.into(),
            iat: unix(now),
            exp: unix(now) + ttl.as_secs(),
            jti: B64.encode(random::<16>()?),
            kid: key.id.clone(),
        };
        // Serializing plain fields cannot fail.
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{body}");
        let mac = B64.encode(hmac::sign(&key.key, signed.as_bytes()).as_ref());
        Ok(format!("{signed}.{mac}"))
    }

    /// The identity a token proves, if it is genuine, for the identity
    /// service, issued by now, unexpired and not longer-lived than allowed.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let token = token.trim();
        let (signed, mac) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let (prefix, body) = signed
            .split_once('.')
            .ok_or(TokenError::Malformed("no claims"))?;
        if prefix == "weft1" {
            return Err(TokenError::Malformed(
                "a weft1 token (no audience or issue time): mint a new one with `weft identity token`",
            ));
        }
        if prefix != PREFIX {
            return Err(TokenError::Malformed("not a weft2 token"));
        }
        let mac = B64
            .decode(mac)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        // The claims pick the key; nothing in them is trusted before the MAC checks.
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed("claims are not valid"))?;
        let key = self
            .0
            .iter()
            .find(|k| k.id == claims.kid)
            .ok_or_else(|| TokenError::UnknownKey(claims.kid.clone()))?;
        hmac::verify(&key.key, signed.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        if claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        let now = unix(now);
        if claims.iat > now + CLOCK_SKEW {
            return Err(TokenError::NotYetValid(claims.iat - now));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired(now - claims.exp));
        }
        let lifetime = Duration::from_secs(claims.exp.saturating_sub(claims.iat));
        if lifetime > MAX_TTL {
            return Err(TokenError::TooLong(lifetime));
        }
        claims
            .id
            .parse()
            .map_err(|_| TokenError::Malformed("claimed identity is not valid"))
    }
}
