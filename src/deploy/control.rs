//! Rollout control (`rollout pause|resume|cancel EVENT_ID`): a signed order about one
//! deploy event, with the same trust as deploy events (a key in `trusted_signing_keys`),
//! gossiped as the `_rollout` user event and kept as the app's `deploy.control` slot, so a
//! node that was away learns the latest order from any peer.
//!
//! - Pause holds every target that has not started; resume lets them go on.
//! - Cancel halts the rollout for good: targets that finished stay as they are, those in
//!   flight finish, the rest never start. No later order about that event undoes it.
//! - Orders are ordered by their issue time (then id); an older one changes nothing, so a
//!   replayed order is harmless and no replay table is needed. One from further in the
//!   future than the allowed skew is refused (it would outrank every real one).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _};
use serde::{Deserialize, Serialize};

use super::signed::{Trust, VerifyError};

/// The user event that carries an order.
pub const CONTROL_EVENT: &str = "_rollout";
/// The slot kind that keeps the latest order per app (key: the app).
pub const CONTROL_KIND: &str = "deploy.control";
/// Largest encoded order (a small fixed-size record plus an app name).
pub const MAX_CONTROL_LEN: usize = 512;

const SIGNING_CONTEXT: &[u8] = b"droot-fleet rollout control v1\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Cancel => "cancelled",
        }
    }
}

/// An order about the rollout of one deploy event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub app: String,
    /// The deploy event it is about.
    pub event_id: [u8; 16],
    pub action: Action,
    pub issued_at_ms: u64,
    pub id: [u8; 16],
}

impl Control {
    /// Whether this order outranks `other`, held for the same app: an order about another
    /// event always does if it is newer; about the same event, a cancel is final.
    pub fn supersedes(&self, other: &Control) -> bool {
        if other.event_id == self.event_id && other.action == Action::Cancel {
            return false;
        }
        (self.issued_at_ms, self.id) > (other.issued_at_ms, other.id)
    }

    /// Its slot version: issue time, then two id bytes.
    pub fn slot_version(&self) -> u64 {
        crate::gossip::kinds::fleet_version(
            self.issued_at_ms,
            u16::from_be_bytes([self.id[0], self.id[1]]),
        )
    }
}

/// An order with its signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedControl {
    pub control: Control,
    bytes: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: Vec<u8>,
    signature: Vec<u8>,
}

fn message(body: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, body].concat()
}

impl SignedControl {
    /// Signs `control`.
    pub fn sign(control: Control, key: &SigningKey) -> Self {
        // Plain data into a Vec: cannot fail.
        let body = postcard::to_allocvec(&control).unwrap_or_default();
        let signature = key.sign(&message(&body)).to_bytes().to_vec();
        let bytes = postcard::to_allocvec(&Wire { body, signature }).unwrap_or_default();
        SignedControl { control, bytes }
    }

    /// The wire form.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes `bytes` and checks the signature as `trust` says, and that it was not issued
    /// more than `max_skew_s` after `now_s`.
    pub fn decode(
        bytes: &[u8],
        trust: &Trust,
        now_s: u64,
        max_skew_s: u64,
    ) -> Result<Self, VerifyError> {
        let s = Self::decode_signed(bytes, trust)?;
        let at = s.control.issued_at_ms / 1000;
        if at > now_s.saturating_add(max_skew_s) {
            return Err(VerifyError::Malformed(format!(
                "rollout order {} is issued {}s in the future",
                hex::encode(s.control.id),
                at - now_s
            )));
        }
        Ok(s)
    }

    /// Decodes `bytes` and checks the signature as `trust` says (a slot's version, which
    /// the gossip layer bounds by the clock, stands for the time check).
    pub fn decode_signed(bytes: &[u8], trust: &Trust) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_CONTROL_LEN {
            return Err(VerifyError::TooLarge {
                size: bytes.len(),
                max: MAX_CONTROL_LEN,
            });
        }
        let malformed = |e: postcard::Error| VerifyError::Malformed(e.to_string());
        let wire: Wire = postcard::from_bytes(bytes).map_err(malformed)?;
        let control: Control = postcard::from_bytes(&wire.body).map_err(malformed)?;
        let id = hex::encode(control.id);
        let keys = match trust {
            Trust::Keys(keys) if keys.is_empty() => return Err(VerifyError::NoTrustedKeys),
            Trust::Keys(keys) => keys.as_slice(),
            Trust::DevUnverified => &[],
        };
        if !keys.is_empty() {
            let sig = <[u8; 64]>::try_from(wire.signature.as_slice())
                .map_err(|_| VerifyError::Malformed("signature is not 64 bytes".into()))?;
            let (msg, sig) = (message(&wire.body), Signature::from_bytes(&sig));
            if !keys.iter().any(|k| k.verify(&msg, &sig).is_ok()) {
                return Err(VerifyError::BadSignature { id });
            }
        }
        Ok(SignedControl {
            control,
            bytes: bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(event: u8, action: Action, at: u64, id: u8) -> Control {
        Control {
            app: "web".into(),
            event_id: [event; 16],
            action,
            issued_at_ms: at,
            id: [id; 16],
        }
    }

    #[test]
    fn the_newest_order_wins_but_a_cancel_is_final() {
        let pause = order(1, Action::Pause, 1000, 1);
        let resume = order(1, Action::Resume, 2000, 2);
        assert!(resume.supersedes(&pause) && !pause.supersedes(&resume));
        let cancel = order(1, Action::Cancel, 3000, 3);
        assert!(cancel.supersedes(&resume));
        assert!(!order(1, Action::Resume, 9000, 4).supersedes(&cancel));
        assert!(
            order(2, Action::Pause, 9000, 5).supersedes(&cancel),
            "another event"
        );
    }

    #[test]
    fn orders_verify_under_trusted_keys_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let s = SignedControl::sign(order(1, Action::Pause, 5_000, 1), &key);
        let trust = Trust::Keys(vec![key.verifying_key()]);
        let back = SignedControl::decode(s.bytes(), &trust, 5, 60).unwrap();
        assert_eq!(back.control, s.control);
        let untrusted = Trust::Keys(vec![other.verifying_key()]);
        assert!(matches!(
            SignedControl::decode(s.bytes(), &untrusted, 5, 60),
            Err(VerifyError::BadSignature { .. })
        ));
        assert!(SignedControl::decode(s.bytes(), &Trust::Keys(vec![]), 5, 60).is_err());
        let future = SignedControl::sign(order(1, Action::Pause, 900_000, 1), &key);
        assert!(SignedControl::decode(future.bytes(), &trust, 5, 60).is_err());
        let mut forged = s.bytes().to_vec();
        let n = forged.len();
        forged[n - 1] ^= 1;
        assert!(SignedControl::decode(&forged, &trust, 5, 60).is_err());
    }
}
