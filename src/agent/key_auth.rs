//! Cluster key operations authorised by the operator's signing key, not by the gossip key.
//!
//! Why: the keys query travels like any query, so every holder of the gossip key (one
//! leaked host has it) could send `install`, `use` and `remove` to some nodes, and split the
//! cluster for good with a key only it knows. A key change now carries a [`KeyAuth`]: an
//! Ed25519 signature by a key in `trusted_signing_keys` over the operation, the key, when it
//! was issued and a random id. Each node checks it with the deploy events' rules (age, clock
//! skew, no id twice) before it touches its keyring. `list` changes nothing and stays open.
//! A `--dev` agent that trusts no key takes unsigned operations, as it takes unsigned
//! deploys.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::deploy::signed::{Policy, SeenIds, SeenSnapshot, Timing, Trust};

/// Domain separation: a key-operation signature is valid for nothing else.
const CONTEXT: &[u8] = b"droot-fleet key operation v1\0";

/// Key operations remembered against replays (ids older than the policy's age are refused
/// by age anyway; the oldest forgotten raise a floor, see [`SeenIds`]).
const SEEN_OPERATIONS: usize = 256;

/// The operator's authorisation of one key operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAuth {
    /// Unix milliseconds when the operator signed it.
    pub issued_at_ms: u64,
    /// 16 random bytes, hex: the replay key.
    pub id: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

/// The bytes signed: the context, then the operation and its key (each length-prefixed,
/// the key after a presence byte), when, and which.
fn signed_bytes(op: &str, key: Option<&str>, issued_at_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut out = CONTEXT.to_vec();
    let field = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    field(&mut out, op);
    out.push(u8::from(key.is_some()));
    field(&mut out, key.unwrap_or_default());
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out.extend_from_slice(id);
    out
}

/// Signs `op` on `key` (base64, as sent) at `now_ms`.
pub fn sign(op: &str, key: Option<&str>, signer: &SigningKey, now_ms: u64) -> KeyAuth {
    use base64::Engine as _;
    let id: [u8; 16] = rand::random();
    let sig = signer.sign(&signed_bytes(op, key, now_ms, &id));
    KeyAuth {
        issued_at_ms: now_ms,
        id: hex::encode(id),
        signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    }
}

/// Why a node refused a key operation; its keyring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyAuthError {
    #[error(
        "key {op} refused: key operations must be signed by a trusted signing key, and this \
         node trusts none (add the operator's public key to trusted_signing_keys)"
    )]
    NoTrustedKeys { op: String },
    #[error("key {op} refused: it is not signed (sign it with a key in trusted_signing_keys)")]
    Unsigned { op: String },
    #[error(
        "key {op} refused: its signature is malformed ({reason}); sign it again with \
         droot-fleet of this release"
    )]
    Malformed { op: String, reason: String },
    #[error(
        "key {op} refused: its signature does not verify under any trusted key (sign with a \
         key whose public half is in this node's trusted_signing_keys)"
    )]
    BadSignature { op: String },
    #[error(
        "key {op} refused: issued {age}s ago, older than the {max_age}s allowed (issue it \
         again, or check this host's clock)"
    )]
    Stale { op: String, age: u64, max_age: u64 },
    #[error(
        "key {op} refused: issued {ahead}s in the future, more than the {skew}s allowed \
         (check the clocks of this host and of the operator)"
    )]
    FromFuture { op: String, ahead: u64, skew: u64 },
    #[error("key {op} refused: already applied once (replayed); issue it again to repeat it")]
    Replayed { op: String },
}

/// Checks key operations against the operator's keys and remembers those applied.
#[derive(Debug, Clone)]
pub struct KeyAuthority {
    policy: Policy,
    seen: SeenIds,
}

impl KeyAuthority {
    /// Under `policy` (the deploy events' trust, age and skew).
    pub fn new(policy: Policy) -> Self {
        KeyAuthority {
            policy,
            seen: SeenIds::new(SEEN_OPERATIONS),
        }
    }

    /// The operations applied, to persist.
    pub fn seen(&self) -> SeenSnapshot {
        self.seen.snapshot()
    }

    /// Takes back the operations applied before a restart.
    pub fn restore_seen(&mut self, snap: &SeenSnapshot) {
        self.seen.restore(snap);
    }

    /// Before the operator's keys are known: a `--dev` agent (`dev`) takes unsigned changes,
    /// any other none.
    pub fn without_keys(dev: bool) -> Self {
        Self::new(Policy {
            trusted: Trust::new(Vec::new(), dev),
            max_age: 0,
            max_skew: 0,
        })
    }

    /// Whether `op` on `key`, authorised by `auth`, may change the keyring at `now_ms`;
    /// an accepted operation is recorded and never accepted again.
    pub fn admit(
        &mut self,
        op: &str,
        key: Option<&str>,
        auth: Option<&KeyAuth>,
        now_ms: u64,
    ) -> Result<(), KeyAuthError> {
        let keys = match &self.policy.trusted {
            Trust::DevUnverified => return Ok(()),
            Trust::Keys(k) if k.is_empty() => {
                return Err(KeyAuthError::NoTrustedKeys { op: op.into() });
            }
            Trust::Keys(k) => k,
        };
        let auth = auth.ok_or_else(|| KeyAuthError::Unsigned { op: op.into() })?;
        let (id, sig) = decode(op, auth)?;
        let msg = signed_bytes(op, key, auth.issued_at_ms, &id);
        if !keys.iter().any(|k| k.verify(&msg, &sig).is_ok()) {
            return Err(KeyAuthError::BadSignature { op: op.into() });
        }
        self.check_time(op, auth.issued_at_ms, now_ms)?;
        if self.seen.is_replay(&id, auth.issued_at_ms) {
            return Err(KeyAuthError::Replayed { op: op.into() });
        }
        self.seen.insert(id, auth.issued_at_ms);
        Ok(())
    }

    fn check_time(&self, op: &str, issued_ms: u64, now_ms: u64) -> Result<(), KeyAuthError> {
        let op = op.to_owned();
        match self.policy.timing(issued_ms, now_ms / 1000) {
            Timing::InTime => Ok(()),
            Timing::Stale { age } => Err(KeyAuthError::Stale {
                op,
                age,
                max_age: self.policy.max_age,
            }),
            Timing::FromFuture { ahead } => Err(KeyAuthError::FromFuture {
                op,
                ahead,
                skew: self.policy.max_skew,
            }),
        }
    }
}

fn decode(op: &str, auth: &KeyAuth) -> Result<([u8; 16], Signature), KeyAuthError> {
    use base64::Engine as _;
    let bad = |reason: &str| KeyAuthError::Malformed {
        op: op.into(),
        reason: reason.into(),
    };
    let id: [u8; 16] = hex::decode(&auth.id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the id is not 32 hex digits"))?;
    let sig: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(&auth.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the signature is not 64 bytes of base64"))?;
    Ok((id, Signature::from_bytes(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keytext::generate_signing_key;

    const NOW: u64 = 1_800_000_000_000;

    fn authority(trusted: &SigningKey) -> KeyAuthority {
        KeyAuthority::new(Policy {
            trusted: Trust::Keys(vec![trusted.verifying_key()]),
            max_age: 3600,
            max_skew: 300,
        })
    }

    #[test]
    fn a_signed_operation_passes_once() {
        let op = generate_signing_key();
        let mut a = authority(&op);
        let auth = sign("install", Some("K"), &op, NOW);
        assert_eq!(a.admit("install", Some("K"), Some(&auth), NOW), Ok(()));
        assert!(matches!(
            a.admit("install", Some("K"), Some(&auth), NOW),
            Err(KeyAuthError::Replayed { .. })
        ));
    }

    /// The ids applied survive a restart (the state file keeps [`KeyAuthority::seen`]): a
    /// signed `use` of an old key, replayed after the node restarted, stays a replay.
    #[test]
    fn a_replay_stays_one_across_a_restart() {
        let op = generate_signing_key();
        let mut before = authority(&op);
        let auth = sign("use", Some("K"), &op, NOW);
        assert_eq!(before.admit("use", Some("K"), Some(&auth), NOW), Ok(()));
        let mut after = authority(&op);
        after.restore_seen(&before.seen());
        assert!(matches!(
            after.admit("use", Some("K"), Some(&auth), NOW + 1000),
            Err(KeyAuthError::Replayed { .. })
        ));
    }

    #[test]
    fn a_signature_covers_the_operation_and_the_key() {
        let op = generate_signing_key();
        let mut a = authority(&op);
        let auth = sign("install", Some("K"), &op, NOW);
        for (o, k) in [
            ("remove", Some("K")),
            ("install", Some("M")),
            ("list", None),
        ] {
            assert!(
                matches!(
                    a.admit(o, k, Some(&auth), NOW),
                    Err(KeyAuthError::BadSignature { .. })
                ),
                "{o} {k:?}"
            );
        }
    }

    #[test]
    fn unsigned_untrusted_old_and_future_operations_are_refused() {
        let (op, other) = (generate_signing_key(), generate_signing_key());
        let mut a = authority(&op);
        let err = |r: Result<(), KeyAuthError>| r.unwrap_err().to_string();
        assert!(err(a.admit("use", Some("K"), None, NOW)).contains("not signed"));
        let foreign = sign("use", Some("K"), &other, NOW);
        assert!(err(a.admit("use", Some("K"), Some(&foreign), NOW)).contains("does not verify"));
        let old = sign("use", Some("K"), &op, NOW - 3_601_000);
        assert!(err(a.admit("use", Some("K"), Some(&old), NOW)).contains("older than"));
        let ahead = sign("use", Some("K"), &op, NOW + 301_000);
        assert!(err(a.admit("use", Some("K"), Some(&ahead), NOW)).contains("in the future"));
        let mut garbled = sign("use", Some("K"), &op, NOW);
        garbled.signature = "!!".into();
        assert!(err(a.admit("use", Some("K"), Some(&garbled), NOW)).contains("malformed"));
        let none = KeyAuthority::without_keys(false).admit("use", Some("K"), None, NOW);
        assert!(err(none).contains("trusts none"));
    }

    #[test]
    fn a_dev_agent_without_keys_takes_unsigned_operations() {
        let mut a = KeyAuthority::without_keys(true);
        assert_eq!(a.admit("install", Some("K"), None, NOW), Ok(()));
    }
}
