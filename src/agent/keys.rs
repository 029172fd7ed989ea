//! The keyring file: where the agent's keyring comes from and where it is kept.
//!
//! The keyring lives in the agent (shared read-only with the I/O loops, see
//! [`super::net::SharedKeyring`]) and in its JSON file, rewritten atomically after every
//! change so a restart keeps rotated keys. A `--dev` agent without one generates a fresh
//! key per run ([`dev_keyring`]); only `insecure = true` uses the well-known all-zero
//! key, with which every such agent can talk to every other and nothing is authenticated.
//!
//! The cluster-wide key operations themselves (the internal key query, its payload and
//! how a node applies it) have no I/O: [`crate::agent::sansio::key_command`].

use std::path::{Path, PathBuf};

use crate::gossip::keyring::KeyringFile;
use crate::gossip::{Key, Keyring};

/// Why the keyring file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Read(#[from] crate::secret_file::SecretFileError),
    #[error("cannot create keyring {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {path} is not {{\"primary\": \"<base64 key>\", \"keys\": [...]}}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("writing keyring {path}: {source} (the file is unchanged)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The well-known all-zero key of `insecure = true`: it authenticates nothing.
pub fn insecure_keyring() -> Keyring {
    Keyring::new(Key::from_bytes([0; 32]))
}

/// File name of the key a `--dev` agent generates in its data dir.
pub const DEV_KEYRING_FILE: &str = "dev-keyring.json";

/// A fresh random keyring for a `--dev` agent, written 0600 to
/// `<data_dir>/dev-keyring.json` (replacing the previous run's) so that a second dev
/// agent can join with `--keyring`. Returns the keyring and the file's path.
pub fn dev_keyring(data_dir: &Path) -> Result<(Keyring, PathBuf), KeysError> {
    use std::os::unix::fs::MetadataExt;
    let path = data_dir.join(DEV_KEYRING_FILE);
    // The default dev dir is in /tmp: a dir another user owns or can write to could
    // hand them the key.
    let meta = std::fs::symlink_metadata(data_dir).map_err(|source| KeysError::Write {
        path: path.clone(),
        source,
    })?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(KeysError::Write {
            path,
            source: std::io::Error::other(format!(
                "the data dir {} is not a directory owned by this user and writable only by \
                 it; pick another with --data-dir",
                data_dir.display()
            )),
        });
    }
    let ring = Keyring::new(Key::generate(&mut rand::rng()));
    save(&path, &ring)?;
    Ok((ring, path))
}

/// Loads a keyring file; refused when another user can read or change it, or when it
/// belongs to someone other than root or us ([`crate::secret_file`]).
pub fn load(path: &Path) -> Result<Keyring, KeysError> {
    use crate::secret_file::{Owner, read_secret};
    let text = read_secret(path, "keyring", Owner::RootOrMe)?;
    let file: KeyringFile = serde_json::from_str(&text).map_err(|e| KeysError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Keyring::try_from(file).map_err(|e| KeysError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn keyring_json(ring: &Keyring) -> Vec<u8> {
    let file = KeyringFile::from(ring.clone());
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Saves a keyring file atomically (mode 0600).
pub fn save(path: &Path, ring: &Keyring) -> Result<(), KeysError> {
    crate::atomic_file::write_atomic(path, &keyring_json(ring), 0o600).map_err(|source| {
        KeysError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Writes a new keyring file, 0600 whatever the umask; an existing file is never replaced.
pub fn create(path: &Path, ring: &Keyring) -> Result<(), KeysError> {
    crate::secret_file::create_private(path, &keyring_json(ring)).map_err(|source| {
        KeysError::Create {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_roundtrip() {
        let mut ring = insecure_keyring();
        ring.install(Key::from_bytes([7; 32]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        save(&p, &ring).unwrap();
        assert_eq!(load(&p).unwrap(), ring);
    }
}
