//! The node identity file and the identity settings an agent starts with.
//!
//! `droot-fleet enroll node NAME` writes one file per host (0600): the node's private key
//! and its certificate, signed by the fleet's enrollment key. The agent reads it at start
//! and on SIGHUP (a renewed certificate takes effect without a restart), checks that the
//! key matches the certificate, that one of `enrollment_keys` signed it and that it is
//! valid now, and hands it to the gossip core ([`crate::gossip::vouch`]).
//!
//! A `--dev` agent enrolls itself: it keeps a development enrollment key beside its dev
//! keyring (`dev-enrollment.key`, made by the first dev agent and read by the ones that
//! join with its `--keyring`), and issues itself a certificate at each start.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::gossip::cert::NodeCert;
use crate::gossip::vouch::{IdentityPolicy, OwnIdentity};
use crate::keytext;

/// File name of a dev cluster's enrollment key, beside its dev keyring.
pub const DEV_ENROLLMENT_FILE: &str = "dev-enrollment.key";
/// How long a dev agent's certificate is valid (a dev agent renews it at each start).
const DEV_VALIDITY_SECS: u64 = 365 * 24 * 3600;

/// The identity settings of an agent (validated; the file is read at start).
#[derive(Debug, Clone, Default)]
pub struct IdentitySettings {
    /// `enrollment_keys`: who may sign node certificates.
    pub issuers: Vec<VerifyingKey>,
    /// `node_identity`: this node's key and certificate.
    pub own: Option<OwnIdentity>,
    /// `require_node_identity`.
    pub required: bool,
}

impl IdentitySettings {
    /// What the gossip core is told.
    pub fn policy(&self) -> IdentityPolicy {
        IdentityPolicy {
            issuers: self.issuers.clone(),
            required: self.required,
            own: self.own.clone(),
        }
    }
}

/// The identity file's JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    /// The node name (as in the certificate; for readers of the file).
    name: String,
    /// The node's private key (base64 seed).
    node_key: String,
    /// [`NodeCert::encode`], base64.
    certificate: String,
}

/// Why an identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error("cannot read node identity {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] crate::secret_file::SecretFileError),
    #[error(
        "node identity {path} is not a droot-fleet identity file ({reason}); make one with \
         `droot-fleet enroll node NAME`"
    )]
    Parse { path: PathBuf, reason: String },
    #[error("node identity {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source} (nothing was written)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads an identity file: the key must match the certificate. Trust and time are
/// checked by [`check`].
pub fn load(path: &Path) -> Result<OwnIdentity, IdentityFileError> {
    use crate::secret_file::{Owner, read_secret};
    let text = read_secret(path, "node identity", Owner::RootOrMe)?;
    let parse = |reason: String| IdentityFileError::Parse {
        path: path.to_owned(),
        reason,
    };
    let file: IdentityFile = serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
    let key = keytext::signing_key_from_text(&file.node_key, "node_key")
        .map_err(|e| parse(e.to_string()))?;
    let cert_bytes = B64
        .decode(file.certificate.trim())
        .map_err(|e| parse(format!("certificate: {e}")))?;
    let cert = NodeCert::decode(&cert_bytes).map_err(|e| parse(e.to_string()))?;
    OwnIdentity::new(key, cert).map_err(|e| IdentityFileError::Unusable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks that one of `issuers` signed the identity's certificate and that it is valid
/// at `now` (Unix seconds).
pub fn check(
    own: &OwnIdentity,
    issuers: &[VerifyingKey],
    now: u64,
    path: &Path,
) -> Result<(), IdentityFileError> {
    own.cert()
        .verify(issuers, now)
        .map_err(|e| IdentityFileError::Unusable {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Writes an identity file (0600) for `key` and its certificate; refuses to replace one.
pub fn save(path: &Path, key: &SigningKey, cert: &NodeCert) -> Result<(), IdentityFileError> {
    let file = IdentityFile {
        name: cert.name().to_owned(),
        node_key: keytext::signing_key_to_text(key).trim().to_owned(),
        certificate: B64.encode(cert.encode()),
    };
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    crate::secret_file::create_private(path, text.as_bytes()).map_err(|source| {
        IdentityFileError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// A dev agent's identity: the dev cluster's enrollment key (beside `keyring`, made if
/// missing) and a fresh certificate for `node`.
pub fn dev(keyring: &Path, node: &str, now: u64) -> Result<IdentitySettings, IdentityFileError> {
    let dir = keyring.parent().unwrap_or(Path::new("."));
    let path = dir.join(DEV_ENROLLMENT_FILE);
    let enrollment = dev_enrollment_key(&path)?;
    let unusable = |reason: String| IdentityFileError::Unusable {
        path: path.clone(),
        reason,
    };
    let node_key = keytext::generate_signing_key();
    let until = now + DEV_VALIDITY_SECS;
    let cert = NodeCert::issue(&enrollment, node, &node_key.verifying_key(), now, until)
        .map_err(|e| unusable(e.to_string()))?;
    let own = OwnIdentity::new(node_key, cert).map_err(|e| unusable(e.to_string()))?;
    Ok(IdentitySettings {
        issuers: vec![enrollment.verifying_key()],
        own: Some(own),
        required: true,
    })
}

/// The dev enrollment key at `path`, made (0600) by the first dev agent; one that lost the
/// race to make it reads the winner's.
fn dev_enrollment_key(path: &Path) -> Result<SigningKey, IdentityFileError> {
    use crate::secret_file::{Owner, SecretFileError, create_private, read_secret};
    let what = "dev enrollment key";
    let parse = |text: &str| {
        keytext::signing_key_from_text(text, what).map_err(|e| IdentityFileError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    match read_secret(path, what, Owner::RootOrMe) {
        Ok(text) => return parse(&text),
        Err(SecretFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let key = keytext::generate_signing_key();
    match create_private(path, keytext::signing_key_to_text(&key).as_bytes()) {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            parse(&read_secret(path, what, Owner::RootOrMe)?)
        }
        Err(source) => Err(IdentityFileError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn an_identity_file_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = keytext::generate_signing_key();
        let key = keytext::generate_signing_key();
        let cert = NodeCert::issue(&ca, "web-1", &key.verifying_key(), NOW, NOW + 60).unwrap();
        let path = dir.path().join("web-1.identity");
        save(&path, &key, &cert).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(save(&path, &key, &cert).is_err(), "never replaced");
        let back = load(&path).unwrap();
        assert_eq!(back.name(), "web-1");
        check(&back, &[ca.verifying_key()], NOW, &path).unwrap();
        let err = check(&back, &[ca.verifying_key()], NOW + 61, &path).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let stranger = keytext::generate_signing_key().verifying_key();
        assert!(check(&back, &[stranger], NOW, &path).is_err());
    }

    #[test]
    fn a_broken_identity_file_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.identity");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("chmod 600"),
            "a readable identity file is refused: {err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("enroll node"), "{err}");
        assert!(load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn dev_agents_of_one_keyring_share_an_enrollment_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("dev-keyring.json");
        let a = dev(&ring, "dev-1", NOW).unwrap();
        let b = dev(&ring, "dev-2", NOW).unwrap();
        assert_eq!(a.issuers, b.issuers);
        let own = b.own.unwrap();
        own.cert().verify(&a.issuers, NOW).unwrap();
        assert_eq!(own.name(), "dev-2");
    }
}
