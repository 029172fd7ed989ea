//! The cluster-wide key operations as each node applies them, without I/O.
//!
//! Like `serf keys`, `install`/`use`/`remove`/`list` run on *every* member through an
//! internal query named [`KEYS_QUERY`] whose payload is a JSON [`KeyCommand`]; each
//! node answers a JSON [`NodeKeyResult`] ([`apply`]). Rotation is: install the new key
//! everywhere, use it everywhere, remove the old one everywhere. The origin's side
//! (building the payload, counting the answers) is [`super::keys`]; persisting a
//! changed keyring is [`crate::agent::keys`]'s.

use serde::{Deserialize, Serialize};

use crate::agent::key_auth::{KeyAuth, KeyAuthority};
use crate::gossip::keyring::KeyringError;
use crate::gossip::{Key, Keyring};
use crate::wire::NodeKeyResult;

/// Name of the internal key query.
pub const KEYS_QUERY: &str = "_droot-fleet-keys";

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
    use crate::agent::keys::insecure_keyring;

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
            let auth = crate::agent::key_auth::sign(op, Some(&new), &operator, NOW);
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
    }
}
