//! Files that hold secrets: the gossip keyring, a deploy signing key, a config file with
//! `rpc_token`. Whoever can read one holds the key (or drives the control API), so such a
//! file is read only when no other local user can read or change it.
//!
//! A leaf module (no crate imports), shared by the agent, the deploy pipeline and the CLI.
//! Guarantees:
//! - The checks are made on the descriptor the bytes are read from (`fstat` after `open`),
//!   so a file swapped between the check and the read is never trusted.
//! - A refusal names the file, its mode and the exact command that fixes it
//!   (`chmod 600 PATH`, `chown UID PATH`).
//! - [`create_private`] writes a new file 0600 whatever the umask, and never replaces one.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest secret file read (a keyring of many keys, a long config).
pub const MAX_SECRET_FILE: u64 = 4 << 20;

/// Who may own a secret file besides the mode check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Root or the effective user: the files the agent loads. Another owner could read
    /// it, and replace it, whatever its mode.
    RootOrMe,
    /// Not checked: a file the operator's CLI reads, often through `sudo` from the
    /// operator's own 0600 file.
    Any,
}

/// Why a secret file was refused. Nothing was loaded from it.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: String, path: PathBuf },
    #[error("{what} {path} is larger than {MAX_SECRET_FILE} bytes")]
    TooLarge { what: String, path: PathBuf },
    #[error(
        "{what} {path} is {who} by other users (mode {mode:04o}): \
         run `chmod 600 {quoted}` and try again",
        who = exposure(*mode),
        quoted = ShellQuoted(path)
    )]
    Exposed {
        what: String,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {path} is owned by uid {uid}, who can read and replace it; it must belong to \
         root or to this user (uid {me}): run `chown {me} {quoted}` and try again",
        quoted = ShellQuoted(path)
    )]
    Owner {
        what: String,
        path: PathBuf,
        uid: u32,
        me: u32,
    },
}

fn exposure(mode: u32) -> &'static str {
    match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "usable",
    }
}

/// A path as a shell word: single-quoted when it holds anything but `[A-Za-z0-9/._+-]`.
struct ShellQuoted<'a>(&'a Path);

impl fmt::Display for ShellQuoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.to_string_lossy();
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c));
        if plain {
            f.write_str(&s)
        } else {
            write!(f, "'{}'", s.replace('\'', r"'\''"))
        }
    }
}

/// Refuses `meta` (of `path`) if a user other than its owner may read or write it, or,
/// with [`Owner::RootOrMe`], if it belongs to someone other than root or us.
pub fn check_private(
    path: &Path,
    meta: &Metadata,
    what: &str,
    owner: Owner,
) -> Result<(), SecretFileError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            what: what.into(),
            path: path.into(),
            mode,
        });
    }
    // SAFETY: geteuid cannot fail and has no side effects.
    let me = unsafe { libc::geteuid() };
    if owner == Owner::RootOrMe && meta.uid() != 0 && meta.uid() != me {
        return Err(SecretFileError::Owner {
            what: what.into(),
            path: path.into(),
            uid: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Reads a text file (at most [`MAX_SECRET_FILE`] bytes) and the metadata of the very
/// descriptor it was read from, for a later [`check_private`].
pub fn read_with_meta(path: &Path, what: &str) -> Result<(String, Metadata), SecretFileError> {
    let read_err = |source| SecretFileError::Read {
        what: what.into(),
        path: path.into(),
        source,
    };
    let f = File::open(path).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretFileError::NotAFile {
            what: what.into(),
            path: path.into(),
        });
    }
    let mut text = String::new();
    f.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretFileError::TooLarge {
            what: what.into(),
            path: path.into(),
        });
    }
    Ok((text, meta))
}

/// Reads a secret file after [`check_private`] passed on its descriptor.
pub fn read_secret(path: &Path, what: &str, owner: Owner) -> Result<String, SecretFileError> {
    let (text, meta) = read_with_meta(path, what)?;
    check_private(path, &meta, what, owner)?;
    Ok(text)
}

/// Creates `path` with `bytes`, mode 0600 whatever the umask, and syncs it. An existing
/// file is never replaced (`AlreadyExists`).
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask may have taken bits away (0400 → 0200): set the mode exactly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn group_or_world_access_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, who) in [
            (0o644, "readable"),
            (0o640, "readable"),
            (0o620, "writable"),
            (0o666, "readable and writable"),
        ] {
            let p = file_with_mode(dir.path(), &format!("k{mode:o}"), mode);
            let e = read_secret(&p, "keyring", Owner::Any).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("(mode {mode:04o})")), "{msg}");
            assert!(msg.contains(&format!("is {who} by other users")), "{msg}");
            assert!(
                msg.contains(&format!("run `chmod 600 {}`", p.display())),
                "{msg}"
            );
        }
        let p = file_with_mode(dir.path(), "ok", 0o600);
        assert_eq!(
            read_secret(&p, "keyring", Owner::RootOrMe).unwrap(),
            "secret"
        );
        let p = file_with_mode(dir.path(), "ro", 0o400);
        assert!(read_secret(&p, "keyring", Owner::RootOrMe).is_ok());
    }

    #[test]
    fn a_path_with_spaces_is_quoted_for_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with_mode(dir.path(), "it's mine", 0o644);
        let msg = read_secret(&p, "signing key", Owner::Any)
            .unwrap_err()
            .to_string();
        let quoted = format!("'{}/it'\\''s mine'", dir.path().display());
        assert!(msg.contains(&format!("chmod 600 {quoted}")), "{msg}");
    }

    #[test]
    fn not_a_file_or_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_secret(dir.path(), "keyring", Owner::Any).unwrap_err();
        assert!(matches!(e, SecretFileError::NotAFile { .. }), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE as usize + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_secret(&big, "keyring", Owner::Any).unwrap_err();
        assert!(matches!(e, SecretFileError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn create_private_is_0600_under_any_umask_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new");
        create_private(&p, b"k").unwrap();
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let e = create_private(&p, b"other").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"k");
    }
}
