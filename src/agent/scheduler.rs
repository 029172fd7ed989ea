//! The single ordered timer scheduler of the agent task.
//!
//! foca hands out timers through `AccumulatingRuntime::to_schedule`; delivering them out
//! of order (e.g. one tokio task per timer) breaks its probe logic (foca issue #26). So
//! every [`Timer`] the state machine asks for — foca's and its own (query deadlines,
//! join and handler retries) — goes into one min-heap keyed by `(fire_at, seq)`. Equal
//! deadlines fire in submission order.

use std::time::Duration;

use tokio::time::Instant;

use super::sansio::Timer;
use crate::gossip::QueryId;
use crate::timeline::Timeline;

/// Min-heap of timers.
#[derive(Debug, Default)]
pub struct Scheduler {
    timeline: Timeline<Instant, Timer>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires `what` after `after` from `now`.
    pub fn submit(&mut self, now: Instant, after: Duration, what: Timer) {
        self.timeline.push(now + after, what);
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timeline.next_at()
    }

    /// Pops the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        self.timeline.pop_until(now).map(|(_, t)| t)
    }

    /// Drops the deadline of a query that finished early (it would otherwise stay in
    /// the heap until its time, however far away).
    pub fn cancel_query(&mut self, id: QueryId) {
        (self.timeline).retain(|t| !matches!(t, Timer::QueryDeadline(q) if *q == id));
    }

    pub fn len(&self) -> usize {
        self.timeline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timeline.is_empty()
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
