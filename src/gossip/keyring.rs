//! Cluster encryption keys and the keyring that holds them.
//!
//! Every datagram and stream frame the agent sends is sealed with the keyring's
//! *primary* key; incoming data is opened with the primary first and then with every
//! other *installed* key (see [`super::envelope`]). This is what makes rolling key
//! rotation possible without a flag day, exactly like `serf keys`:
//!
//! 1. `install` the new key on every node (all nodes now *accept* it),
//! 2. `use` it on every node (all nodes now *send* with it, still accept the old one),
//! 3. `remove` the old key everywhere.
//!
//! A key is 32 random bytes, written as standard base64 (44 characters, padded), the
//! form printed by `droot-fleet keygen` ([`Key::generate`]). A key's `Debug` output is
//! redacted so keys never end up in logs by accident; use [`Key::to_base64`] when the
//! operator explicitly asks to see it.
//!
//! The keyring file is JSON: `{"primary": "<b64>", "keys": ["<b64>", ...]}` where
//! `keys` lists every installed key (the primary may or may not be repeated there; on
//! load duplicates are ignored, on save the primary is listed first).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Length of a key in bytes (ChaCha20-Poly1305 key size).
pub const KEY_LEN: usize = 32;

/// Why a key string could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard base64.
    #[error(
        "key is not valid base64 ({reason}); expected 32 random bytes in standard base64 \
         (44 characters, as printed by `droot-fleet keygen`)"
    )]
    BadBase64 { reason: String },
    /// The base64 decoded to the wrong number of bytes.
    #[error(
        "key decodes to {len} bytes but must be exactly {KEY_LEN}; generate a new one with \
         `droot-fleet keygen`"
    )]
    WrongLength { len: usize },
}

/// Why a keyring operation was refused. The keyring is left unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// `use` or `remove` named a key that is not installed.
    #[error(
        "key is not installed in the keyring (keyring unchanged); install it first with \
         `keys install`"
    )]
    NotInstalled,
    /// `remove` named the primary key.
    #[error(
        "cannot remove the primary key (keyring unchanged); `keys use` another installed \
         key first, then remove this one"
    )]
    RemovePrimary,
    /// A key in the keyring file is malformed.
    #[error("keyring file: {0}")]
    BadKey(#[from] KeyError),
}

/// A 32-byte symmetric cluster key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Generates a fresh random key. Pass a cryptographic RNG (`rand::rng()` in the
    /// binary, a seeded `StdRng` in tests).
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses standard base64 (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let raw = STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::BadBase64 {
                reason: e.to_string(),
            })?;
        let bytes: [u8; KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength { len: raw.len() })?;
        Ok(Self(bytes))
    }

    /// The key as standard base64, e.g. for `droot-fleet keygen` or `keys list`.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// The set of keys a node accepts, one of which (the primary) it sends with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "KeyringFile", into = "KeyringFile")]
pub struct Keyring {
    primary: Key,
    /// Accepted keys other than the primary, in installation order, without duplicates.
    others: Vec<Key>,
}

impl Keyring {
    /// A keyring with a single key, which is the primary.
    pub fn new(primary: Key) -> Self {
        Self {
            primary,
            others: Vec::new(),
        }
    }

    /// The key used to seal outgoing data.
    pub fn primary(&self) -> &Key {
        &self.primary
    }

    /// All accepted keys, primary first. This is also the order [`super::envelope`]
    /// tries them in.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.primary).chain(self.others.iter())
    }

    /// All accepted keys as base64, primary first (for `keys list`).
    pub fn list(&self) -> Vec<String> {
        self.keys().map(Key::to_base64).collect()
    }

    /// Number of accepted keys (at least 1).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Always false: a keyring holds at least its primary key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `key` is accepted.
    pub fn contains(&self, key: &Key) -> bool {
        self.keys().any(|k| k == key)
    }

    /// Starts accepting `key`. Returns `false` if it was already installed (no change).
    pub fn install(&mut self, key: Key) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.others.push(key);
        true
    }

    /// Makes an installed key the primary; the old primary stays accepted.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        if &self.primary == key {
            return Ok(());
        }
        let pos = self
            .others
            .iter()
            .position(|k| k == key)
            .ok_or(KeyringError::NotInstalled)?;
        let new_primary = self.others.remove(pos);
        let old = std::mem::replace(&mut self.primary, new_primary);
        self.others.insert(0, old);
        Ok(())
    }

    /// Stops accepting a non-primary key.
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        if &self.primary == key {
            return Err(KeyringError::RemovePrimary);
        }
        let pos = self
            .others
            .iter()
            .position(|k| k == key)
            .ok_or(KeyringError::NotInstalled)?;
        self.others.remove(pos);
        Ok(())
    }
}

/// The on-disk (JSON) form of a [`Keyring`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringFile {
    /// Base64 primary key.
    pub primary: String,
    /// Base64 installed keys; may repeat the primary. Defaults to empty.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl TryFrom<KeyringFile> for Keyring {
    type Error = KeyringError;
    fn try_from(file: KeyringFile) -> Result<Self, Self::Error> {
        let mut ring = Keyring::new(Key::from_base64(&file.primary)?);
        for k in &file.keys {
            ring.install(Key::from_base64(k)?);
        }
        Ok(ring)
    }
}

impl From<Keyring> for KeyringFile {
    fn from(ring: Keyring) -> Self {
        KeyringFile {
            primary: ring.primary.to_base64(),
            keys: ring.list(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn keys(n: usize) -> Vec<Key> {
        let mut rng = StdRng::seed_from_u64(7);
        (0..n).map(|_| Key::generate(&mut rng)).collect()
    }

    #[test]
    fn base64_roundtrip_and_errors() {
        let k = keys(1).remove(0);
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::from_base64(&format!(" {text}\n")).unwrap(), k);
        assert!(matches!(
            Key::from_base64("not base64!!"),
            Err(KeyError::BadBase64 { .. })
        ));
        let short = STANDARD.encode([1u8; 16]);
        let err = Key::from_base64(&short).unwrap_err();
        assert_eq!(err, KeyError::WrongLength { len: 16 });
        assert!(err.to_string().contains("16 bytes"), "{err}");
        assert_eq!(format!("{k:?}"), "Key(<redacted>)");
    }

    #[test]
    fn generate_is_deterministic_with_seed_and_distinct() {
        let a = keys(2);
        assert_ne!(a[0], a[1]);
        assert_eq!(keys(2), a);
    }

    #[test]
    fn install_use_remove() {
        let k = keys(3);
        let mut ring = Keyring::new(k[0].clone());
        assert!(ring.install(k[1].clone()));
        assert!(!ring.install(k[1].clone()));
        assert!(!ring.install(k[0].clone()));
        assert_eq!(ring.len(), 2);

        assert_eq!(ring.use_key(&k[2]), Err(KeyringError::NotInstalled));
        assert_eq!(ring.remove(&k[2]), Err(KeyringError::NotInstalled));
        assert_eq!(ring.remove(&k[0]), Err(KeyringError::RemovePrimary));

        ring.use_key(&k[1]).unwrap();
        assert_eq!(ring.primary(), &k[1]);
        assert!(ring.contains(&k[0]));
        assert_eq!(ring.list(), vec![k[1].to_base64(), k[0].to_base64()]);

        ring.remove(&k[0]).unwrap();
        assert_eq!(ring.len(), 1);
        assert!(!ring.contains(&k[0]));
    }

    #[test]
    fn file_roundtrip() {
        let k = keys(2);
        let mut ring = Keyring::new(k[0].clone());
        ring.install(k[1].clone());
        let json = serde_json::to_string(&ring).unwrap();
        assert!(json.contains("\"primary\""), "{json}");
        let back: Keyring = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ring);

        // `keys` may be omitted, and may repeat the primary.
        let minimal = format!(r#"{{"primary":"{}"}}"#, k[0].to_base64());
        let r: Keyring = serde_json::from_str(&minimal).unwrap();
        assert_eq!(r.len(), 1);

        let bad = r#"{"primary":"AAAA","keys":[]}"#;
        let err = serde_json::from_str::<Keyring>(bad).unwrap_err();
        assert!(err.to_string().contains("must be exactly 32"), "{err}");
    }
}
