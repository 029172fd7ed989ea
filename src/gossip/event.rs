//! User events and the log that delivers each of them exactly once.
//!
//! A [`UserEvent`] is a small named message (later: a signed deploy event) disseminated
//! with foca custom broadcasts and repaired by anti-entropy push/pull. Gossip delivers
//! the same event many times, and push/pull re-sends recent ones on purpose, so
//! [`EventLog::observe`] is the single place that answers "is this new?" — `true` exactly
//! once per event id, ever, including across restarts of the agent.
//!
//! How the log stays bounded yet exact:
//!
//! - **Delivered ids** ([`DedupeWindow`]): the `(ltime, id)` of every delivered event at
//!   or above a *watermark*. When the set exceeds its cap the lowest times are dropped
//!   and the watermark moves above them. Events below the watermark are refused as
//!   [`EventRejected::TooOld`]: the node can no longer prove it did not handle them, and
//!   refusing is the safe side for deploy triggers.
//! - **Recent events**: full events (with payload) kept for push/pull and the snapshot,
//!   bounded by count *and* by age ([`EventLogConfig`]). Pruning payloads never forgets
//!   ids, so an event pruned from `recent` is still a duplicate.
//! - **Snapshot** ([`EventLogSnapshot`]): watermark + ids + recent events, serde, so a
//!   restarted agent never re-delivers what it already handled.
//!
//! Time: ages use wall-clock `now: Duration` since the UNIX epoch, passed in by the
//! caller (the shell reads `SystemTime`; tests pass constants) because they are persisted.
//!
//! Size: `name.len() + payload.len()` is capped at [`MAX_EVENT_SIZE`] so that an encoded
//! event always fits one foca custom broadcast inside a sealed 1400-byte datagram (see
//! [`super::limits`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::identity::{MAX_NODE_NAME_LEN, NodeNameError, validate_node_name};
use super::lamport::{LamportClock, LamportTime};
use super::limits::MAX_BROADCAST_ITEM;

/// Worst-case bytes an encoded event adds to `name + payload`: message tag (1), id
/// (u128 varint, 19), origin (1 + 64), ltime (u64 varint, 10), two length varints (2 + 2).
pub const EVENT_ENCODING_OVERHEAD: usize = 1 + 19 + (1 + MAX_NODE_NAME_LEN) + 10 + 2 + 2;

/// Largest `name.len() + payload.len()` of a user event.
pub const MAX_EVENT_SIZE: usize = MAX_BROADCAST_ITEM - EVENT_ENCODING_OVERHEAD;

/// Longest event (or query) name in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 128;

/// Why an event could not be created. Nothing was broadcast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Name plus payload do not fit in one gossip packet.
    #[error(
        "event is too large: name + payload is {size} bytes, the maximum is {max}; \
         nothing was sent (put large data elsewhere, e.g. S3, and send a reference)"
    )]
    EventTooLarge { size: usize, max: usize },
    /// Bad event name.
    #[error("event name {name:?} is invalid: {reason}; nothing was sent")]
    BadName { name: String, reason: &'static str },
    /// Bad origin node name.
    #[error("event origin: {0}")]
    BadOrigin(#[from] NodeNameError),
}

/// Checks an event or query name: 1..=128 bytes, no whitespace or control characters.
pub fn validate_event_name(name: &str) -> Result<(), EventError> {
    let bad = |reason| {
        Err(EventError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_EVENT_NAME_LEN {
        return bad("it is longer than 128 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or control characters");
    }
    Ok(())
}

/// Random 128-bit event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub u128);

impl EventId {
    /// A random id.
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let hi = u128::from(rng.next_u64());
        let lo = u128::from(rng.next_u64());
        Self((hi << 64) | lo)
    }
}

/// A user event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Unique id (random).
    pub id: EventId,
    /// Name of the node that created it.
    pub origin: String,
    /// Event Lamport time.
    pub ltime: LamportTime,
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

impl UserEvent {
    /// A validated event.
    pub fn new(
        id: EventId,
        origin: impl Into<String>,
        ltime: LamportTime,
        name: impl Into<String>,
        payload: Vec<u8>,
    ) -> Result<Self, EventError> {
        let ev = Self {
            id,
            origin: origin.into(),
            ltime,
            name: name.into(),
            payload,
        };
        ev.validate()?;
        Ok(ev)
    }

    /// Creates a new local event: random id, `clock.increment()` as its time. The clock
    /// only advances if the event is valid.
    pub fn create<R: rand::Rng + ?Sized>(
        rng: &mut R,
        clock: &mut LamportClock,
        origin: &str,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<Self, EventError> {
        let mut ev = Self::new(EventId::random(rng), origin, 0, name, payload)?;
        ev.ltime = clock.increment();
        Ok(ev)
    }

    /// Checks size, name and origin (also applied to decoded events).
    pub fn validate(&self) -> Result<(), EventError> {
        let size = self.name.len() + self.payload.len();
        if size > MAX_EVENT_SIZE {
            return Err(EventError::EventTooLarge {
                size,
                max: MAX_EVENT_SIZE,
            });
        }
        validate_event_name(&self.name)?;
        validate_node_name(&self.origin)?;
        Ok(())
    }
}

/// Why a received event was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventRejected {
    /// Below the dedupe watermark: it may have been handled before, so it is dropped.
    #[error(
        "event at Lamport time {ltime} is older than the remembered window (which starts at \
         {watermark}); dropped because this node cannot tell whether it already handled it"
    )]
    TooOld {
        ltime: LamportTime,
        watermark: LamportTime,
    },
}

/// A bounded set of `(ltime, id)` seen at or above a watermark. Shared by events and
/// queries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DedupeWindow {
    watermark: LamportTime,
    seen: BTreeSet<(LamportTime, u128)>,
}

impl DedupeWindow {
    /// An empty window accepting everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lowest Lamport time still accepted.
    pub fn watermark(&self) -> LamportTime {
        self.watermark
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `(ltime, id)` was seen (without recording it).
    pub fn contains(&self, ltime: LamportTime, id: u128) -> bool {
        self.seen.contains(&(ltime, id))
    }

    /// Records `(ltime, id)`; `Ok(true)` the first time, `Ok(false)` afterwards.
    /// Keeps at most `max_ids` ids, raising the watermark past dropped ones.
    pub fn observe(
        &mut self,
        ltime: LamportTime,
        id: u128,
        max_ids: usize,
    ) -> Result<bool, EventRejected> {
        if ltime < self.watermark {
            return Err(EventRejected::TooOld {
                ltime,
                watermark: self.watermark,
            });
        }
        if !self.seen.insert((ltime, id)) {
            return Ok(false);
        }
        // Every pass removes at least one id, so this ends even at `u64::MAX` (where
        // the watermark cannot move past the dropped ids).
        while self.seen.len() > max_ids.max(1) {
            let Some((lowest, _)) = self.seen.pop_first() else {
                break;
            };
            // Ids sharing the dropped time go too: the watermark must pass them all.
            while self.seen.first().is_some_and(|&(t, _)| t == lowest) {
                self.seen.pop_first();
            }
            self.watermark = self.watermark.max(lowest.saturating_add(1));
        }
        Ok(true)
    }

    /// Refuses everything below `ltime` from now on (never lowers the watermark).
    pub fn raise_watermark(&mut self, ltime: LamportTime) {
        if ltime > self.watermark {
            self.watermark = ltime;
            self.seen = self.seen.split_off(&(ltime, 0));
        }
    }
}

/// Bounds of an [`EventLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogConfig {
    /// How many recent events (with payload) to keep for push/pull.
    pub max_recent: usize,
    /// How long to keep a recent event after receiving it.
    pub max_recent_age: Duration,
    /// How many delivered ids to remember (the dedupe window).
    pub max_ids: usize,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            max_recent: 256,
            max_recent_age: Duration::from_secs(3600),
            max_ids: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recent {
    event: UserEvent,
    received: Duration,
}

/// The serialisable state of an [`EventLog`] for the restart snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogSnapshot {
    /// Events below this Lamport time are refused.
    pub watermark: LamportTime,
    /// Delivered `(ltime, id)` pairs at or above the watermark.
    pub delivered: Vec<(LamportTime, EventId)>,
    /// Recent events with their receive time (UNIX-epoch duration).
    pub recent: Vec<(UserEvent, Duration)>,
}

/// Exactly-once delivery filter plus a bounded log of recent events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    config: EventLogConfig,
    ids: DedupeWindow,
    recent: BTreeMap<(LamportTime, EventId), Recent>,
}

impl EventLog {
    /// An empty log.
    pub fn new(config: EventLogConfig) -> Self {
        Self {
            config,
            ids: DedupeWindow::new(),
            recent: BTreeMap::new(),
        }
    }

    /// The bounds in use.
    pub fn config(&self) -> &EventLogConfig {
        &self.config
    }

    /// Lowest Lamport time still accepted.
    pub fn watermark(&self) -> LamportTime {
        self.ids.watermark()
    }

    /// Whether the event was already delivered (without recording it).
    pub fn contains(&self, ev: &UserEvent) -> bool {
        self.ids.contains(ev.ltime, ev.id.0)
    }

    /// `Ok(true)` exactly once per event: deliver it. `Ok(false)`: duplicate, ignore.
    /// `Err`: too old, dropped. `now` is the wall-clock receive time.
    pub fn observe(&mut self, ev: &UserEvent, now: Duration) -> Result<bool, EventRejected> {
        if !self.ids.observe(ev.ltime, ev.id.0, self.config.max_ids)? {
            return Ok(false);
        }
        self.recent.insert(
            (ev.ltime, ev.id),
            Recent {
                event: ev.clone(),
                received: now,
            },
        );
        self.trim(now);
        Ok(true)
    }

    /// Ignore every event below `ltime` from now on (Serf's "ignore old events on
    /// join": call it with the cluster's event clock after the first push/pull when a
    /// fresh node must not replay history).
    pub fn ignore_before(&mut self, ltime: LamportTime) {
        self.ids.raise_watermark(ltime);
        self.trim_below_watermark();
    }

    /// Drops recent events older than `max_recent_age` (their ids are kept).
    pub fn prune(&mut self, now: Duration) {
        self.trim(now);
    }

    /// Recent events in Lamport order (for push/pull).
    pub fn recent(&self) -> impl Iterator<Item = &UserEvent> {
        self.recent.values().map(|r| &r.event)
    }

    /// Number of recent events held.
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Number of remembered delivered ids.
    pub fn delivered_len(&self) -> usize {
        self.ids.len()
    }

    /// State for the restart snapshot.
    pub fn snapshot(&self) -> EventLogSnapshot {
        EventLogSnapshot {
            watermark: self.ids.watermark(),
            delivered: self
                .ids
                .seen
                .iter()
                .map(|&(t, id)| (t, EventId(id)))
                .collect(),
            recent: self
                .recent
                .values()
                .map(|r| (r.event.clone(), r.received))
                .collect(),
        }
    }

    /// Rebuilds a log from a snapshot, applying `config`'s bounds at `now`.
    pub fn restore(config: EventLogConfig, snap: EventLogSnapshot, now: Duration) -> Self {
        let mut log = Self::new(config);
        log.ids.raise_watermark(snap.watermark);
        for (t, id) in snap.delivered {
            // Errors only for entries below the watermark, which are meant to be gone.
            let _ = log.ids.observe(t, id.0, config.max_ids);
        }
        for (event, received) in snap.recent {
            if log.ids.contains(event.ltime, event.id.0) {
                log.recent
                    .insert((event.ltime, event.id), Recent { event, received });
            }
        }
        log.trim(now);
        log
    }

    fn trim(&mut self, now: Duration) {
        self.trim_below_watermark();
        let max_age = self.config.max_recent_age;
        self.recent
            .retain(|_, r| now.saturating_sub(r.received) <= max_age);
        while self.recent.len() > self.config.max_recent {
            self.recent.pop_first();
        }
    }

    fn trim_below_watermark(&mut self) {
        let wm = self.ids.watermark();
        if self.recent.first_key_value().is_some_and(|(k, _)| k.0 < wm) {
            self.recent = self.recent.split_off(&(wm, EventId(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn ev(ltime: u64, id: u128) -> UserEvent {
        UserEvent::new(EventId(id), "node1", ltime, "deploy", b"v1".to_vec()).unwrap()
    }

    #[test]
    fn size_cap() {
        assert_eq!(MAX_EVENT_SIZE, 998);
        let name = "n";
        let ok = vec![0u8; MAX_EVENT_SIZE - name.len()];
        UserEvent::new(EventId(1), "a", 1, name, ok).unwrap();
        let big = vec![0u8; MAX_EVENT_SIZE - name.len() + 1];
        let err = UserEvent::new(EventId(1), "a", 1, name, big).unwrap_err();
        assert_eq!(
            err,
            EventError::EventTooLarge {
                size: MAX_EVENT_SIZE + 1,
                max: MAX_EVENT_SIZE
            }
        );
        assert!(err.to_string().contains("999 bytes"), "{err}");
    }

    #[test]
    fn names_and_create() {
        assert!(matches!(
            UserEvent::new(EventId(1), "a", 1, "", vec![]),
            Err(EventError::BadName { .. })
        ));
        assert!(matches!(
            UserEvent::new(EventId(1), "a", 1, "has space", vec![]),
            Err(EventError::BadName { .. })
        ));
        assert!(matches!(
            UserEvent::new(EventId(1), "bad origin", 1, "x", vec![]),
            Err(EventError::BadOrigin(_))
        ));
        let mut rng = StdRng::seed_from_u64(1);
        let mut clock = LamportClock::at(5);
        let e = UserEvent::create(&mut rng, &mut clock, "me", "deploy", vec![1]).unwrap();
        assert_eq!(e.ltime, 6);
        assert_eq!(clock.time(), 6);
        assert!(UserEvent::create(&mut rng, &mut clock, "me", "", vec![]).is_err());
        assert_eq!(clock.time(), 6, "invalid events do not advance the clock");
        let e2 = UserEvent::create(&mut rng, &mut clock, "me", "deploy", vec![1]).unwrap();
        assert_ne!(e.id, e2.id);
    }

    #[test]
    fn exactly_once() {
        let mut log = EventLog::new(EventLogConfig::default());
        let e = ev(3, 42);
        assert_eq!(log.observe(&e, T0), Ok(true));
        assert_eq!(log.observe(&e, T0), Ok(false));
        assert_eq!(
            log.observe(&e.clone(), T0 + Duration::from_secs(1)),
            Ok(false)
        );
        assert_eq!(log.observe(&ev(3, 43), T0), Ok(true));
        assert_eq!(log.recent().count(), 2);
    }

    #[test]
    fn bounded_by_count_and_age_ids_survive() {
        let cfg = EventLogConfig {
            max_recent: 2,
            max_recent_age: Duration::from_secs(60),
            max_ids: 100,
        };
        let mut log = EventLog::new(cfg);
        for i in 1..=4 {
            assert_eq!(log.observe(&ev(i, u128::from(i)), T0), Ok(true));
        }
        let times: Vec<_> = log.recent().map(|e| e.ltime).collect();
        assert_eq!(times, vec![3, 4]);
        // Pruned payloads are still duplicates.
        assert_eq!(log.observe(&ev(1, 1), T0), Ok(false));

        log.prune(T0 + Duration::from_secs(61));
        assert_eq!(log.recent_len(), 0);
        assert_eq!(log.delivered_len(), 4);
        assert_eq!(log.observe(&ev(4, 4), T0), Ok(false));
    }

    #[test]
    fn too_old_after_id_window_moves() {
        let cfg = EventLogConfig {
            max_ids: 3,
            ..EventLogConfig::default()
        };
        let mut log = EventLog::new(cfg);
        for i in 1..=4 {
            log.observe(&ev(i, u128::from(i)), T0).unwrap();
        }
        assert_eq!(log.watermark(), 2);
        let err = log.observe(&ev(1, 1), T0).unwrap_err();
        assert_eq!(
            err,
            EventRejected::TooOld {
                ltime: 1,
                watermark: 2
            }
        );
        assert!(err.to_string().contains("older than the remembered window"));
        // A never-seen event below the watermark is refused too.
        assert!(log.observe(&ev(1, 99), T0).is_err());
        assert!(log.recent().all(|e| e.ltime >= 2));

        log.ignore_before(10);
        assert_eq!(log.recent_len(), 0);
        assert!(log.observe(&ev(9, 100), T0).is_err());
        assert_eq!(log.observe(&ev(10, 100), T0), Ok(true));
    }

    #[test]
    fn same_ltime_ids_dropped_together() {
        let mut w = DedupeWindow::new();
        w.observe(5, 1, 2).unwrap();
        w.observe(5, 2, 2).unwrap();
        w.observe(6, 3, 2).unwrap();
        // Dropping (5,1) must also drop (5,2): the watermark moves to 6.
        assert_eq!(w.watermark(), 6);
        assert!(w.observe(5, 2, 2).is_err());
        assert_eq!(w.observe(6, 3, 2), Ok(false));
    }

    /// Regression (issue 10, item 4): at `u64::MAX` the watermark could not move past
    /// the lowest id, so evicting looped forever.
    #[test]
    fn eviction_ends_at_u64_max() {
        let mut w = DedupeWindow::new();
        for id in 0..4 {
            w.observe(u64::MAX, id, 2).unwrap();
        }
        assert!(w.len() <= 2, "{}", w.len());
        assert_eq!(w.watermark(), u64::MAX);
    }

    #[test]
    fn snapshot_restore_never_redelivers() {
        let cfg = EventLogConfig {
            max_recent: 2,
            ..EventLogConfig::default()
        };
        let mut log = EventLog::new(cfg);
        for i in 1..=5 {
            log.observe(&ev(i, u128::from(i)), T0).unwrap();
        }
        let snap = log.snapshot();
        let bytes = postcard::to_stdvec(&snap).unwrap();
        let json = serde_json::to_string(&snap).unwrap();
        let back: EventLogSnapshot = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<EventLogSnapshot>(&json).unwrap()
        );

        let mut restored = EventLog::restore(cfg, back, T0);
        assert_eq!(restored, log);
        for i in 1..=5 {
            assert_eq!(restored.observe(&ev(i, u128::from(i)), T0), Ok(false));
        }
        assert_eq!(restored.observe(&ev(6, 6), T0), Ok(true));

        // Restoring with tighter bounds applies them.
        let tight = EventLogConfig {
            max_recent: 1,
            max_ids: 2,
            ..cfg
        };
        let small = EventLog::restore(tight, log.snapshot(), T0);
        assert_eq!(small.recent_len(), 1);
        assert_eq!(small.delivered_len(), 2);
        assert_eq!(small.watermark(), 4);
    }
}
