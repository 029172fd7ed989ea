//! Ed25519 keys as text: standard base64 of the 32 bytes, one line. The deploy signing
//! key, the enrollment key and node keys share this form, so one reader serves them all.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not valid base64 of a 32-byte Ed25519 key")]
    Invalid { what: String },
}

fn key_bytes(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    B64.decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| KeyError::Invalid { what: what.into() })
}

/// A new random signing key.
pub fn generate_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// A private key's file form: base64 of the 32-byte seed, one line.
pub fn signing_key_to_text(key: &SigningKey) -> String {
    format!("{}\n", B64.encode(key.to_bytes()))
}

/// Reads [`signing_key_to_text`]'s form; `what` names the key in the error.
pub fn signing_key_from_text(text: &str, what: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&key_bytes(text, what)?))
}

/// A public key as base64, for `trusted_signing_keys` and `enrollment_keys`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.to_bytes())
}

/// Length of a [`key_id`].
pub const KEY_ID_LEN: usize = 10;

/// A short, stable id of a public key: the first [`KEY_ID_LEN`] characters of its
/// [`public_key_text`], so it can be found in `trusted_signing_keys` as it is.
pub fn key_id(key: &VerifyingKey) -> String {
    public_key_text(key)[..KEY_ID_LEN].to_owned()
}

/// Reads [`public_key_text`]'s form; `what` names the key in the error.
pub fn public_key_from_text_named(text: &str, what: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = key_bytes(text, what)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid { what: what.into() })
}

/// Reads a trusted signing key ([`public_key_text`]'s form).
pub fn public_key_from_text(text: &str) -> Result<VerifyingKey, KeyError> {
    public_key_from_text_named(text, &format!("trusted signing key {:?}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_text_is_named() {
        let key = generate_signing_key();
        let text = signing_key_to_text(&key);
        assert_eq!(
            signing_key_from_text(&text, "k").unwrap().to_bytes(),
            key.to_bytes()
        );
        let public = public_key_text(&key.verifying_key());
        assert_eq!(public_key_from_text(&public).unwrap(), key.verifying_key());
        assert!(public.starts_with(&key_id(&key.verifying_key())));
        assert_eq!(key_id(&key.verifying_key()).len(), KEY_ID_LEN);
        let err = public_key_from_text_named("nope", "enrollment key 1").unwrap_err();
        assert!(err.to_string().contains("enrollment key 1"), "{err}");
    }
}
