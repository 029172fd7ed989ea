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
//! card names as the sender, for this receiver, at the time it says. The sender's clock
//! (milliseconds) is under the MAC: a packet older than the newest one seen from that
//! peer by more than [`REORDER_MS`], or further than [`MAX_SKEW_MS`] from this node's
//! clock, is a replay. (A recorded `Ack` for every probe number, played back after its
//! sender died, would otherwise keep it alive.)

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Bytes of MAC a packet carries.
pub const TAG_LEN: usize = 16;
/// Bytes of the sender's clock a packet carries, under the MAC.
pub const STAMP_LEN: usize = 8;
/// What the MAC and the stamp add to a datagram.
pub const AUTH_LEN: usize = TAG_LEN + STAMP_LEN;
/// How far behind the newest packet seen from a peer one may arrive (UDP reorders).
pub const REORDER_MS: u64 = 2_000;
/// How far a packet's stamp may be from this node's clock (the certificates' slack).
pub const MAX_SKEW_MS: u64 = 300_000;

/// A packet's MAC and the sender's clock when it made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    pub tag: [u8; TAG_LEN],
    pub sent_ms: u64,
}

/// What [`PairKeys::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Authentic,
    /// The MAC is not the peer's.
    Forged,
    /// The peer's, but older than what it sent since, or far from this clock.
    Replayed,
}

/// What this node knows of one peer key.
#[derive(Debug, Clone, Copy)]
struct Peer {
    key: Option<[u8; 32]>,
    newest_ms: u64,
}

/// Domain separation for the pair key.
const CONTEXT: &[u8] = b"droot-fleet foca packet key v1\0";

/// Pair keys kept at most (one per peer node key); past it the cache starts over.
const MAX_PEERS: usize = 16_384;

/// This node's half of every pair key, and the keys made so far.
pub struct PairKeys {
    secret: [u8; 32],
    public: [u8; 32],
    peers: HashMap<[u8; 32], Peer>,
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKeys")
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl PairKeys {
    /// For the node whose key is `own`.
    pub fn new(own: &SigningKey) -> Self {
        PairKeys {
            secret: own.to_scalar_bytes(),
            public: own.verifying_key().to_bytes(),
            peers: HashMap::new(),
        }
    }

    /// This node's state for the holder of `peer`, its pair key made on first use
    /// (`key: None` for a degenerate key whose exchange gives nothing secret).
    fn peer(&mut self, peer: &VerifyingKey) -> &mut Peer {
        let id = peer.to_bytes();
        if !self.peers.contains_key(&id) && self.peers.len() >= MAX_PEERS {
            self.peers.clear();
        }
        let (secret, public) = (self.secret, self.public);
        self.peers.entry(id).or_insert_with(|| Peer {
            key: pair_key(secret, public, peer),
            newest_ms: 0,
        })
    }

    /// The MAC and stamp of `packet` sent at `now_ms` to the holder of `peer`.
    pub fn seal(&mut self, peer: &VerifyingKey, packet: &[u8], now_ms: u64) -> Option<Auth> {
        let key = self.peer(peer).key?;
        let full = mac(&key, now_ms, packet)?.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Some(Auth {
            tag,
            sent_ms: now_ms,
        })
    }

    /// Whether `auth` proves that the holder of `peer` made `packet`, lately, for this node.
    pub fn open(&mut self, peer: &VerifyingKey, packet: &[u8], auth: &Auth, now_ms: u64) -> Opened {
        let state = self.peer(peer);
        let Some(key) = state.key else {
            return Opened::Forged;
        };
        let genuine = mac(&key, auth.sent_ms, packet)
            .is_some_and(|m| m.verify_truncated_left(&auth.tag).is_ok());
        if !genuine {
            return Opened::Forged;
        }
        let too_old = auth.sent_ms.saturating_add(REORDER_MS) < state.newest_ms;
        if too_old || auth.sent_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Opened::Replayed;
        }
        state.newest_ms = state.newest_ms.max(auth.sent_ms);
        Opened::Authentic
    }
}

/// The key shared by the holders of `secret` (whose public key is `public`) and `peer`.
fn pair_key(secret: [u8; 32], public: [u8; 32], peer: &VerifyingKey) -> Option<[u8; 32]> {
    let id = peer.to_bytes();
    let shared = peer.to_montgomery().mul_clamped(secret).to_bytes();
    if shared == [0; 32] {
        return None;
    }
    let (a, b) = if public <= id {
        (public, id)
    } else {
        (id, public)
    };
    Some(
        Sha256::new()
            .chain_update(CONTEXT)
            .chain_update(shared)
            .chain_update(a)
            .chain_update(b)
            .finalize()
            .into(),
    )
}

/// The HMAC of `sent_ms` and `packet` under `key`.
fn mac(key: &[u8; 32], sent_ms: u64, packet: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(&sent_ms.to_be_bytes());
    mac.update(packet);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn both_ends_share_a_key_no_third_has() {
        let (a, b, c) = (key(1), key(2), key(3));
        let (mut at_a, mut at_b, mut at_c) =
            (PairKeys::new(&a), PairKeys::new(&b), PairKeys::new(&c));
        let pkt = b"foca packet";
        let auth = at_a.seal(&b.verifying_key(), pkt, NOW).unwrap();
        let (ka, kc) = (a.verifying_key(), c.verifying_key());
        assert_eq!(at_b.open(&ka, pkt, &auth, NOW), Opened::Authentic);
        assert_eq!(at_b.open(&ka, b"foca packeT", &auth, NOW), Opened::Forged);
        assert_eq!(
            at_b.open(&kc, pkt, &auth, NOW),
            Opened::Forged,
            "another sender"
        );
        let later = Auth {
            sent_ms: NOW + 1,
            ..auth
        };
        assert_eq!(
            at_b.open(&ka, pkt, &later, NOW),
            Opened::Forged,
            "stamp under MAC"
        );
        // c holds a's public key and b's, not the secret of either.
        assert_eq!(at_c.open(&ka, pkt, &auth, NOW), Opened::Forged);
        let forged = at_c.seal(&b.verifying_key(), pkt, NOW).unwrap();
        assert_eq!(at_b.open(&ka, pkt, &forged, NOW), Opened::Forged);
    }

    /// A packet recorded and played back once its sender has moved on (or from far away
    /// in time) is a replay; one reordered by a little is not.
    #[test]
    fn old_packets_are_replays() {
        let (a, b) = (key(1), key(2));
        let (mut at_a, mut at_b) = (PairKeys::new(&a), PairKeys::new(&b));
        let (kb, ka) = (b.verifying_key(), a.verifying_key());
        let early = at_a.seal(&kb, b"ack 7", NOW).unwrap();
        let reordered = at_a.seal(&kb, b"ack 8", NOW + 1_000).unwrap();
        let late = at_a.seal(&kb, b"ack 9", NOW + 5_000).unwrap();
        assert_eq!(
            at_b.open(&ka, b"ack 9", &late, NOW + 5_000),
            Opened::Authentic
        );
        assert_eq!(
            at_b.open(&ka, b"ack 8", &reordered, NOW + 5_000),
            Opened::Replayed
        );
        let mut fresh = PairKeys::new(&b);
        assert_eq!(
            fresh.open(&ka, b"ack 7", &early, NOW + 301_000),
            Opened::Replayed
        );
        let mut at_b2 = PairKeys::new(&b);
        assert_eq!(
            at_b2.open(&ka, b"ack 8", &reordered, NOW + 1_500),
            Opened::Authentic
        );
        assert_eq!(
            at_b2.open(&ka, b"ack 7", &early, NOW + 1_500),
            Opened::Authentic
        );
    }

    #[test]
    fn a_degenerate_peer_key_gives_no_key() {
        // The identity point: its exchange with anything is all zeroes.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let mut at_a = PairKeys::new(&key(1));
        assert_eq!(at_a.seal(&weak, b"x", NOW), None);
        let auth = Auth {
            tag: [0; TAG_LEN],
            sent_ms: NOW,
        };
        assert_eq!(at_a.open(&weak, b"x", &auth, NOW), Opened::Forged);
    }
}
