//! Lamport clocks: a causal order for events and queries without synchronised clocks.
//!
//! Like Serf, the agent keeps one clock per message family (user events, queries).
//! Creating a message `increment()`s the clock and stamps the message with the result;
//! receiving any stamped message `witness()`es its time, so the next local message is
//! ordered after everything this node has seen. The event log uses these times to order,
//! prune and refuse too-old events (see [`super::event`]). The clock is a plain value
//! (`Copy`, serde) so the restart snapshot can persist it: a restarted node must never
//! reuse a time it already handed out.

use serde::{Deserialize, Serialize};

/// A Lamport time.
pub type LamportTime = u64;

/// How far ahead of the local clock a received time may be. A key holder (or a bug)
/// could otherwise push every clock to `u64::MAX` with one message, and the persisted
/// clock would stay there. Times beyond are refused; a push/pull moves the clock by at
/// most this much, so a fresh node still catches up with an old cluster.
pub const MAX_AHEAD: LamportTime = 1 << 32;

/// A Lamport clock. Starts at 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LamportClock {
    counter: LamportTime,
}

impl LamportClock {
    /// A clock at 0.
    pub const fn new() -> Self {
        Self { counter: 0 }
    }

    /// A clock restored at `time` (e.g. from a snapshot).
    pub const fn at(time: LamportTime) -> Self {
        Self { counter: time }
    }

    /// The current time.
    pub const fn time(&self) -> LamportTime {
        self.counter
    }

    /// Advances the clock and returns the new time, to stamp a new local message.
    pub fn increment(&mut self) -> LamportTime {
        self.counter = self.counter.saturating_add(1);
        self.counter
    }

    /// Whether a received `time` is within [`MAX_AHEAD`] of this clock.
    pub const fn accepts(&self, time: LamportTime) -> bool {
        time <= self.counter.saturating_add(MAX_AHEAD)
    }

    /// Witnesses a peer's clock from push/pull, moving at most [`MAX_AHEAD`] forward.
    pub fn witness_bounded(&mut self, time: LamportTime) -> bool {
        self.witness(time.min(self.counter.saturating_add(MAX_AHEAD)))
    }

    /// Records that a message stamped `time` was seen: afterwards
    /// `self.time() > time`. Returns whether the clock moved.
    pub fn witness(&mut self, time: LamportTime) -> bool {
        if time < self.counter {
            return false;
        }
        self.counter = time.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_and_witness() {
        let mut c = LamportClock::new();
        assert_eq!(c.time(), 0);
        assert_eq!(c.increment(), 1);
        assert!(c.witness(10));
        assert_eq!(c.time(), 11);
        assert!(!c.witness(3));
        assert_eq!(c.time(), 11);
        assert!(c.witness(11));
        assert_eq!(c.increment(), 13);
    }

    #[test]
    fn serde_roundtrip() {
        let c = LamportClock::at(42);
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<LamportClock>(&bytes).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"counter":42}"#);
    }

    #[test]
    fn far_ahead_is_refused_and_push_pull_steps_are_bounded() {
        let mut c = LamportClock::at(10);
        assert!(c.accepts(10 + MAX_AHEAD));
        assert!(!c.accepts(11 + MAX_AHEAD));
        assert!(!c.accepts(u64::MAX));
        assert!(c.witness_bounded(u64::MAX));
        assert_eq!(c.time(), 11 + MAX_AHEAD);
        // A fresh node catches up with an old cluster in steps.
        assert!(c.accepts(2 * MAX_AHEAD));
    }

    #[test]
    fn saturates() {
        let mut c = LamportClock::at(u64::MAX);
        assert_eq!(c.increment(), u64::MAX);
        c.witness(u64::MAX);
        assert_eq!(c.time(), u64::MAX);
    }
}
