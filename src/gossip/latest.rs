//! [`Latest`]: the newest item of every superseding slot, within bounds.
//!
//! It is what gossip delivers and what push/pull repairs, so it must stay bounded
//! whatever a key holder sends: every item fits one broadcast ([`MAX_ITEM_BYTES`]), the
//! items of all pools but the reserved ones (fleet kinds, bounded by their slot counts)
//! take at most [`MAX_BYTES`] together, and each pool (a registered kind, or the
//! shared pool of unknown kinds) has its own slot count and per-origin cap from
//! [`super::kinds::Limits`]. A full pool refuses new slots, never evicts old ones, so a
//! flood cannot push out a real slot, and it cannot take the room of another kind either.
//! Versions above the limit's clock bound are refused, so no slot can be pinned for good.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::kinds::{Limits, Pool};
use super::limits::MAX_BROADCAST_ITEM;
use super::supersede::Superseding;

/// Largest encoded item kept or relayed: one broadcast.
pub const MAX_ITEM_BYTES: usize = MAX_BROADCAST_ITEM;
/// Most bytes the items of pools that are not reserved may take together.
pub const MAX_BYTES: usize = 24 * 1024 * 1024;

/// What [`Latest::offer`] did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what was held: kept (deliver and relay it).
    Newer,
    /// Not newer than what is held: dropped.
    Stale,
    /// A new slot, but its pool, its origin's share or the byte budget is full: dropped.
    Full,
    /// Larger than one broadcast: dropped.
    TooLarge,
    /// A version further ahead of the clock than allowed: dropped.
    TooFarAhead,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    item: Superseding,
    pool: Pool,
    size: usize,
    /// Wall-clock time of the last update, and how long it lives after it.
    updated: Duration,
    ttl: Option<Duration>,
    /// Outside the shared byte budget ([`Limits::reserved`]).
    reserved: bool,
}

/// The newest item of every slot seen, within bounds. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latest {
    slots: BTreeMap<(String, String), Held>,
    per_pool: HashMap<Pool, usize>,
    per_origin: HashMap<(Pool, String), usize>,
    bytes: usize,
    /// The part of `bytes` in pools that are not reserved.
    shared: usize,
}

impl Latest {
    /// Keeps `item` if it is newer than its slot's current one and within `limits`;
    /// `now` is the wall clock (for expiry).
    pub fn offer(&mut self, item: &Superseding, limits: &Limits, now: Duration) -> Offer {
        let size = item.encoded_len();
        if size > MAX_ITEM_BYTES {
            return Offer::TooLarge;
        }
        if item.version > limits.max_version {
            return Offer::TooFarAhead;
        }
        let slot = (item.kind.clone(), item.key.clone());
        let freed = match self.slots.get(&slot) {
            Some(have) if have.item.version >= item.version => return Offer::Stale,
            Some(have) => have.size,
            None => {
                let taken = self.per_pool.get(&limits.pool).copied().unwrap_or(0);
                let origin = (limits.pool.clone(), item.origin.clone());
                let mine = self.per_origin.get(&origin).copied().unwrap_or(0);
                if taken >= limits.max_slots || mine >= limits.per_origin {
                    return Offer::Full;
                }
                0
            }
        };
        if !limits.reserved && self.shared - freed + size > MAX_BYTES {
            return Offer::Full;
        }
        self.remove(&slot);
        self.insert(slot, item.clone(), limits, size, now);
        Offer::Newer
    }

    /// The current item of a slot.
    pub fn get(&self, kind: &str, key: &str) -> Option<&Superseding> {
        self.slots
            .get(&(kind.to_owned(), key.to_owned()))
            .map(|h| &h.item)
    }

    /// Every current item (for push/pull).
    pub fn items(&self) -> impl Iterator<Item = &Superseding> {
        self.slots.values().map(|h| &h.item)
    }

    /// Number of slots held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held, counted as encoded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the slots for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Superseding) -> bool) {
        let gone: Vec<(String, String)> = self
            .slots
            .iter()
            .filter(|(_, h)| !keep(&h.item))
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in gone {
            self.remove(&slot);
        }
    }

    /// Drops the slots whose time to live ran out by wall-clock `now`.
    pub fn expire(&mut self, now: Duration) {
        let gone: Vec<(String, String)> = self
            .slots
            .iter()
            .filter(|(_, h)| h.ttl.is_some_and(|ttl| h.updated.saturating_add(ttl) < now))
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in gone {
            self.remove(&slot);
        }
    }

    fn insert(
        &mut self,
        slot: (String, String),
        item: Superseding,
        limits: &Limits,
        size: usize,
        now: Duration,
    ) {
        *self.per_pool.entry(limits.pool.clone()).or_default() += 1;
        *self
            .per_origin
            .entry((limits.pool.clone(), item.origin.clone()))
            .or_default() += 1;
        self.bytes += size;
        if !limits.reserved {
            self.shared += size;
        }
        let held = Held {
            item,
            pool: limits.pool.clone(),
            size,
            updated: now,
            ttl: limits.ttl,
            reserved: limits.reserved,
        };
        self.slots.insert(slot, held);
    }

    fn remove(&mut self, slot: &(String, String)) {
        let Some(held) = self.slots.remove(slot) else {
            return;
        };
        self.bytes -= held.size;
        if !held.reserved {
            self.shared -= held.size;
        }
        decrement(&mut self.per_pool, &held.pool);
        decrement(&mut self.per_origin, &(held.pool, held.item.origin));
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::kinds::{KindPolicy, Kinds, UNKNOWN_PER_ORIGIN, UNKNOWN_SLOTS, UNKNOWN_TTL};

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn item(kind: &str, key: &str, origin: &str, version: u64) -> Superseding {
        Superseding {
            kind: kind.into(),
            key: key.into(),
            version,
            origin: origin.into(),
            body: vec![],
            sig: None,
        }
    }

    fn kinds() -> Kinds {
        let mut k = Kinds::default();
        k.register("outcome", KindPolicy::node(2));
        k
    }

    fn offer(l: &mut Latest, i: &Superseding) -> Offer {
        l.offer(i, &kinds().limits(&i.kind, NOW), NOW)
    }

    #[test]
    fn newer_versions_win_per_slot() {
        let mut l = Latest::default();
        assert_eq!(offer(&mut l, &item("d", "web", "n1", 42)), Offer::Newer);
        assert_eq!(offer(&mut l, &item("d", "web", "n1", 42)), Offer::Stale);
        assert_eq!(offer(&mut l, &item("d", "web", "n1", 41)), Offer::Stale);
        assert_eq!(offer(&mut l, &item("d", "db", "n1", 1)), Offer::Newer);
        assert_eq!(offer(&mut l, &item("d", "web", "n2", 43)), Offer::Newer);
        assert_eq!(l.get("d", "web").unwrap().version, 43);
        assert_eq!(l.len(), 2);
    }

    /// Issue 15: 16,400 junk slots of one kind filled the one global table, and real
    /// outcomes were refused. Now a flood of unknown kinds fills only its own pool.
    #[test]
    fn a_flood_of_unknown_kinds_leaves_room_for_registered_ones() {
        let mut l = Latest::default();
        let mut kept = 0;
        for origin in 0..(UNKNOWN_SLOTS / UNKNOWN_PER_ORIGIN + 10) {
            for k in 0..UNKNOWN_PER_ORIGIN + 5 {
                let junk = item("junk", &format!("{origin}-{k}"), &format!("o{origin}"), 1);
                if offer(&mut l, &junk) == Offer::Newer {
                    kept += 1;
                }
            }
        }
        assert_eq!(kept, UNKNOWN_SLOTS);
        assert_eq!(
            offer(&mut l, &item("outcome", "web@a", "a", 1)),
            Offer::Newer
        );
        assert_eq!(
            offer(&mut l, &item("junk", "0-0", "o0", 2)),
            Offer::Newer,
            "known slots still move"
        );
    }

    #[test]
    fn one_origin_holds_at_most_its_share_of_a_node_kind() {
        let mut l = Latest::default();
        assert_eq!(offer(&mut l, &item("outcome", "a@x", "x", 1)), Offer::Newer);
        assert_eq!(offer(&mut l, &item("outcome", "b@x", "x", 1)), Offer::Newer);
        assert_eq!(offer(&mut l, &item("outcome", "c@x", "x", 1)), Offer::Full);
        assert_eq!(offer(&mut l, &item("outcome", "c@y", "y", 1)), Offer::Newer);
        l.retain(|i| i.key != "a@x");
        assert_eq!(offer(&mut l, &item("outcome", "c@x", "x", 1)), Offer::Newer);
    }

    /// Issue 15: versions near `u64::MAX` pinned slots for good.
    #[test]
    fn versions_far_ahead_of_the_clock_are_refused() {
        let mut l = Latest::default();
        assert_eq!(
            offer(&mut l, &item("outcome", "a@x", "x", u64::MAX - 1)),
            Offer::TooFarAhead
        );
        let now_ms = NOW.as_millis() as u64;
        assert_eq!(
            offer(&mut l, &item("outcome", "a@x", "x", now_ms)),
            Offer::Newer
        );
    }

    /// Issue 15: two 7.5 MiB slots pushed a node's state past the frame limit.
    #[test]
    fn oversized_items_are_refused_and_bytes_are_counted() {
        let mut l = Latest::default();
        let mut big = item("d", "web", "n", 1);
        big.body = vec![0; MAX_ITEM_BYTES];
        assert_eq!(offer(&mut l, &big), Offer::TooLarge);
        big.body.truncate(MAX_ITEM_BYTES - 64);
        assert_eq!(offer(&mut l, &big), Offer::Newer);
        assert_eq!(l.bytes(), big.encoded_len());
        l.retain(|_| false);
        assert_eq!((l.bytes(), l.len()), (0, 0));
        assert!(l.per_pool.is_empty() && l.per_origin.is_empty());
    }

    /// Beyond issue 15's list: with identities off or in transition, node kinds take as
    /// many origins as a key holder makes up, and their bytes filled the one budget all
    /// kinds shared: a new desired state or a revocation was then refused. Fleet kinds
    /// are outside that budget.
    #[test]
    fn node_kinds_under_many_origins_leave_room_for_fleet_kinds() {
        let mut k = kinds();
        k.register("fleet", KindPolicy::fleet(8, std::sync::Arc::new(|_| true)));
        let mut l = Latest::default();
        let mut full = false;
        for origin in 0.. {
            for key in 0..2 {
                let mut junk = item(
                    "outcome",
                    &format!("{key}@{origin}"),
                    &format!("o{origin}"),
                    1,
                );
                junk.body = vec![0; MAX_ITEM_BYTES - 100];
                full |= l.offer(&junk, &k.limits("outcome", NOW), NOW) == Offer::Full;
            }
            if full {
                break;
            }
        }
        assert!(l.bytes() > MAX_BYTES - MAX_ITEM_BYTES, "{}", l.bytes());
        let desired = item("fleet", "web", "n1", 1);
        assert_eq!(
            l.offer(&desired, &k.limits("fleet", NOW), NOW),
            Offer::Newer
        );
        l.retain(|i| i.kind != "fleet");
        assert_eq!(l.shared, l.bytes());
    }

    #[test]
    fn unknown_kinds_expire_after_their_last_update() {
        let mut l = Latest::default();
        offer(&mut l, &item("junk", "a", "n", 1));
        offer(&mut l, &item("outcome", "a@n", "n", 1));
        l.expire(NOW + UNKNOWN_TTL);
        assert_eq!(l.len(), 2);
        l.expire(NOW + UNKNOWN_TTL + Duration::from_secs(1));
        assert!(l.get("junk", "a").is_none());
        assert!(
            l.get("outcome", "a@n").is_some(),
            "registered kinds do not expire"
        );
    }
}
