//! The single ordered timer scheduler of the agent task.
//!
//! foca hands out timers through `AccumulatingRuntime::to_schedule`; delivering them out
//! of order (e.g. one tokio task per timer) breaks its probe logic (foca issue #26). So
//! every [`Timer`] the state machine asks for — foca's and its own (query deadlines,
//! join and handler retries) — goes into one min-heap keyed by `(fire_at, seq)`. Equal
//! deadlines fire in submission order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::sansio::Timer;
use crate::gossip::QueryId;

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    what: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Min-heap of timers.
#[derive(Debug, Default)]
pub struct Scheduler {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires `what` after `after` from `now`.
    pub fn submit(&mut self, now: Instant, after: Duration, what: Timer) {
        self.seq += 1;
        self.heap.push(Entry {
            at: now + after,
            seq: self.seq,
            what,
        });
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Pops the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.heap.peek()?.at <= now {
            self.heap.pop().map(|e| e.what)
        } else {
            None
        }
    }

    /// Drops the deadline of a query that finished early (it would otherwise stay in
    /// the heap until its time, however far away).
    pub fn cancel_query(&mut self, id: QueryId) {
        self.heap
            .retain(|e| !matches!(e.what, Timer::QueryDeadline(q) if q == id));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_then_submission_order() {
        let mut s = Scheduler::new();
        let t0 = Instant::now();
        s.submit(t0, Duration::from_millis(20), Timer::RetryJoin);
        s.submit(
            t0,
            Duration::from_millis(10),
            Timer::QueryDeadline(QueryId(1)),
        );
        s.submit(
            t0,
            Duration::from_millis(10),
            Timer::QueryDeadline(QueryId(2)),
        );
        assert!(s.pop_due(t0).is_none());
        let later = t0 + Duration::from_millis(30);
        let order: Vec<_> = std::iter::from_fn(|| s.pop_due(later)).collect();
        assert!(matches!(order[0], Timer::QueryDeadline(QueryId(1))));
        assert!(matches!(order[1], Timer::QueryDeadline(QueryId(2))));
        assert!(matches!(order[2], Timer::RetryJoin));
        assert!(s.is_empty());
    }

    /// Regression (issue 10): deadlines of queries that finished early leaked.
    #[test]
    fn cancelled_query_deadline_is_gone() {
        let mut s = Scheduler::new();
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        s.submit(t0, day, Timer::QueryDeadline(QueryId(7)));
        s.submit(t0, day, Timer::QueryDeadline(QueryId(8)));
        s.cancel_query(QueryId(7));
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.pop_due(t0 + day),
            Some(Timer::QueryDeadline(QueryId(8)))
        ));
    }
}
