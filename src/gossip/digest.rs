//! Digest-first anti-entropy: a periodic push/pull that costs what differs, not what is
//! held.
//!
//! A full push/pull state carries every member and every slot, so its bytes grow with
//! the fleet even when nothing changed: at thousands of nodes that is most of an idle
//! agent's traffic. Instead, the dialer of a periodic exchange sends a [`Digest`]: its
//! members and slots hashed into buckets (by name), plus one hash of its recent events.
//! The peer compares it with its own and answers with only the entries of the buckets
//! that differ (nothing at all when both sides agree); with `answer_back`, a peer that
//! found differences starts the same exchange the other way, so what only the dialer
//! held reaches it too. Views that agree cost one digest and a near-empty answer.
//!
//! Hashes are FNV-1a over each entry's stable fields, mixed and summed per bucket: the
//! sum does not depend on order, and a hash of the wrong thing only means a bucket is
//! sent when it did not need to be, or repaired by the next exchange's other peer. The
//! digest's size scales with the fleet ([`buckets_for`]) and is bounded ([`MAX_BUCKETS`]).

use serde::{Deserialize, Serialize};

use super::event::UserEvent;
use super::identity::NodeId;
use super::pushpull::PushPullState;
use super::supersede::Superseding;
use super::versioned::ext;

/// Fewest buckets a digest has.
pub const MIN_BUCKETS: usize = 16;
/// Most buckets a digest may have (8 KiB of hashes); a digest claiming more is refused.
pub const MAX_BUCKETS: usize = 1024;

/// One side's view, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// One sum per bucket of members and slots.
    pub buckets: Vec<u64>,
    /// The recent events' hash.
    pub events: u64,
    /// The receiver, finding differences, should run the exchange the other way too.
    pub answer_back: bool,
}

/// Why a digest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("push/pull digest does not decode: {0}")]
    Malformed(String),
    #[error(
        "push/pull digest has {0} buckets; a power of two from {MIN_BUCKETS} to {MAX_BUCKETS} is expected"
    )]
    Buckets(usize),
}

/// Buckets for a fleet of `members`: about eight members per bucket, a power of two
/// within [`MIN_BUCKETS`]..=[`MAX_BUCKETS`].
pub fn buckets_for(members: usize) -> usize {
    (members / 8)
        .next_power_of_two()
        .clamp(MIN_BUCKETS, MAX_BUCKETS)
}

/// FNV-1a over `parts`, each ended by a 0xff byte (so `("ab", "c")` and `("a", "bc")`
/// differ), finished with a 64-bit mix so that sums of hashes spread over all bits.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // splitmix64's finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The bucket a name falls in (`buckets`: a power of two).
fn bucket_of(name: &str, buckets: usize) -> usize {
    (hash(&[name.as_bytes()]) as usize) & (buckets - 1)
}

fn state_byte(s: foca::State) -> u8 {
    match s {
        foca::State::Alive => 0,
        foca::State::Suspect => 1,
        foca::State::Down => 2,
    }
}

/// Which bucket a member is in.
pub fn member_bucket(m: &foca::Member<NodeId>, buckets: usize) -> usize {
    bucket_of(&m.id().name, buckets)
}

/// Which bucket a slot is in (by its key within its kind).
pub fn item_bucket(i: &Superseding, buckets: usize) -> usize {
    bucket_of(&format!("{}/{}", i.kind, i.key), buckets)
}

fn member_hash(m: &foca::Member<NodeId>) -> u64 {
    let id = m.id();
    hash(&[
        b"m",
        id.name.as_bytes(),
        id.addr.to_string().as_bytes(),
        &id.bump.to_be_bytes(),
        &m.incarnation().to_be_bytes(),
        &[state_byte(m.state())],
    ])
}

fn item_hash(i: &Superseding) -> u64 {
    hash(&[
        b"s",
        i.kind.as_bytes(),
        i.key.as_bytes(),
        i.origin.as_bytes(),
        &i.version.to_be_bytes(),
    ])
}

/// The digest a push/pull state asks with, if it is a digest request: `None` for a full
/// state (every version's), an error for a digest that cannot be used (answer in full).
pub fn requested(state: &PushPullState) -> Option<Result<Digest, DigestError>> {
    let e = state.extensions.iter().find(|e| e.tag == ext::DIGEST)?;
    Some(Digest::decode(&e.bytes))
}

impl Digest {
    /// The digest of a view in `buckets` buckets (a power of two).
    pub fn of<'a>(
        members: impl IntoIterator<Item = &'a foca::Member<NodeId>>,
        items: impl IntoIterator<Item = &'a Superseding>,
        events: impl IntoIterator<Item = &'a UserEvent>,
        buckets: usize,
    ) -> Digest {
        let mut sums = vec![0u64; buckets];
        for m in members {
            let b = member_bucket(m, buckets);
            sums[b] = sums[b].wrapping_add(member_hash(m));
        }
        for i in items {
            let b = item_bucket(i, buckets);
            sums[b] = sums[b].wrapping_add(item_hash(i));
        }
        let events = (events.into_iter())
            .map(|e| hash(&[b"e", &e.id.0.to_be_bytes()]))
            .fold(0u64, u64::wrapping_add);
        Digest {
            buckets: sums,
            events,
            answer_back: false,
        }
    }

    /// Where `theirs` differs from this digest (of the same bucket count).
    pub fn differing(&self, theirs: &Digest) -> Differing {
        Differing {
            buckets: (self.buckets.iter().zip(&theirs.buckets))
                .map(|(a, b)| a != b)
                .collect(),
            events: self.events != theirs.events,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a digest encodes")
    }

    /// Decodes a peer's digest, refusing a bucket count this side would not make.
    pub fn decode(bytes: &[u8]) -> Result<Digest, DigestError> {
        let d: Digest =
            postcard::from_bytes(bytes).map_err(|e| DigestError::Malformed(e.to_string()))?;
        let n = d.buckets.len();
        if !n.is_power_of_two() || !(MIN_BUCKETS..=MAX_BUCKETS).contains(&n) {
            return Err(DigestError::Buckets(n));
        }
        Ok(d)
    }
}

/// Which parts of two views differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Differing {
    buckets: Vec<bool>,
    /// The recent events differ.
    pub events: bool,
}

impl Differing {
    /// Whether anything differs.
    pub fn any(&self) -> bool {
        self.events || self.buckets.iter().any(|&b| b)
    }

    /// How many member-and-slot buckets differ.
    pub fn buckets(&self) -> usize {
        self.buckets.iter().filter(|&&b| b).count()
    }

    pub fn holds_member(&self, m: &foca::Member<NodeId>) -> bool {
        self.buckets[member_bucket(m, self.buckets.len())]
    }

    pub fn holds_item(&self, i: &Superseding) -> bool {
        self.buckets[item_bucket(i, self.buckets.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::event::EventId;

    fn member(name: &str, incarnation: u16) -> foca::Member<NodeId> {
        let addr = "10.0.0.1:7946".parse().unwrap();
        let id = NodeId::new(name.to_owned(), addr, 0).unwrap();
        foca::Member::new(id, incarnation, foca::State::Alive)
    }

    fn item(key: &str, version: u64) -> Superseding {
        Superseding {
            kind: "deploy.apps".into(),
            key: key.into(),
            version,
            origin: key.into(),
            body: b"web".to_vec(),
            sig: None,
        }
    }

    fn event(id: u128) -> UserEvent {
        UserEvent {
            id: EventId(id),
            origin: "n1".into(),
            ltime: 1,
            name: "e".into(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn the_same_view_in_any_order_has_the_same_digest() {
        let ms: Vec<_> = (0..50).map(|i| member(&format!("n{i}"), 1)).collect();
        let is: Vec<_> = (0..50).map(|i| item(&format!("n{i}"), 3)).collect();
        let es = [event(1), event(2)];
        let a = Digest::of(&ms, &is, &es, 16);
        let b = Digest::of(ms.iter().rev(), is.iter().rev(), es.iter().rev(), 16);
        assert_eq!(a, b);
        assert!(!a.differing(&b).any());
    }

    #[test]
    fn one_changed_entry_differs_in_its_bucket_only() {
        let ms: Vec<_> = (0..50).map(|i| member(&format!("n{i}"), 1)).collect();
        let mut ms2 = ms.clone();
        ms2[7] = member("n7", 2);
        let is: Vec<_> = (0..50).map(|i| item(&format!("n{i}"), 3)).collect();
        let mut is2 = is.clone();
        is2[9].version = 4;
        let a = Digest::of(&ms, &is, [], 64);
        let b = Digest::of(&ms2, &is2, [], 64);
        let d = a.differing(&b);
        assert!(d.any() && !d.events);
        assert!(d.holds_member(&ms[7]) && d.holds_item(&is[9]));
        assert!(d.buckets() <= 2, "{} buckets differ", d.buckets());
        let unrelated = ms.iter().filter(|m| d.holds_member(m)).count();
        assert!(unrelated < 10, "{unrelated} members would be sent");
        let e = Digest::of(&ms, &is, [&event(5)], 64);
        assert!(a.differing(&e).events);
    }

    #[test]
    fn bucket_counts_scale_with_the_fleet_and_are_bounded() {
        assert_eq!(buckets_for(3), MIN_BUCKETS);
        assert_eq!(buckets_for(1000), 128);
        assert_eq!(buckets_for(10_000), 1024);
        assert_eq!(buckets_for(1_000_000), MAX_BUCKETS);
    }

    #[test]
    fn a_digest_with_a_bad_bucket_count_is_refused() {
        for n in [0, 3, 8, 2048] {
            let d = Digest {
                buckets: vec![0; n],
                events: 0,
                answer_back: false,
            };
            assert_eq!(Digest::decode(&d.encode()), Err(DigestError::Buckets(n)));
        }
        assert!(matches!(
            Digest::decode(b"\xff\xff\xff"),
            Err(DigestError::Malformed(_))
        ));
        let ok = Digest::of([], [], [], 32);
        assert_eq!(Digest::decode(&ok.encode()), Ok(ok));
    }
}
