//! Items in time order, ties in the order they were queued: the agent's one timer
//! scheduler (foca's timers must fire in order, foca issue #26) and the simulator's
//! virtual timeline (a run must be a pure function of its seed) are both this.
//! `At` is whatever the caller's clock is: an `Instant`, or virtual time as a `Duration`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug)]
struct Entry<At, T> {
    at: At,
    seq: u64,
    item: T,
}

impl<At: Ord + Copy, T> PartialEq for Entry<At, T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<At: Ord + Copy, T> Eq for Entry<At, T> {}

impl<At: Ord + Copy, T> PartialOrd for Entry<At, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<At: Ord + Copy, T> Ord for Entry<At, T> {
    // Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What happens next, and when.
#[derive(Debug)]
pub struct Timeline<At, T> {
    heap: BinaryHeap<Entry<At, T>>,
    seq: u64,
}

impl<At: Ord + Copy, T> Default for Timeline<At, T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<At: Ord + Copy, T> Timeline<At, T> {
    /// Queues `item` at `at`.
    pub fn push(&mut self, at: At, item: T) {
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            item,
        });
    }

    /// The earliest item if it is due by `until`.
    pub fn pop_until(&mut self, until: At) -> Option<(At, T)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        self.heap.pop().map(|e| (e.at, e.item))
    }

    /// When the earliest item is due.
    pub fn next_at(&self) -> Option<At> {
        self.heap.peek().map(|e| e.at)
    }

    /// Drops every item `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|e| keep(&e.item));
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_then_in_queued_order() {
        let mut t = Timeline::default();
        let ms = Duration::from_millis;
        t.push(ms(5), "late");
        t.push(ms(1), "first");
        t.push(ms(1), "second");
        assert_eq!(t.pop_until(ms(0)), None);
        assert_eq!(t.pop_until(ms(1)), Some((ms(1), "first")));
        assert_eq!(t.pop_until(ms(9)), Some((ms(1), "second")));
        assert_eq!(t.pop_until(ms(9)), Some((ms(5), "late")));
        assert!(t.is_empty());
    }
}
