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
//!    (foca then drops the rest of that packet); unknown types are skipped and counted;
//! 2. witness the Lamport clock, ask the [`EventLog`] / query [`DedupeWindow`] whether
//!    it is new;
//! 3. if new: return its [`BroadcastKey`] so foca keeps disseminating it, and queue an
//!    [`Incoming`] for the shell (events always; queries only if this node matches the
//!    filters). Duplicates and too-old items return `None` (not re-gossiped).
//!
//! The origin therefore delivers its own events (and answers its own matching queries)
//! through the same path, right when it calls `add_broadcast`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::{
    DedupeWindow, EventError, EventId, EventLog, EventLogConfig, EventLogSnapshot, UserEvent,
};
use super::identity::NodeId;
use super::lamport::LamportClock;
use super::message::{Broadcast, DecodeError, EncodeError, decode_broadcast, encode_broadcast};
use super::pushpull::{MergeOutcome, PushPullState, TagBook, merge};
use super::query::{Filter, Query, QueryError, QueryId, Tags};

/// foca instantiated with our identity, codec and handler.
pub type GossipFoca<R> = foca::Foca<NodeId, foca::PostcardCodec, R, GossipHandler>;

/// Key foca uses to replace/dedupe queued broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastKey {
    /// A user event.
    Event(EventId),
    /// A query.
    Query(QueryId),
}

impl foca::Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
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
    now: Duration,
    outbox: VecDeque<Incoming>,
    stats: Stats,
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
            now,
            outbox: VecDeque::new(),
            stats: Stats::default(),
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

    /// Replaces this node's tags (e.g. on a config reload).
    pub fn set_tags(&mut self, tags: Tags) {
        self.tags = tags;
    }

    /// Call on foca's `Notification::Rejoin(new_id)` so snapshots carry the new bump.
    pub fn set_identity(&mut self, identity: NodeId) {
        self.identity = identity;
    }

    /// Updates the wall clock used for event ages and prunes old recent events.
    pub fn tick(&mut self, now: Duration) {
        self.now = now;
        self.events.prune(now);
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

    /// Our state for a push/pull exchange. `members` is foca's
    /// `iter_membership_state().cloned()`.
    pub fn push_pull_state(
        &self,
        members: impl IntoIterator<Item = foca::Member<NodeId>>,
    ) -> PushPullState {
        PushPullState {
            from: self.identity.clone(),
            tags: self.tags.clone(),
            members: members.into_iter().collect(),
            event_ltime: self.event_clock.time(),
            query_ltime: self.query_clock.time(),
            events: self.events.recent().cloned().collect(),
        }
    }

    /// Merges a peer's push/pull state: new events are queued as [`Incoming::Event`]
    /// and also returned; the peer's tags are learned. Feed `remote.members` to foca
    /// through [`super::pushpull::screen_members`].
    pub fn merge_push_pull(&mut self, remote: &PushPullState) -> MergeOutcome {
        self.tag_book.learn(&remote.from, &remote.tags);
        let out = merge(
            &mut self.events,
            &mut self.event_clock,
            &mut self.query_clock,
            remote,
            self.now,
        );
        self.stats.events_delivered += out.new_events.len() as u64;
        self.stats.events_duplicate += out.duplicates as u64;
        self.stats.events_too_old += out.too_old as u64;
        self.stats.too_far_ahead += out.too_far_ahead as u64;
        self.outbox
            .extend(out.new_events.iter().cloned().map(Incoming::Event));
        out
    }

    fn receive(&mut self, data: &[u8]) -> Result<Option<BroadcastKey>, DecodeError> {
        let item = match decode_broadcast(data) {
            Ok(item) => item,
            Err(DecodeError::UnknownType { .. }) => {
                self.stats.unknown_types += 1;
                return Ok(None);
            }
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        match item {
            Broadcast::Event(ev) => {
                if !self.event_clock.accepts(ev.ltime) {
                    self.stats.too_far_ahead += 1;
                    return Ok(None);
                }
                self.event_clock.witness(ev.ltime);
                match self.events.observe(&ev, self.now) {
                    Ok(true) => {
                        self.stats.events_delivered += 1;
                        let key = BroadcastKey::Event(ev.id);
                        self.outbox.push_back(Incoming::Event(ev));
                        Ok(Some(key))
                    }
                    Ok(false) => {
                        self.stats.events_duplicate += 1;
                        Ok(None)
                    }
                    Err(_) => {
                        self.stats.events_too_old += 1;
                        Ok(None)
                    }
                }
            }
            Broadcast::Query(q) => {
                if !self.query_clock.accepts(q.ltime) {
                    self.stats.too_far_ahead += 1;
                    return Ok(None);
                }
                self.query_clock.witness(q.ltime);
                match self
                    .queries
                    .observe(q.ltime, q.id.0, self.config.max_query_ids)
                {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stats.queries_duplicate += 1;
                        return Ok(None);
                    }
                    Err(_) => {
                        self.stats.queries_too_old += 1;
                        return Ok(None);
                    }
                }
                self.stats.queries_seen += 1;
                let Ok(filters) = q.filter_set() else {
                    self.stats.queries_bad_filter += 1;
                    return Ok(None);
                };
                let key = BroadcastKey::Query(q.id);
                if filters.matches(&self.identity.name, &self.tags) {
                    self.stats.queries_matched += 1;
                    self.outbox.push_back(Incoming::Query(q));
                }
                Ok(Some(key))
            }
        }
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
        _sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, DecodeError> {
        self.0.lock().receive(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::query::QueryId;
    use foca::BroadcastHandler as _;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn core(name: &str, tags: Tags) -> SharedCore {
        let id = NodeId::new(name, "127.0.0.1:7946".parse().unwrap(), 0).unwrap();
        SharedCore::new(GossipCore::new(id, tags, CoreConfig::default(), NOW))
    }

    #[test]
    fn receive_item_paths() {
        let shared = core("web1", [("role".to_owned(), "web".to_owned())].into());
        let mut h = shared.handler();
        let mut rng = StdRng::seed_from_u64(3);

        // Garbage is a typed error, unknown types are skipped.
        assert!(h.receive_item(&[1, 0xff], None).is_err());
        assert_eq!(h.receive_item(&[200, 1, 2, 3], None).unwrap(), None);

        // Local event: delivered once, key returned once.
        let (ev, bytes) = shared
            .lock()
            .create_event(&mut rng, "deploy", b"x".to_vec())
            .unwrap();
        assert_eq!(
            h.receive_item(&bytes, None).unwrap(),
            Some(BroadcastKey::Event(ev.id))
        );
        assert_eq!(h.receive_item(&bytes, None).unwrap(), None);

        // A remote event with a higher Lamport time moves our clock.
        let remote = UserEvent::new(EventId(77), "db1", 50, "deploy", vec![]).unwrap();
        let rb = encode_broadcast(&Broadcast::Event(remote.clone())).unwrap();
        h.receive_item(&rb, None).unwrap();
        let (next, _) = shared
            .lock()
            .create_event(&mut rng, "deploy", vec![])
            .unwrap();
        assert_eq!(next.ltime, 52);

        // Queries: matching ones are queued, non-matching only relayed.
        let origin = NodeId::new("o", "127.0.0.1:1".parse().unwrap(), 0).unwrap();
        let mut q = Query {
            id: QueryId(1),
            ltime: 1,
            origin,
            name: "q".into(),
            payload: vec![],
            filters: vec![Filter::Tag {
                key: "role".into(),
                value: "web".into(),
            }],
            timeout_ms: 100,
        };
        let qb = encode_broadcast(&Broadcast::Query(q.clone())).unwrap();
        assert_eq!(
            h.receive_item(&qb, None).unwrap(),
            Some(BroadcastKey::Query(QueryId(1)))
        );
        assert_eq!(h.receive_item(&qb, None).unwrap(), None);
        q.id = QueryId(2);
        q.filters = vec![Filter::NodeName("db.*".into())];
        let qb2 = encode_broadcast(&Broadcast::Query(q.clone())).unwrap();
        assert!(h.receive_item(&qb2, None).unwrap().is_some());
        q.id = QueryId(3);
        q.filters = vec![Filter::NodeName("(".into())];
        let qb3 = encode_broadcast(&Broadcast::Query(q)).unwrap();
        assert_eq!(h.receive_item(&qb3, None).unwrap(), None);

        let incoming = shared.drain_incoming();
        assert_eq!(incoming.len(), 3, "{incoming:?}");
        assert!(matches!(&incoming[0], Incoming::Event(e) if e.id == ev.id));
        assert!(matches!(&incoming[1], Incoming::Event(e) if e.id == EventId(77)));
        assert!(matches!(&incoming[2], Incoming::Query(q) if q.id == QueryId(1)));

        let stats = shared.lock().stats();
        assert_eq!(stats.malformed, 1);
        assert_eq!(stats.unknown_types, 1);
        assert_eq!(stats.events_delivered, 2);
        assert_eq!(stats.events_duplicate, 1);
        assert_eq!(stats.queries_seen, 3);
        assert_eq!(stats.queries_matched, 1);
        assert_eq!(stats.queries_duplicate, 1);
        assert_eq!(stats.queries_bad_filter, 1);
    }

    /// Regression (issue 10, item 4): one authenticated event near `u64::MAX` moved
    /// every node's clock to the limit (and it was persisted).
    #[test]
    fn far_future_ltimes_are_refused() {
        let shared = core("n1", Tags::new());
        let mut h = shared.handler();
        let far = UserEvent::new(EventId(5), "evil", u64::MAX - 1, "deploy", vec![]).unwrap();
        let bytes = encode_broadcast(&Broadcast::Event(far)).unwrap();
        assert_eq!(h.receive_item(&bytes, None).unwrap(), None);
        let origin = NodeId::new("o", "127.0.0.1:1".parse().unwrap(), 0).unwrap();
        let q = Query {
            id: QueryId(9),
            ltime: u64::MAX,
            origin,
            name: "q".into(),
            payload: vec![],
            filters: vec![],
            timeout_ms: 100,
        };
        let qb = encode_broadcast(&Broadcast::Query(q)).unwrap();
        assert_eq!(h.receive_item(&qb, None).unwrap(), None);
        assert!(shared.drain_incoming().is_empty());
        let snap = shared.lock().snapshot();
        assert_eq!(snap.event_clock.time(), 0);
        assert_eq!(snap.query_clock.time(), 0);
        assert_eq!(shared.lock().stats().too_far_ahead, 2);
    }

    #[test]
    fn snapshot_restore_keeps_clocks_and_dedupe() {
        let shared = core("n1", Tags::new());
        let mut rng = StdRng::seed_from_u64(4);
        let (_, bytes) = shared
            .lock()
            .create_event(&mut rng, "deploy", vec![])
            .unwrap();
        shared.handler().receive_item(&bytes, None).unwrap();
        let snap = shared.lock().snapshot();
        let mut id = snap.identity.clone();
        id.bump += 1;
        let restored = SharedCore::new(GossipCore::restore(
            id,
            Tags::new(),
            CoreConfig::default(),
            snap,
            NOW,
        ));
        assert_eq!(restored.handler().receive_item(&bytes, None).unwrap(), None);
        let (ev, _) = restored
            .lock()
            .create_event(&mut rng, "deploy", vec![])
            .unwrap();
        // 1 = first event, witnessing it moved the clock to 2, so the next is 3.
        assert_eq!(ev.ltime, 3, "clock survives the restart");
        assert_eq!(restored.lock().identity().bump, 1);
    }
}
