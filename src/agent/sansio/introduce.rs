//! Push/pulls with senders whose member card this node lacks, rate-limited.
//!
//! With node identities, a packet from an identity no verified card vouches for is
//! dropped ([`crate::gossip::screen`]). Usually the card arrives by gossip first; when it
//! did not (this node missed it, or the sender restarted and its new card went by), one
//! push/pull with the sender brings every card it holds, its own included. A forger can
//! send such packets from anywhere, so dials are bounded: one per source address per
//! [`INTERVAL`], [`MIN_GAP`] between any two, and at most [`MAX_SOURCES`] addresses
//! remembered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Least time between two introductions to one address.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Least time between any two introductions.
pub const MIN_GAP: Duration = Duration::from_millis(200);
/// Most addresses remembered.
pub const MAX_SOURCES: usize = 256;

/// When each source was last dialled. See the module docs.
#[derive(Debug, Default)]
pub struct Introductions {
    last: HashMap<SocketAddr, Instant>,
    last_any: Option<Instant>,
}

impl Introductions {
    /// Whether to dial `from` now (and, if so, records it).
    pub fn due(&mut self, from: SocketAddr, now: Instant) -> bool {
        let recent = |at: &Instant| now.saturating_duration_since(*at) < INTERVAL;
        if self.last.get(&from).is_some_and(recent)
            || self
                .last_any
                .is_some_and(|at| now.saturating_duration_since(at) < MIN_GAP)
        {
            return false;
        }
        if self.last.len() >= MAX_SOURCES {
            self.last.retain(|_, at| recent(at));
            if self.last.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.last.insert(from, now);
        self.last_any = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn one_dial_per_source_per_interval_and_a_gap_between_any_two() {
        let t0 = Instant::now();
        let mut i = Introductions::default();
        assert!(i.due(addr(1), t0));
        assert!(!i.due(addr(1), t0 + Duration::from_secs(1)));
        assert!(!i.due(addr(2), t0 + Duration::from_millis(50)), "gap");
        assert!(i.due(addr(2), t0 + MIN_GAP));
        assert!(i.due(addr(1), t0 + INTERVAL));
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut i = Introductions::default();
        for p in 0..MAX_SOURCES as u16 {
            assert!(i.due(addr(p), t0 + MIN_GAP * u32::from(p)));
        }
        assert_eq!(i.last.len(), MAX_SOURCES);
        let later = t0 + MIN_GAP * (MAX_SOURCES as u32);
        assert!(
            i.due(addr(9999), later),
            "sources dialled long ago make room"
        );
        assert!(i.last.len() < MAX_SOURCES);
    }
}
