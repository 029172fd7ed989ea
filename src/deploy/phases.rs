//! How long each phase of one activation took, as the executor measured it (the machine in
//! [`super::activation`] has no clock). Each outcome carries one [`PhaseTimes`]; the deploy
//! journal keeps it, and [`PhaseTimes::iter`] hands out `(name, duration)` pairs for
//! anything that aggregates them.
//!
//! A phase that did not run (a release already on disk is not fetched; a failed fetch
//! starts nothing) has no duration, rather than zero. Only the steps that bring the new
//! release are timed; the steps of a rollback are not.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One timed phase of an activation (see the executor's module doc for where each begins
/// and ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Opening the artifact: connection, request, the response's head.
    Fetch,
    /// Streaming its body through the digest and the unpacker into the release.
    Unpack,
    /// Starting the new release's jail.
    Start,
    /// Waiting for `READY=1` from it (apps with `health.probe = "notify"`).
    Ready,
    /// Its health check (or, without one, the settle time it must stay up).
    Health,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Fetch,
        Phase::Unpack,
        Phase::Start,
        Phase::Ready,
        Phase::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Unpack => "unpack",
            Phase::Start => "start",
            Phase::Ready => "ready",
            Phase::Health => "health",
        }
    }

    fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The duration of each phase that ran. Serialised as `{"fetch": MILLIS, ...}` with only
/// the phases that ran; unknown names are ignored when read, so a newer release may add
/// phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes([Option<Duration>; Phase::ALL.len()]);

impl PhaseTimes {
    /// Records `phase`'s duration (a phase that runs twice keeps the sum).
    pub fn add(&mut self, phase: Phase, d: Duration) {
        let slot = &mut self.0[phase.index()];
        *slot = Some(slot.unwrap_or_default().saturating_add(d));
    }

    pub fn get(&self, phase: Phase) -> Option<Duration> {
        self.0[phase.index()]
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// The phases that ran, in [`Phase::ALL`] order, as `(name, duration)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Duration)> + '_ {
        Phase::ALL
            .into_iter()
            .filter_map(|p| self.get(p).map(|d| (p.as_str(), d)))
    }
}

impl Serialize for PhaseTimes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (name, d) in self.iter() {
            m.serialize_entry(name, &u64::try_from(d.as_millis()).unwrap_or(u64::MAX))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for PhaseTimes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
        let mut t = PhaseTimes::default();
        for (name, ms) in map {
            if let Some(p) = Phase::parse(&name) {
                t.add(p, Duration::from_millis(ms));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_phases_that_ran_are_listed_in_order_and_round_trip_as_millis() {
        let mut t = PhaseTimes::default();
        assert!(t.is_empty() && t.iter().next().is_none());
        t.add(Phase::Health, Duration::from_millis(2500));
        t.add(Phase::Fetch, Duration::from_millis(12));
        t.add(Phase::Fetch, Duration::from_millis(3));
        let pairs: Vec<_> = t.iter().collect();
        assert_eq!(
            pairs,
            [
                ("fetch", Duration::from_millis(15)),
                ("health", Duration::from_millis(2500))
            ]
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"fetch":15,"health":2500}"#);
        assert_eq!(serde_json::from_str::<PhaseTimes>(&json).unwrap(), t);
        // A phase of a newer release is ignored, not an error.
        let newer: PhaseTimes = serde_json::from_str(r#"{"start":7,"warmup":9}"#).unwrap();
        assert_eq!(newer.get(Phase::Start), Some(Duration::from_millis(7)));
        assert_eq!(newer.iter().count(), 1);
    }
}
