//! Who sent a foca packet: a short MAC under a key only its sender and its receiver can
//! compute, from their node keys.
//!
//! Why: a sealed datagram proves only that its sender holds the gossip key, and the UDP
//! source address only that it could write that address (root on any host of the network
//! can forge it). A holder of the gossip key could then speak in a member's name about
//! liveness: keep a dead member alive by refuting its suspicions in its name. A signature
//! per packet would cost 64 bytes of a datagram that is already full and a verification
//! each; instead each pair of enrolled members shares a key, from an X25519 exchange of
//! their Ed25519 node keys (the same keys, in their Montgomery form), and a packet carries
//! the first 16 bytes of an HMAC-SHA256 of it under that key. A key is computed once per
//! peer key and kept (bounded); a check is a hash.
//!
//! What it proves: the packet was made by the holder of the node key of the member its
//! card names as the sender, for this receiver. A replayed packet says what its sender said
//! then, at the incarnation it had then: it refutes nothing newer.

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Bytes of MAC a packet carries.
pub const TAG_LEN: usize = 16;

/// Domain separation for the pair key.
const CONTEXT: &[u8] = b"droot-fleet foca packet key v1\0";

/// Pair keys kept at most (one per peer node key); past it the cache starts over.
const MAX_PEERS: usize = 16_384;

/// This node's half of every pair key, and the keys made so far.
pub struct PairKeys {
    secret: [u8; 32],
    public: [u8; 32],
    keys: HashMap<[u8; 32], Option<[u8; 32]>>,
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKeys")
            .field("peers", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl PairKeys {
    /// For the node whose key is `own`.
    pub fn new(own: &SigningKey) -> Self {
        PairKeys {
            secret: own.to_scalar_bytes(),
            public: own.verifying_key().to_bytes(),
            keys: HashMap::new(),
        }
    }

    /// The key this node shares with the holder of `peer` (`None` for a degenerate key
    /// whose exchange gives nothing secret).
    fn key(&mut self, peer: &VerifyingKey) -> Option<[u8; 32]> {
        let id = peer.to_bytes();
        if let Some(k) = self.keys.get(&id) {
            return *k;
        }
        if self.keys.len() >= MAX_PEERS {
            self.keys.clear();
        }
        let shared = peer.to_montgomery().mul_clamped(self.secret).to_bytes();
        let key = (shared != [0; 32]).then(|| {
            let (a, b) = if self.public <= id {
                (self.public, id)
            } else {
                (id, self.public)
            };
            Sha256::new()
                .chain_update(CONTEXT)
                .chain_update(shared)
                .chain_update(a)
                .chain_update(b)
                .finalize()
                .into()
        });
        self.keys.insert(id, key);
        key
    }

    /// The tag of `packet` sent to (or received from) the holder of `peer`.
    pub fn tag(&mut self, peer: &VerifyingKey, packet: &[u8]) -> Option<[u8; TAG_LEN]> {
        let mac = self.mac(peer, packet)?;
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Some(tag)
    }

    /// Whether `tag` is `packet`'s under the key shared with `peer` (constant time).
    pub fn verify(&mut self, peer: &VerifyingKey, packet: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        self.mac(peer, packet)
            .is_some_and(|mac| mac.verify_truncated_left(tag).is_ok())
    }

    fn mac(&mut self, peer: &VerifyingKey, packet: &[u8]) -> Option<Hmac<Sha256>> {
        let key = self.key(peer)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
        mac.update(packet);
        Some(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn both_ends_share_a_key_no_third_has() {
        let (a, b, c) = (key(1), key(2), key(3));
        let (mut at_a, mut at_b, mut at_c) =
            (PairKeys::new(&a), PairKeys::new(&b), PairKeys::new(&c));
        let pkt = b"foca packet";
        let tag = at_a.tag(&b.verifying_key(), pkt).unwrap();
        assert!(at_b.verify(&a.verifying_key(), pkt, &tag));
        assert!(
            !at_b.verify(&a.verifying_key(), b"foca packeT", &tag),
            "tampered"
        );
        assert!(
            !at_b.verify(&c.verifying_key(), pkt, &tag),
            "another sender"
        );
        // c holds a's public key and b's, not the secret of either.
        assert!(!at_c.verify(&a.verifying_key(), pkt, &tag));
        let forged = at_c.tag(&b.verifying_key(), pkt).unwrap();
        assert!(!at_b.verify(&a.verifying_key(), pkt, &forged));
    }

    #[test]
    fn a_degenerate_peer_key_gives_no_key() {
        // The identity point: its exchange with anything is all zeroes.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let mut at_a = PairKeys::new(&key(1));
        assert_eq!(at_a.tag(&weak, b"x"), None);
        assert!(!at_a.verify(&weak, b"x", &[0; TAG_LEN]));
    }
}
