//! A failure that repeats on every retry (an accept loop under EMFILE, say) is logged once
//! per period with the count of the ones left out, so it stays visible without flooding the
//! log.

use std::time::{Duration, Instant};

/// The period the agent's accept loops use.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Decides which of a stream of repeated failures gets a log line.
#[derive(Debug)]
pub struct LogThrottle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub const fn new(period: Duration) -> Self {
        LogThrottle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this failure gets a line (`n` were left out since the last one);
    /// `None` when it is only counted.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_left_out() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(l.due(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(l.due(t0 + s * i / 10), None);
        }
        assert_eq!(l.due(t0 + s * 10), Some(99));
        assert_eq!(l.due(t0 + s * 11), None);
        assert_eq!(l.due(t0 + s * 30), Some(1));
    }
}
