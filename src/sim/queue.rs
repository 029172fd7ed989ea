//! The simulator's virtual timeline: items in time order, ties in the order they were
//! queued, so a run is a pure function of its seed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

struct Entry<T> {
    at: Duration,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    // Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What happens next, and when.
pub struct Timeline<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> Timeline<T> {
    /// Queues `item` at `at`.
    pub fn push(&mut self, at: Duration, item: T) {
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            item,
        });
    }

    /// The earliest item if it is due by `until`.
    pub fn pop_until(&mut self, until: Duration) -> Option<(Duration, T)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        self.heap.pop().map(|e| (e.at, e.item))
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
