//! A Prometheus histogram: fixed bucket bounds, a count per bucket, a sum and a count.
//!
//! Its memory is fixed at creation (one counter per bound), whatever is observed. An
//! observation goes into the first bucket whose upper bound it does not exceed (`le`
//! is inclusive), or only into `+Inf`; a NaN is not counted.

/// Bucket bounds for the deploy phases, in seconds: 10 ms to 10 min.
pub const PHASE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Observations of one labelled series.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram as rendered: cumulative `(upper bound, count)` pairs ending with
/// `(+Inf, count)`, the sum and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, finite).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(bounds.iter().all(|b| b.is_finite()));
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets = bounds
            .zip(&self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect();
        Snapshot {
            buckets,
            sum: self.sum,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_buckets_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.0, 1.0, 1.5, 2.0, 2.5, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 4), (f64::INFINITY, 5)]);
        assert_eq!((s.count, s.sum), (5, 7.0));
    }

    #[test]
    fn phase_buckets_span_ten_ms_to_ten_minutes() {
        assert_eq!(PHASE_BUCKETS.first(), Some(&0.01));
        assert_eq!(PHASE_BUCKETS.last(), Some(&600.0));
        let mut h = Histogram::new(PHASE_BUCKETS);
        h.observe(3600.0);
        let s = h.snapshot();
        assert_eq!(s.buckets.len(), PHASE_BUCKETS.len() + 1);
        assert_eq!(s.buckets[PHASE_BUCKETS.len() - 1].1, 0);
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
    }
}
