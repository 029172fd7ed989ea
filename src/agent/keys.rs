//! The keyring file and cluster-wide key operations.
//!
//! The keyring lives in the agent (shared read-only with the I/O loops, see
//! [`super::net::SharedKeyring`]) and in its JSON file, rewritten atomically after every
//! change so a restart keeps rotated keys. A `--dev` agent without one generates a fresh
//! key per run ([`dev_keyring`]); only `insecure = true` uses the well-known all-zero
//! key, with which every such agent can talk to every other and nothing is authenticated.
//!
//! Like `serf keys`, `install`/`use`/`remove`/`list` run on *every* member through an
//! internal query named [`KEYS_QUERY`] whose payload is a JSON [`KeyCommand`]; each
//! node answers a JSON [`crate::wire::NodeKeyResult`]. Rotation is: install the new key
//! everywhere, use it everywhere, remove the old one everywhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key_auth::{KeyAuth, KeyAuthority};
use crate::gossip::keyring::{KeyringError, KeyringFile};
use crate::gossip::{Key, Keyring};
use crate::wire::NodeKeyResult;

/// Name of the internal key query.
pub const KEYS_QUERY: &str = "_droot-fleet-keys";

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

/// Payload of the internal key query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCommand {
    pub op: String,
    #[serde(default)]
    pub key: Option<String>,
    /// The operator's signature of a change (`list` needs none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<KeyAuth>,
}

/// Applies a key command to this node's keyring, if `authority` admits it at `now_ms`.
/// Returns the node's result and whether the keyring changed (the caller persists it).
pub fn apply(
    node: &str,
    ring: &mut Keyring,
    payload: &[u8],
    authority: &mut KeyAuthority,
    now_ms: u64,
) -> (NodeKeyResult, bool) {
    let fail = |error: String| NodeKeyResult {
        node: node.to_owned(),
        ok: false,
        error: Some(error),
        keys: Vec::new(),
    };
    let cmd: KeyCommand = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => return (fail(format!("bad key command: {e}")), false),
    };
    if cmd.op != "list" {
        let admitted = authority.admit(&cmd.op, cmd.key.as_deref(), cmd.auth.as_ref(), now_ms);
        if let Err(e) = admitted {
            return (fail(e.to_string()), false);
        }
    }
    let key = match (&cmd.op[..], cmd.key.as_deref().map(Key::from_base64)) {
        ("list", _) => None,
        (_, Some(Ok(k))) => Some(k),
        (_, Some(Err(e))) => return (fail(e.to_string()), false),
        (_, None) => return (fail("a key is required".into()), false),
    };
    let before = ring.clone();
    let outcome: Result<(), KeyringError> = match (&cmd.op[..], key) {
        ("list", _) => Ok(()),
        ("install", Some(k)) => {
            ring.install(k);
            Ok(())
        }
        ("use", Some(k)) => ring.use_key(&k),
        ("remove", Some(k)) => ring.remove(&k),
        (op, _) => return (fail(format!("unknown key operation {op:?}")), false),
    };
    let changed = *ring != before;
    match outcome {
        Ok(()) => (
            NodeKeyResult {
                node: node.to_owned(),
                ok: true,
                error: None,
                keys: ring.list(),
            },
            changed,
        ),
        Err(e) => (fail(e.to_string()), changed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn rotation_steps() {
        use crate::deploy::signed::{Policy, Trust};
        let operator = crate::keytext::generate_signing_key();
        let mut authority = KeyAuthority::new(Policy {
            trusted: Trust::Keys(vec![operator.verifying_key()]),
            max_age: 60,
            max_skew: 60,
        });
        let mut ring = insecure_keyring();
        let new = Key::from_bytes([7; 32]).to_base64();
        let cmd = |op: &str| {
            let auth = super::super::key_auth::sign(op, Some(&new), &operator, NOW);
            serde_json::to_vec(&KeyCommand {
                op: op.into(),
                key: Some(new.clone()),
                auth: Some(auth),
            })
            .unwrap()
        };
        let mut apply =
            |ring: &mut Keyring, payload: &[u8]| apply("n", ring, payload, &mut authority, NOW);
        let unsigned = format!(r#"{{"op":"install","key":"{new}"}}"#);
        let (r, changed) = apply(&mut ring, unsigned.as_bytes());
        assert!(!r.ok && !changed, "an unsigned install is refused: {r:?}");
        let (r, changed) = apply(&mut ring, &cmd("use"));
        assert!(!r.ok && !changed, "use before install fails");
        assert!(apply(&mut ring, &cmd("install")).0.ok);
        assert!(apply(&mut ring, &cmd("use")).0.ok);
        assert_eq!(ring.primary().to_base64(), new);
        let (r, _) = apply(&mut ring, &cmd("remove"));
        assert!(!r.ok, "cannot remove the primary");
        let (r, _) = apply(&mut ring, br#"{"op":"list"}"#);
        assert_eq!(r.keys.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        save(&p, &ring).unwrap();
        assert_eq!(load(&p).unwrap(), ring);
    }
}
