//! What each kind of superseding slot may hold, and who may speak for it.
//!
//! Every [`Superseding`] item names a kind. Left alone, one key holder could fill every
//! slot with junk of a kind nobody checks and crowd out the slots a rollout waits on, or
//! pin a slot with a version near `u64::MAX` that no real item can outrank. So each kind
//! has a [`KindPolicy`]:
//!
//! - its [`Owner`]: [`Owner::Node`] slots describe their origin node (its tags, app list,
//!   outcomes, member announcement). Only that node speaks for them: a remote item about
//!   this node is never taken over its own, and with node identities the item must carry
//!   the origin's signature. They are forgotten with the node. [`Owner::Fleet`] slots
//!   describe the fleet (an app's desired state, a revocation): their check (a fleet
//!   key's signature) is their authority;
//! - how many slots the kind may hold in all ([`KindPolicy::max_slots`]) and per origin
//!   ([`KindPolicy::per_origin`]), so each kind has room of its own that no other kind
//!   can take; a fleet kind's bytes are also outside the byte budget the other kinds share
//!   ([`Limits::reserved`]), since node kinds take as many origins as a key holder makes up
//!   while identities are off or in transition;
//! - the check an item must pass before it is kept, delivered or relayed.
//!
//! Kinds this build does not know (a newer release's) are still relayed and kept, in one
//! small shared pool ([`UNKNOWN_SLOTS`], [`UNKNOWN_PER_ORIGIN`] per origin), and forgotten
//! [`UNKNOWN_TTL`] after their last update. With node identities their items too must carry
//! their origin's signature (every node signs what it publishes), so an origin's share is
//! one enrolled node's, not any name a key holder makes up.
//!
//! Versions are bounded by the wall clock: a node kind's version is milliseconds since the
//! UNIX epoch, a fleet kind's is milliseconds shifted left by 16 (two low bytes tell apart
//! items of the same millisecond). Either may be at most [`MAX_VERSION_SKEW`] ahead of the
//! receiver's clock. An unknown kind is held to the looser of the two.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::supersede::Superseding;

/// A check an item of one kind must pass (e.g. the deploy pipeline's desired state must
/// carry a trusted signature). A refused item is neither kept, nor delivered, nor relayed.
pub type Validator = Arc<dyn Fn(&Superseding) -> bool + Send + Sync>;

/// How far ahead of the receiver's clock a slot version may be.
pub const MAX_VERSION_SKEW: Duration = Duration::from_secs(600);
/// Most members whose node-owned slots a node keeps room for.
pub const MAX_NODES: usize = 16_384;
/// Most slots of kinds this build does not know, together.
pub const UNKNOWN_SLOTS: usize = 1024;
/// Most slots of unknown kinds one origin may hold.
pub const UNKNOWN_PER_ORIGIN: usize = 32;
/// How long a slot of an unknown kind is kept after its last update.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(3600);

/// Who speaks for a kind's slots (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Slots describe their origin node.
    Node,
    /// Slots describe the fleet; the kind's check is their authority.
    Fleet,
}

/// What one kind may hold (see the module docs).
#[derive(Clone)]
pub struct KindPolicy {
    /// Who speaks for the slots.
    pub owner: Owner,
    /// Most slots of this kind.
    pub max_slots: usize,
    /// Most slots of this kind one origin may hold ([`Owner::Node`] kinds).
    pub per_origin: usize,
    /// The check every item must pass.
    pub check: Option<Validator>,
}

impl std::fmt::Debug for KindPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindPolicy")
            .field("owner", &self.owner)
            .field("max_slots", &self.max_slots)
            .field("per_origin", &self.per_origin)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl KindPolicy {
    /// Slots about their origin node, at most `per_origin` of them per node.
    pub fn node(per_origin: usize) -> Self {
        Self {
            owner: Owner::Node,
            max_slots: per_origin.saturating_mul(MAX_NODES),
            per_origin,
            check: None,
        }
    }

    /// Slots about the fleet, at most `max_slots` of them, each passing `check`.
    pub fn fleet(max_slots: usize, check: Validator) -> Self {
        Self {
            owner: Owner::Fleet,
            max_slots,
            per_origin: max_slots,
            check: Some(check),
        }
    }

    /// The same policy, with items checked by `check`.
    pub fn checked(mut self, check: Validator) -> Self {
        self.check = Some(check);
        self
    }
}

/// Where a slot's room is counted: its registered kind, or the shared unknown pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pool {
    /// A registered kind.
    Kind(String),
    /// Every kind this build does not know.
    Unknown,
}

/// The bounds the store applies to one item ([`Kinds::limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Where the slot's room is counted.
    pub pool: Pool,
    /// Most slots in the pool.
    pub max_slots: usize,
    /// Most slots one origin may hold in the pool.
    pub per_origin: usize,
    /// Highest version accepted now.
    pub max_version: u64,
    /// Forgotten this long after the last update, if set.
    pub ttl: Option<Duration>,
    /// Counted against the fleet kinds' byte budget (see [`super::latest`]).
    pub fleet: bool,
}

/// The registered kinds (see the module docs).
#[derive(Clone, Default, Debug)]
pub struct Kinds {
    policies: BTreeMap<String, KindPolicy>,
}

impl Kinds {
    /// Registers (or replaces) the policy of `kind`.
    pub fn register(&mut self, kind: &str, policy: KindPolicy) {
        self.policies.insert(kind.to_owned(), policy);
    }

    /// Registers every kind of `other` that this set does not have yet.
    pub fn extend_missing(&mut self, other: Kinds) {
        for (kind, policy) in other.policies {
            self.policies.entry(kind).or_insert(policy);
        }
    }

    /// The policy of a registered kind.
    pub fn policy(&self, kind: &str) -> Option<&KindPolicy> {
        self.policies.get(kind)
    }

    /// Whether `kind`'s slots describe their origin node.
    pub fn is_node_owned(&self, kind: &str) -> bool {
        self.policy(kind).is_some_and(|p| p.owner == Owner::Node)
    }

    /// Whether `item` passes its kind's check (unknown kinds have none).
    pub fn allows(&self, item: &Superseding) -> bool {
        self.policy(&item.kind)
            .and_then(|p| p.check.as_ref())
            .is_none_or(|check| check(item))
    }

    /// The bounds for an item of `kind` received at wall-clock `now`.
    pub fn limits(&self, kind: &str, now: Duration) -> Limits {
        let ahead = now.saturating_add(MAX_VERSION_SKEW);
        let millis = u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX);
        let shifted = millis.saturating_mul(1 << 16);
        match self.policy(kind) {
            Some(p) => Limits {
                pool: Pool::Kind(kind.to_owned()),
                max_slots: p.max_slots,
                per_origin: p.per_origin,
                max_version: match p.owner {
                    Owner::Node => millis,
                    Owner::Fleet => shifted,
                },
                ttl: None,
                fleet: p.owner == Owner::Fleet,
            },
            None => Limits {
                pool: Pool::Unknown,
                max_slots: UNKNOWN_SLOTS,
                per_origin: UNKNOWN_PER_ORIGIN,
                max_version: shifted,
                ttl: Some(UNKNOWN_TTL),
                fleet: false,
            },
        }
    }
}

/// A fleet kind's version for an item issued at `at_ms`, with `tiebreak` to tell apart
/// items of the same millisecond (see the module docs).
pub fn fleet_version(at_ms: u64, tiebreak: u16) -> u64 {
    // 48 bits of milliseconds last until the year 10889; saturate past them.
    (at_ms.min((1 << 48) - 1) << 16) | u64::from(tiebreak)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    #[test]
    fn versions_are_bounded_by_the_clock() {
        let mut kinds = Kinds::default();
        kinds.register("n", KindPolicy::node(1));
        kinds.register("f", KindPolicy::fleet(4, Arc::new(|_| true)));
        let skew = MAX_VERSION_SKEW.as_millis() as u64;
        let now_ms = NOW.as_millis() as u64;
        assert_eq!(kinds.limits("n", NOW).max_version, now_ms + skew);
        assert_eq!(
            kinds.limits("f", NOW).max_version,
            fleet_version(now_ms + skew, 0)
        );
        let unknown = kinds.limits("x", NOW);
        assert_eq!(unknown.pool, Pool::Unknown);
        assert_eq!(unknown.max_version, fleet_version(now_ms + skew, 0));
        assert_eq!(unknown.ttl, Some(UNKNOWN_TTL));
        // A clock at its end saturates instead of overflowing.
        assert_eq!(kinds.limits("n", Duration::MAX).max_version, u64::MAX);
    }

    #[test]
    fn node_kinds_have_room_for_every_node() {
        let p = KindPolicy::node(3);
        assert_eq!((p.per_origin, p.max_slots), (3, 3 * MAX_NODES));
        let mut kinds = Kinds::default();
        kinds.register("n", p);
        assert!(kinds.is_node_owned("n"));
        assert!(!kinds.is_node_owned("x"));
    }

    #[test]
    fn registered_kinds_are_not_replaced_by_extend_missing() {
        let mut a = Kinds::default();
        a.register("k", KindPolicy::node(1));
        let mut b = Kinds::default();
        b.register("k", KindPolicy::node(7));
        b.register("other", KindPolicy::node(2));
        a.extend_missing(b);
        assert_eq!(a.policy("k").unwrap().per_origin, 1);
        assert_eq!(a.policy("other").unwrap().per_origin, 2);
    }
}
