//! Workload tokens in the local mesh. Each pod's proxy (and the destination
//! service) proves its identity to Certify with a token read from a file at
//! every request, so a token must be alive whenever a proxy starts or renews,
//! however long the mesh has run: tokens are minted with a bounded lifetime and
//! re-minted at half of it, in place, atomically.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use weft_identity::Identity;

/// A token file kept alive for one identity.
pub struct TokenFile {
    identity: Identity,
    path: PathBuf,
    /// The uid that alone may read it (the proxy's).
    owner: u32,
    ttl: Duration,
    minted: Instant,
}

impl TokenFile {
    /// Mints a first token for `identity` and writes it to `path`, readable
    /// only by `owner`.
    pub fn create(
        ca: &Path,
        identity: &str,
        path: PathBuf,
        owner: u32,
        ttl: Duration,
    ) -> anyhow::Result<TokenFile> {
        let identity: Identity = identity
            .parse()
            .with_context(|| format!("the identity {identity:?}"))?;
        let mut file = TokenFile {
            identity,
            path,
            owner,
            ttl,
            minted: Instant::now(),
        };
        file.write(ca)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-mints the token once half its life has passed; whether it did.
    pub fn renew_if_due(&mut self, ca: &Path) -> anyhow::Result<bool> {
        if self.minted.elapsed() < self.ttl / 2 {
            return Ok(false);
        }
        self.write(ca)?;
        Ok(true)
    }

    fn write(&mut self, ca: &Path) -> anyhow::Result<()> {
        // Read afresh each time: the token key may have been rotated.
        let keys = weft_control::ca_dir::load_token_keys(ca)?;
        let token = keys.mint(&self.identity, self.ttl, SystemTime::now())?;
        weft_control::secure_fs::write_atomic(&self.path, token.as_bytes(), 0o600)?;
        std::os::unix::fs::chown(&self.path, Some(self.owner), Some(self.owner))
            .with_context(|| format!("giving {} to uid {}", self.path.display(), self.owner))?;
        self.minted = Instant::now();
        Ok(())
    }
}
