//! Join rounds with backoff, and the one reconnect in flight, without I/O.
//!
//! Every outgoing push/pull is a [`Dial`]. A join round dials every `join` address at
//! once; when all came back and none succeeded, the next round is due after a backoff
//! (`retry_interval` x 1, 2, 4, 4, ...) unless `retry_join` is off or `retry_max`
//! rounds failed. At most one reconnect (to a failed member) is in flight. The
//! executor carries out the [`DialEffect`]s: dial, arm the retry timer, log giving up.

use std::time::Duration;

/// Why a push/pull was dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// Periodic anti-entropy with a live member (or one that just came up).
    Sync,
    /// A `join` address.
    Join,
    /// A failed member, to re-merge after a partition.
    Reconnect,
}

/// When join rounds are retried (from the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinPolicy {
    /// `retry_join`: retry at all.
    pub retry: bool,
    /// `retry_max`: give up after this many failed rounds (0: never).
    pub max: u32,
    /// `retry_interval`: the first backoff.
    pub interval: Duration,
}

/// What the executor does for [`Dials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialEffect {
    /// Push/pull with `target` (`HOST:PORT`).
    Dial { target: String, kind: Dial },
    /// Start another join round ([`Dials::join_round`]) after `after`; `attempts`
    /// rounds failed so far.
    RetryJoin { after: Duration, attempts: u32 },
    /// No join address answered in `attempts` rounds and no retry is left.
    GaveUp { attempts: u32 },
}

/// Join rounds and the reconnect in flight.
#[derive(Debug, Default)]
pub struct Dials {
    join_attempts: u32,
    join_in_flight: usize,
    join_any_ok: bool,
    reconnect_in_flight: bool,
}

/// The wait before join round `attempts + 1` (`attempts` >= 1 failed so far).
pub fn join_backoff(interval: Duration, attempts: u32) -> Duration {
    interval.saturating_mul(1 << attempts.min(3).saturating_sub(1))
}

impl Dials {
    /// Dials every join address, unless a round is in flight or the node stops.
    pub fn join_round(&mut self, targets: &[String], stopping: bool) -> Vec<DialEffect> {
        if targets.is_empty() || self.join_in_flight > 0 || stopping {
            return Vec::new();
        }
        self.join_in_flight = targets.len();
        self.join_any_ok = false;
        targets
            .iter()
            .map(|t| DialEffect::Dial {
                target: t.clone(),
                kind: Dial::Join,
            })
            .collect()
    }

    /// Dials the failed member `choose` picks, unless one is in flight or the node
    /// stops (`choose` is not called then).
    pub fn reconnect(
        &mut self,
        stopping: bool,
        choose: impl FnOnce() -> Option<String>,
    ) -> Vec<DialEffect> {
        if self.reconnect_in_flight || stopping {
            return Vec::new();
        }
        let Some(target) = choose() else {
            return Vec::new();
        };
        self.reconnect_in_flight = true;
        vec![DialEffect::Dial {
            target,
            kind: Dial::Reconnect,
        }]
    }

    /// A dial of `kind` came back, successful or not.
    pub fn done(&mut self, kind: Dial, ok: bool, policy: &JoinPolicy) -> Vec<DialEffect> {
        match kind {
            Dial::Sync => Vec::new(),
            Dial::Reconnect => {
                self.reconnect_in_flight = false;
                Vec::new()
            }
            Dial::Join => {
                self.join_any_ok |= ok;
                self.join_progress(policy)
            }
        }
    }

    fn join_progress(&mut self, policy: &JoinPolicy) -> Vec<DialEffect> {
        self.join_in_flight = self.join_in_flight.saturating_sub(1);
        if self.join_in_flight > 0 {
            return Vec::new();
        }
        if self.join_any_ok {
            self.join_attempts = 0;
            return Vec::new();
        }
        self.join_attempts += 1;
        let attempts = self.join_attempts;
        if !policy.retry || (policy.max != 0 && attempts >= policy.max) {
            return vec![DialEffect::GaveUp { attempts }];
        }
        vec![DialEffect::RetryJoin {
            after: join_backoff(policy.interval, attempts),
            attempts,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn policy(retry: bool, max: u32) -> JoinPolicy {
        JoinPolicy {
            retry,
            max,
            interval: SEC,
        }
    }

    fn targets() -> Vec<String> {
        vec!["a:1".into(), "b:2".into()]
    }

    #[test]
    fn backoff_doubles_then_caps_at_four_intervals() {
        let waits: Vec<_> = (1..=5).map(|a| join_backoff(SEC, a)).collect();
        assert_eq!(waits, [SEC, 2 * SEC, 4 * SEC, 4 * SEC, 4 * SEC]);
        assert_eq!(join_backoff(Duration::MAX, 3), Duration::MAX);
    }

    #[test]
    fn a_round_dials_every_address_once() {
        let mut d = Dials::default();
        let effects = d.join_round(&targets(), false);
        assert_eq!(effects.len(), 2);
        assert!(effects.iter().all(|e| matches!(
            e,
            DialEffect::Dial {
                kind: Dial::Join,
                ..
            }
        )));
        assert!(
            d.join_round(&targets(), false).is_empty(),
            "one round at a time"
        );
        assert!(
            Dials::default().join_round(&targets(), true).is_empty(),
            "not when stopping"
        );
        assert!(Dials::default().join_round(&[], false).is_empty());
    }

    #[test]
    fn failed_rounds_back_off_and_success_resets() {
        let p = policy(true, 0);
        let mut d = Dials::default();
        for (attempts, expect) in (1..).zip([SEC, 2 * SEC, 4 * SEC, 4 * SEC]) {
            d.join_round(&targets(), false);
            assert!(
                d.done(Dial::Join, false, &p).is_empty(),
                "one still in flight"
            );
            assert_eq!(
                d.done(Dial::Join, false, &p),
                [DialEffect::RetryJoin {
                    after: expect,
                    attempts
                }]
            );
        }
        d.join_round(&targets(), false);
        assert!(d.done(Dial::Join, true, &p).is_empty());
        assert!(
            d.done(Dial::Join, false, &p).is_empty(),
            "one answered: joined"
        );
        d.join_round(&targets(), false);
        d.done(Dial::Join, false, &p);
        assert_eq!(
            d.done(Dial::Join, false, &p),
            [DialEffect::RetryJoin {
                after: SEC,
                attempts: 1
            }],
            "attempts were reset"
        );
    }

    #[test]
    fn gives_up_after_retry_max_or_without_retry() {
        let mut d = Dials::default();
        let p = policy(true, 2);
        d.join_round(&targets()[..1], false);
        assert_eq!(
            d.done(Dial::Join, false, &p),
            [DialEffect::RetryJoin {
                after: SEC,
                attempts: 1
            }]
        );
        d.join_round(&targets()[..1], false);
        assert_eq!(
            d.done(Dial::Join, false, &p),
            [DialEffect::GaveUp { attempts: 2 }]
        );
        let mut d = Dials::default();
        d.join_round(&targets()[..1], false);
        assert_eq!(
            d.done(Dial::Join, false, &policy(false, 0)),
            [DialEffect::GaveUp { attempts: 1 }]
        );
    }

    #[test]
    fn one_reconnect_in_flight() {
        let p = policy(true, 0);
        let mut d = Dials::default();
        assert!(d.reconnect(false, || None).is_empty(), "no failed member");
        let first = d.reconnect(false, || Some("c:3".into()));
        assert_eq!(
            first,
            [DialEffect::Dial {
                target: "c:3".into(),
                kind: Dial::Reconnect
            }]
        );
        let called = std::cell::Cell::new(false);
        assert!(
            d.reconnect(false, || {
                called.set(true);
                Some("d:4".into())
            })
            .is_empty()
        );
        assert!(!called.get(), "no target is chosen while one is in flight");
        assert!(d.done(Dial::Sync, true, &p).is_empty());
        assert!(
            d.reconnect(false, || Some("d:4".into())).is_empty(),
            "a sync does not free it"
        );
        d.done(Dial::Reconnect, false, &p);
        assert_eq!(d.reconnect(false, || Some("d:4".into())).len(), 1);
        assert!(
            Dials::default()
                .reconnect(true, || Some("x:1".into()))
                .is_empty(),
            "not when stopping"
        );
    }
}
