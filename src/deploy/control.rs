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
//! - Cancels are kept apart from pauses and resumes ([`Orders`], and the slot keys `APP`
//!   and `APP/cancel`), so no later pause or resume, from any node, pushes a cancel out of
//!   the gossiped state; only a newer cancel (of a newer deploy) replaces it.

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
    /// Whether this order was issued after `other`.
    pub fn is_newer_than(&self, other: &Control) -> bool {
        (self.issued_at_ms, self.id) > (other.issued_at_ms, other.id)
    }

    /// Its slot version: issue time, then two id bytes.
    pub fn slot_version(&self) -> u64 {
        crate::gossip::kinds::fleet_version(
            self.issued_at_ms,
            u16::from_be_bytes([self.id[0], self.id[1]]),
        )
    }

    /// Its slot key: the app for a pause or a resume, `APP/cancel` for a cancel.
    pub fn slot_key(&self) -> String {
        match self.action {
            Action::Cancel => format!("{}/cancel", self.app),
            _ => self.app.clone(),
        }
    }
}

/// The orders held for one app: the newest pause or resume, and the newest cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orders {
    latest: Option<Control>,
    cancel: Option<Control>,
}

impl Orders {
    /// Keeps `c` if it is newer than the order of its kind held; whether it did.
    pub fn offer(&mut self, c: Control) -> bool {
        let slot = match c.action {
            Action::Cancel => &mut self.cancel,
            _ => &mut self.latest,
        };
        if slot.as_ref().is_some_and(|held| !c.is_newer_than(held)) {
            return false;
        }
        *slot = Some(c);
        true
    }

    /// When the rollout of `event` was last resumed (Unix milliseconds), if it was.
    pub fn resumed_at(&self, event: &[u8; 16]) -> Option<u64> {
        (self.latest.as_ref())
            .filter(|c| &c.event_id == event && c.action == Action::Resume)
            .map(|c| c.issued_at_ms)
    }

    /// The operator's word on the rollout of `event`: cancelled for good, else the newest
    /// pause or resume about it.
    pub fn about(&self, event: &[u8; 16]) -> Option<Action> {
        let about = |c: &Option<Control>| {
            c.as_ref()
                .filter(|c| &c.event_id == event)
                .map(|c| c.action)
        };
        about(&self.cancel).or_else(|| about(&self.latest))
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
        let mut o = Orders::default();
        assert!(o.offer(order(1, Action::Pause, 1000, 1)));
        assert_eq!(o.about(&[1; 16]), Some(Action::Pause));
        assert!(!o.offer(order(1, Action::Resume, 500, 2)), "older");
        assert!(o.offer(order(1, Action::Resume, 2000, 2)));
        assert_eq!(o.about(&[1; 16]), Some(Action::Resume));
        assert!(o.offer(order(1, Action::Cancel, 3000, 3)));
        assert!(o.offer(order(1, Action::Resume, 9000, 4)), "kept apart");
        assert_eq!(o.about(&[1; 16]), Some(Action::Cancel), "the cancel stands");
        assert_eq!(o.about(&[2; 16]), None);
        assert_eq!(order(1, Action::Cancel, 1, 1).slot_key(), "web/cancel");
        assert_eq!(order(1, Action::Pause, 1, 1).slot_key(), "web");
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
