//! The node's protocol state and foca's custom-broadcast hook.
//!
//! foca owns its `BroadcastHandler` and offers no accessor to it, yet the shell must
//! create events, drain deliveries and snapshot the log. So the state lives in a
//! [`GossipCore`] behind a [`SharedCore`] (`Arc<Mutex<_>>`, uncontended: one task owns
//! both foca and the shell side), and [`GossipHandler`] is a thin clone handed to foca.
//! Every `SharedCore` method locks only for its own duration, so it is safe to call
//! between foca calls. **Never call into foca while holding [`SharedCore::lock`]**:
//! foca calls back into the handler and would deadlock.
//!
//! Flow of a broadcast item (foca calls `receive_item` both for items arriving in
//! packets and for local `add_broadcast`):
//!
//! 1. decode ([`super::message::decode_broadcast`]); malformed bytes are a typed error
//!    (foca then drops the rest of that packet); unknown types (a newer peer's) are
//!    counted and relayed once each ([`super::supersede::SeenBytes`]), never delivered;
//! 2. witness the Lamport clock, ask the [`EventLog`] / query [`DedupeWindow`] whether
//!    it is new — or, for a [`Superseding`] item, whether it is newer than the version
//!    held for its `(kind, key)` ([`Latest`]; its key then also drops queued older
//!    versions from foca's backlog);
//! 3. if new: return its [`BroadcastKey`] so foca keeps disseminating it, and queue an
//!    [`Incoming`] for the shell (events always; queries only if this node matches the
//!    filters). Duplicates and too-old items return `None` (not re-gossiped).
//!
//! The origin therefore delivers its own events (and answers its own matching queries)
//! through the same path, right when it calls `add_broadcast`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::{
    DedupeWindow, EventError, EventId, EventLog, EventLogConfig, EventLogSnapshot, UserEvent,
};
use super::identity::NodeId;
use super::kinds::Kinds;
use super::lamport::LamportClock;
use super::latest::{Latest, Offer};
use super::message::PROTOCOL_VERSION;
use super::message::{Broadcast, DecodeError, EncodeError, decode_broadcast, encode_broadcast};
use super::pushpull::{MergeOutcome, PushPullState, TagBook, merge};
use super::query::{Filter, Query, QueryError, QueryId, Tags};
use super::supersede::{SeenBytes, Superseding, TAGS_KIND};
use super::versioned::{Extension, ext};

/// foca instantiated with our identity, codec and handler.
pub type GossipFoca<R> = foca::Foca<NodeId, foca::PostcardCodec, R, GossipHandler>;

/// Key foca uses to replace/dedupe queued broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastKey {
    /// A user event.
    Event(EventId),
    /// A query.
    Query(QueryId),
    /// A [`Superseding`] item: `slot` is a keyed hash of its `(kind, key)`.
    Superseding { slot: u64, version: u64 },
    /// A broadcast type this build does not know, relayed as is (keyed hash of its bytes).
    Opaque(u64),
}

impl foca::Invalidates for BroadcastKey {
    /// Identical keys replace each other; a superseding item also replaces queued
    /// older versions of its slot.
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Superseding { slot, version },
                Self::Superseding {
                    slot: other_slot,
                    version: other_version,
                },
            ) => slot == other_slot && version >= other_version,
            _ => self == other,
        }
    }
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Deliver this event (to handlers / the deploy logic). Exactly once.
    Event(UserEvent),
    /// This node matches the query: compute an answer and send a
    /// [`super::query::QueryResponse`] to `query.origin.addr`.
    Query(Query),
    /// A newer version of a [`Superseding`] slot (any kind, known to the shell or not).
    Superseding(Superseding),
}

/// Counters for the shell's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub events_delivered: u64,
    pub events_duplicate: u64,
    pub events_too_old: u64,
    /// Events or queries stamped more than [`super::lamport::MAX_AHEAD`] ahead.
    pub too_far_ahead: u64,
    pub queries_seen: u64,
    pub queries_matched: u64,
    pub queries_duplicate: u64,
    pub queries_too_old: u64,
    pub queries_bad_filter: u64,
    pub unknown_types: u64,
    /// Superseding items older than (or equal to) the version held.
    pub superseded: u64,
    /// Superseding items refused because their pool, their origin's share or the byte
    /// budget is full.
    pub slots_full: u64,
    /// Superseding items refused by their kind's check (e.g. a bad signature), for their
    /// size, or for a version too far ahead.
    pub refused_superseding: u64,
    /// Remote items about this node, refused (see `handler_supersede.rs`).
    pub refused_about_self: u64,
    /// Items, answers and leave notices refused for what identities say: no card, no or
    /// a bad signature, a revoked or expired certificate.
    pub refused_identity: u64,
    /// foca packets dropped whole: their sender (or an identity they name) has no card.
    pub packets_refused_identity: u64,
    /// Member updates taken out of foca packets: identities without a card.
    pub updates_refused_identity: u64,
    /// Push/pull states whose slots were cut short after too many identity refusals.
    pub exchanges_cut: u64,
    /// foca packets from another address than their sender's (identities on).
    pub packets_spoofed: u64,
    /// foca packets whose MAC is not their sender's ([`crate::gossip::pairwise`]).
    pub packets_forged: u64,
    /// foca packets without a MAC from an enrolled sender, identities required.
    pub packets_unauthenticated: u64,
    /// foca packets with their sender's MAC, but stamped before what it sent since, or far
    /// from this node's clock.
    pub packets_replayed: u64,
    /// Gossiped items and cards left unchecked: the second's signature checks were spent
    /// ([`crate::gossip::vouch::CHECKS_PER_SECOND`]).
    pub checks_deferred: u64,
    pub malformed: u64,
}

/// Tunables of a [`GossipCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreConfig {
    /// Event log bounds.
    pub event_log: EventLogConfig,
    /// How many query ids to remember for dedupe.
    pub max_query_ids: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            event_log: EventLogConfig::default(),
            max_query_ids: 4096,
        }
    }
}

/// Everything to persist across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSnapshot {
    /// The identity last used; restart with `bump + 1`.
    pub identity: NodeId,
    /// Event Lamport clock.
    pub event_clock: LamportClock,
    /// Query Lamport clock.
    pub query_clock: LamportClock,
    /// Delivered events.
    pub events: EventLogSnapshot,
    /// Seen queries.
    pub queries: DedupeWindow,
    /// Version of the last tag announcement (a restart announces a higher one even if
    /// the wall clock went back).
    #[serde(default)]
    pub tags_version: u64,
    /// Revocations held (encoded), so a restarted node refuses revoked keys from its
    /// first packet on.
    #[serde(default)]
    pub revocations: Vec<Vec<u8>>,
    /// Names held to member cards, and until when (see [`super::vouch::Identities`]).
    #[serde(default)]
    pub enrolled: Vec<(String, u64)>,
}

/// Why a local event/query could not be created. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Superseding(#[from] super::supersede::SupersedeError),
}

/// The node's protocol state. See the module docs.
#[derive(Debug)]
pub struct GossipCore {
    identity: NodeId,
    tags: Tags,
    config: CoreConfig,
    event_clock: LamportClock,
    query_clock: LamportClock,
    events: EventLog,
    queries: DedupeWindow,
    tag_book: TagBook,
    tags_version: u64,
    latest: Latest,
    seen: SeenBytes,
    peer_versions: BTreeMap<String, u16>,
    /// This node's slots to publish again above the version given.
    republish: BTreeMap<(String, String), u64>,
    now: Duration,
    outbox: VecDeque<Incoming>,
    stats: Stats,
    kinds: Kinds,
    identities: super::vouch::Identities,
    /// This node's member card is to be announced (again).
    card_due: bool,
    /// Version of the last card announced.
    card_version: u64,
    /// Revocations from the snapshot, applied once the identity policy is set.
    restored_revocations: Vec<Vec<u8>>,
    /// Names held to cards, from the snapshot, likewise.
    restored_enrolled: Vec<(String, u64)>,
    /// When the certificate's coming end was last warned about (Unix seconds).
    expiry_warned: Option<u64>,
}

impl GossipCore {
    /// Fresh state. `now` is wall-clock time since the UNIX epoch.
    pub fn new(identity: NodeId, tags: Tags, config: CoreConfig, now: Duration) -> Self {
        Self {
            identity,
            tags,
            config,
            event_clock: LamportClock::new(),
            query_clock: LamportClock::new(),
            events: EventLog::new(config.event_log),
            queries: DedupeWindow::new(),
            tag_book: TagBook::new(),
            tags_version: 0,
            latest: Latest::default(),
            seen: SeenBytes::default(),
            peer_versions: BTreeMap::new(),
            republish: BTreeMap::new(),
            now,
            outbox: VecDeque::new(),
            stats: Stats::default(),
            kinds: supersede::builtin_kinds(),
            identities: super::vouch::Identities::default(),
            card_due: false,
            card_version: 0,
            restored_revocations: Vec::new(),
            restored_enrolled: Vec::new(),
            expiry_warned: None,
        }
    }

    /// State restored from a snapshot. `identity` should be `snapshot.identity` renewed
    /// (`bump + 1`), possibly with a new address.
    pub fn restore(
        identity: NodeId,
        tags: Tags,
        config: CoreConfig,
        snapshot: CoreSnapshot,
        now: Duration,
    ) -> Self {
        let mut core = Self::new(identity, tags, config, now);
        core.event_clock = snapshot.event_clock;
        core.query_clock = snapshot.query_clock;
        core.events = EventLog::restore(config.event_log, snapshot.events, now);
        core.queries = snapshot.queries;
        // A version past the clock bound (an older build took a forged one) would make
        // every later announcement refused: start over from the clock instead.
        let bound = core.kinds.limits(TAGS_KIND, now).max_version;
        core.tags_version = Some(snapshot.tags_version)
            .filter(|&v| v <= bound)
            .unwrap_or(0);
        core.restored_revocations = snapshot.revocations;
        core.restored_enrolled = snapshot.enrolled;
        core
    }

    /// Marks an event as already delivered, as recorded in a journal written after the
    /// last snapshot: it will not be delivered again. Nothing is queued for the shell.
    pub fn record_delivered(&mut self, ev: &UserEvent) {
        self.event_clock.witness(ev.ltime);
        // A duplicate or too-old event is already covered by the snapshot.
        let _ = self.events.observe(ev, self.now);
    }

    /// State to persist (e.g. on shutdown and periodically).
    pub fn snapshot(&self) -> CoreSnapshot {
        CoreSnapshot {
            identity: self.identity.clone(),
            event_clock: self.event_clock,
            query_clock: self.query_clock,
            events: self.events.snapshot(),
            queries: self.queries.clone(),
            tags_version: self.tags_version,
            revocations: self
                .superseding_items(super::vouch::REVOKED_KIND)
                .into_iter()
                .map(|i| i.body)
                .collect(),
            enrolled: self
                .identities
                .known()
                .map(|(n, u)| (n.clone(), *u))
                .collect(),
        }
    }

    /// The local identity as last set.
    pub fn identity(&self) -> &NodeId {
        &self.identity
    }

    /// This node's tags (advertised in push/pull, matched by query filters).
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// The push/pull wire version last seen from `node` (1 if never).
    pub fn peer_version(&self, node: &str) -> u16 {
        self.peer_versions.get(node).copied().unwrap_or(1)
    }

    /// Call on foca's `Notification::Rejoin(new_id)` so snapshots carry the new bump
    /// (and the member card, if any, is announced again with it).
    pub fn set_identity(&mut self, identity: NodeId) {
        self.card_due |= identity != self.identity && self.identities.own().is_some();
        self.identity = identity;
    }

    /// Moves the wall clock on (never back) without the pruning of [`Self::tick`]: per
    /// input, so that per-second bounds count real seconds.
    pub fn set_clock(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// Updates the wall clock used for event ages, prunes old recent events and expires
    /// slots of unknown kinds.
    pub fn tick(&mut self, now: Duration) {
        self.now = now;
        self.events.prune(now);
        self.latest.expire(now);
        self.expire_identities();
        self.warn_if_expiring();
    }

    /// The event log (read-only).
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Tags learned from peers.
    pub fn tag_book(&self) -> &TagBook {
        &self.tag_book
    }

    /// Forgets the tags of nodes for which `known` is false (foca reaped them), so the
    /// book does not grow with every node that ever joined.
    pub fn prune_tags(&mut self, known: impl Fn(&str) -> bool) {
        // foca does not list this node itself: keep its own announcement.
        let me = &self.identity.name;
        let kinds = &self.kinds;
        self.latest.retain(|item| {
            !kinds.is_node_owned(&item.kind) || item.origin == *me || known(&item.origin)
        });
        let latest = &self.latest;
        self.identities
            .retain_cards(|name| latest.get(super::vouch::MEMBER_KIND, name).is_some());
        self.peer_versions.retain(|name, _| known(name));
        self.tag_book.retain(known);
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Next thing to act on, if any.
    pub fn pop_incoming(&mut self) -> Option<Incoming> {
        self.outbox.pop_front()
    }

    /// Builds a new local event and returns the bytes for `Foca::add_broadcast`
    /// (which delivers it locally through [`GossipHandler`]).
    pub fn create_event<R: rand::Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<(UserEvent, Vec<u8>), CreateError> {
        let mut clock = self.event_clock;
        let ev = UserEvent::create(rng, &mut clock, &self.identity.name, name, payload)?;
        let bytes = encode_broadcast(&Broadcast::Event(ev.clone()))?;
        self.event_clock = clock;
        Ok((ev, bytes))
    }

    /// Builds a new local query and returns the bytes for `Foca::add_broadcast`.
    /// Start a [`super::query::QueryTracker`] with the returned query.
    pub fn create_query<R: rand::Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        name: &str,
        payload: Vec<u8>,
        filters: Vec<Filter>,
        timeout: Duration,
    ) -> Result<(Query, Vec<u8>), CreateError> {
        let mut clock = self.query_clock;
        let origin = self.identity.clone();
        let q = Query::create(rng, &mut clock, origin, name, payload, filters, timeout)?;
        let bytes = encode_broadcast(&Broadcast::Query(q.clone()))?;
        self.query_clock = clock;
        Ok((q, bytes))
    }

    /// One broadcast item; `local`: this node made it (`Foca::add_broadcast`).
    fn receive(&mut self, data: &[u8], local: bool) -> Result<Option<BroadcastKey>, DecodeError> {
        let item = match decode_broadcast(data) {
            Ok(item) => item,
            Err(DecodeError::UnknownType { .. }) => {
                // A newer peer's broadcast type: relay it once, deliver nothing.
                self.stats.unknown_types += 1;
                let first = self.seen.first_time(data);
                return Ok(first.then(|| BroadcastKey::Opaque(self.seen.hash(data))));
            }
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        Ok(match item {
            Broadcast::Superseding(item) => self.receive_superseding(item, local),
            Broadcast::Event(ev) => self.receive_event(ev),
            Broadcast::Query(q) => self.receive_query(q),
        })
    }
}

impl GossipCore {
    fn receive_event(&mut self, ev: UserEvent) -> Option<BroadcastKey> {
        if !self.event_clock.accepts(ev.ltime) {
            self.stats.too_far_ahead += 1;
            return None;
        }
        self.event_clock.witness(ev.ltime);
        match self.events.observe(&ev, self.now) {
            Ok(true) => {
                self.stats.events_delivered += 1;
                let key = BroadcastKey::Event(ev.id);
                self.outbox.push_back(Incoming::Event(ev));
                Some(key)
            }
            Ok(false) => {
                self.stats.events_duplicate += 1;
                None
            }
            Err(_) => {
                self.stats.events_too_old += 1;
                None
            }
        }
    }

    fn receive_query(&mut self, q: Query) -> Option<BroadcastKey> {
        if !self.query_clock.accepts(q.ltime) {
            self.stats.too_far_ahead += 1;
            return None;
        }
        self.query_clock.witness(q.ltime);
        match self
            .queries
            .observe(q.ltime, q.id.0, self.config.max_query_ids)
        {
            Ok(true) => {}
            Ok(false) => {
                self.stats.queries_duplicate += 1;
                return None;
            }
            Err(_) => {
                self.stats.queries_too_old += 1;
                return None;
            }
        }
        self.stats.queries_seen += 1;
        let Ok(filters) = q.filter_set() else {
            self.stats.queries_bad_filter += 1;
            return None;
        };
        let key = BroadcastKey::Query(q.id);
        if filters.matches(&self.identity.name, &self.tags) {
            self.stats.queries_matched += 1;
            self.outbox.push_back(Incoming::Query(q));
        }
        Some(key)
    }
}

/// Shared handle to a [`GossipCore`].
#[derive(Debug, Clone)]
pub struct SharedCore(Arc<Mutex<GossipCore>>);

impl SharedCore {
    /// Wraps a core.
    pub fn new(core: GossipCore) -> Self {
        Self(Arc::new(Mutex::new(core)))
    }

    /// Locks the core. Do not call into foca while holding the guard.
    pub fn lock(&self) -> MutexGuard<'_, GossipCore> {
        // A panic elsewhere cannot leave the core half-updated in a way that matters
        // more than stopping the agent would, so poisoning is ignored.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handler to give to foca.
    pub fn handler(&self) -> GossipHandler {
        GossipHandler(self.clone())
    }

    /// Creates foca for this core's identity with our handler and codec.
    pub fn new_foca<R: rand::RngExt>(&self, config: foca::Config, rng: R) -> GossipFoca<R> {
        let identity = self.lock().identity().clone();
        foca::Foca::with_custom_broadcast(
            identity,
            config,
            rng,
            foca::PostcardCodec,
            self.handler(),
        )
    }

    /// Drains everything queued for the shell.
    pub fn drain_incoming(&self) -> Vec<Incoming> {
        let mut core = self.lock();
        core.outbox.drain(..).collect()
    }
}

/// foca's custom broadcast handler; see the module docs.
#[derive(Debug, Clone)]
pub struct GossipHandler(SharedCore);

impl foca::BroadcastHandler<NodeId> for GossipHandler {
    type Key = BroadcastKey;
    type Error = DecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, DecodeError> {
        self.0.lock().receive(data, sender.is_none())
    }
}

#[path = "handler_supersede.rs"]
mod supersede;

#[path = "handler_identity.rs"]
mod identity;

#[path = "handler_pushpull.rs"]
mod pushpull;
pub use pushpull::PUSH_PULL_SLOT_BYTES;

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
