//! Broadcasts that supersede older ones, and the relaying of kinds a node does not know.
//!
//! A [`Superseding`] item names a `(kind, key)` slot and a `version`: a newer version
//! replaces an older one for the same slot, both in foca's dissemination queue (its
//! [`super::handler::BroadcastKey`] invalidates the older key, so a queued "web v42"
//! is dropped when "web v43" arrives) and in [`super::latest::Latest`], which refuses
//! anything not newer than what it holds. Every node understands the envelope, so a
//! node relays and keeps kinds it has no use for (the deploy controller's
//! `deploy-desired` on an old agent, say); the shell just ignores unknown kinds.
//!
//! [`super::latest::Latest`] is also what push/pull repairs (as a [`super::pushpull`]
//! extension): a node that missed an item gets the newest version of every slot at its
//! next exchange. What each kind may hold is [`super::kinds`]'s business.
//!
//! [`SeenBytes`] covers broadcast *tags* this build does not know at all (a newer
//! peer's new message type): they are relayed once each, deduplicated by a keyed hash
//! of their bytes over a bounded window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use serde::{Deserialize, Serialize};

/// Longest `kind` or `key`, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// How many unknown broadcast items are remembered for dedupe.
pub const SEEN_WINDOW: usize = 4096;

/// A broadcast whose newer `version` replaces older ones of the same `(kind, key)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseding {
    /// What this is about, e.g. `deploy-desired` or [`TAGS_KIND`].
    pub kind: String,
    /// Which one, e.g. the app name or the node name.
    pub key: String,
    /// Higher replaces lower.
    pub version: u64,
    /// Node that issued it.
    pub origin: String,
    /// Kind-specific body.
    pub body: Vec<u8>,
    /// The origin's node-key signature over the fields above ([`super::vouch`]); not
    /// part of the unsigned wire form, which older agents read.
    #[serde(skip)]
    pub sig: Option<[u8; 64]>,
}

/// Largest postcard encoding of a node's tags: the announcement (with its kind, name,
/// version and origin) must fit one broadcast item.
pub const MAX_TAGS_ENCODED: usize = super::limits::MAX_BROADCAST_ITEM - 256;

/// The kind under which a node announces its own tags (key: its name, body: postcard
/// of its [`super::query::Tags`]).
pub const TAGS_KIND: &str = "droot.tags";

/// Why a [`Superseding`] item is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupersedeError {
    /// Empty or over-long kind/key.
    #[error("superseding {what} is {len} bytes; it must be 1..={MAX_NAME_LEN} bytes")]
    BadName { what: &'static str, len: usize },
}

impl Superseding {
    /// Its length as a broadcast item (tag byte and postcard body).
    pub fn encoded_len(&self) -> usize {
        let field = |len: usize| varint_len(len as u64) + len;
        let sig = self.sig.map_or(0, |s| field(s.len()));
        1 + field(self.kind.len())
            + field(self.key.len())
            + varint_len(self.version)
            + field(self.origin.len())
            + field(self.body.len())
            + sig
    }

    /// Checks the names' lengths.
    pub fn validate(&self) -> Result<(), SupersedeError> {
        for (what, s) in [("kind", &self.kind), ("key", &self.key)] {
            if s.is_empty() || s.len() > MAX_NAME_LEN {
                return Err(SupersedeError::BadName { what, len: s.len() });
            }
        }
        Ok(())
    }
}

/// An item with its signature, as a version-3 push/pull carries it.
#[derive(Serialize, Deserialize)]
struct ItemWire {
    item: Superseding,
    sig: Option<Vec<u8>>,
}

/// The slots of a push/pull state: with their signatures (`signed`, version 3), or in
/// the unsigned form a version-2 reader takes.
pub fn encode_items(items: &[&Superseding], signed: bool) -> Vec<u8> {
    if !signed {
        return postcard::to_stdvec(items).unwrap_or_default();
    }
    let wire: Vec<ItemWire> = items
        .iter()
        .map(|i| ItemWire {
            item: (*i).clone(),
            sig: i.sig.map(|s| s.to_vec()),
        })
        .collect();
    postcard::to_stdvec(&wire).unwrap_or_default()
}

/// Reads [`encode_items`]'s form. An item with a signature of the wrong length keeps
/// none (and will fail its identity checks).
pub fn decode_items(bytes: &[u8], signed: bool) -> Result<Vec<Superseding>, postcard::Error> {
    if !signed {
        return postcard::from_bytes(bytes);
    }
    let wire: Vec<ItemWire> = postcard::from_bytes(bytes)?;
    Ok(wire
        .into_iter()
        .map(|w| Superseding {
            sig: w.sig.and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok()),
            ..w.item
        })
        .collect())
}

/// Bytes of postcard's varint encoding of `n`.
fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Keyed hashes of recently relayed unknown broadcast items. See the module docs.
#[derive(Debug, Default)]
pub struct SeenBytes {
    hasher: RandomState,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl SeenBytes {
    /// True the first time these bytes are seen (within the window).
    pub fn first_time(&mut self, bytes: &[u8]) -> bool {
        let h = self.hash(bytes);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > SEEN_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// The keyed hash used for these bytes (also the broadcast key).
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    /// The keyed hash of a `(kind, key)` slot.
    pub fn slot_hash(&self, kind: &str, key: &str) -> u64 {
        self.hasher.hash_one((kind, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, version: u64) -> Superseding {
        Superseding {
            kind: "deploy-desired".into(),
            key: key.into(),
            version,
            origin: "n1".into(),
            body: vec![],
            sig: None,
        }
    }

    #[test]
    fn encoded_len_is_the_broadcast_length() {
        use crate::gossip::message::{Broadcast, encode_broadcast};
        for (version, body) in [(0, 0), (1, 1), (127, 127), (128, 128), (u64::MAX, 300)] {
            let mut i = item("web", version);
            i.body = vec![7; body];
            i.sig = (body % 2 == 1).then_some([3; 64]);
            let bytes = encode_broadcast(&Broadcast::Superseding(i.clone())).unwrap();
            assert_eq!(
                i.encoded_len(),
                bytes.len(),
                "version {version}, body {body}"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(item("web", 1).validate().is_ok());
        assert!(item("", 1).validate().is_err());
        assert!(item(&"k".repeat(MAX_NAME_LEN + 1), 1).validate().is_err());
    }

    #[test]
    fn unknown_bytes_seen_once_within_the_window() {
        let mut s = SeenBytes::default();
        assert!(s.first_time(b"a"));
        assert!(!s.first_time(b"a"));
        for i in 0..SEEN_WINDOW as u32 {
            s.first_time(&i.to_be_bytes());
        }
        assert!(s.first_time(b"a"), "forgotten after the window");
        assert!(s.set.len() <= SEEN_WINDOW);
    }
}
