//! Files and directories that hold secrets: the CA's keys, workload tokens, a
//! mesh's state.
//!
//! - directories are made 0700, and an existing one is used only if this user
//!   owns it and nobody else can write to it (a directory in /tmp that another
//!   user made first could hold a CA of theirs);
//! - files are written through a fresh temporary file in the same directory
//!   (exclusive create, never following a link, mode set at creation, synced)
//!   and renamed over the target, so a reader sees the old or the new content
//!   and a leftover or planted temporary file is never used;
//! - keys are refused when their mode lets the group or others read them.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use anyhow::{Context as _, bail};

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Makes `dir` (and missing parents) with mode 0700, or checks an existing
/// one: owned by this user and writable by nobody else; a readable one is
/// tightened to 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    owned_dir(dir, 0o700)
}

/// Like [`private_dir`] with `mode` (0700, or 0711 for a directory that other
/// uids must pass through to reach a file of theirs, without listing it).
pub fn owned_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory (a link?); remove it", dir.display());
    }
    if meta.uid() != euid() {
        bail!(
            "{} belongs to uid {}, not to you (uid {}); refusing to keep secrets there \
             (remove it, or choose another place with --state-root / --dir)",
            dir.display(),
            meta.uid(),
            euid()
        );
    }
    let current = meta.mode() & 0o777;
    if current & 0o022 != 0 {
        bail!(
            "{} is writable by its group or others (mode {current:04o}); refusing to use it \
             (check what is in it, then chmod 700 it)",
            dir.display()
        );
    }
    if current != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", dir.display()))?;
    }
    Ok(())
}

/// Replaces `path` with `contents`, created with `mode` (see the module docs).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed.with_context(|| format!("writing {}", path.display()))
}

/// A file only this user can read (logs), created or appended to, never
/// through a link.
pub fn private_file(path: &Path) -> anyhow::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // An existing file keeps its mode at open: tighten it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    Ok(f)
}

/// Reads a key, refusing one that the group or others may read.
pub fn read_key(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by its group or others (mode {mode:04o}); a key must be private: \
             chmod 600 {} (and consider it exposed)",
            path.display(),
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-secure-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn directories_are_private_and_loose_ones_refused() {
        let dir = scratch("dir");
        private_dir(&dir.join("a/b")).unwrap();
        let mode = std::fs::metadata(dir.join("a/b")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by its group or others"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_replace_atomically_and_ignore_planted_temporary_files() {
        let dir = scratch("write");
        private_dir(&dir).unwrap();
        let key = dir.join("issuer.key");
        // A world-readable leftover with the old fixed name changes nothing.
        std::fs::write(dir.join("issuer.tmp"), "planted").unwrap();
        write_atomic(&key, b"secret", 0o600).unwrap();
        write_atomic(&key, b"newer", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "newer");
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_key(&key).unwrap(), "newer");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert_eq!(leftovers.len(), 1, "only the planted file: {leftovers:?}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
