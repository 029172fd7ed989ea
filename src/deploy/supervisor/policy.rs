//! The restart decision, pure: how a jail ended, the app's policy and its recent history in,
//! "restart after this delay" or "stay down" out. No clock, no process: unit-tested alone.

use std::time::Duration;

use crate::deploy::app::{Backoff, RestartPolicy};

/// How a supervised jail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `droot-fleet run` exited with this code (128+N: the command was killed by signal N;
    /// 125–127: the jail could not be set up or the command not run).
    Exited(i32),
    /// `droot-fleet run` itself was killed by this signal.
    Signaled(i32),
    /// An adopted jail (not our child): it is gone, its status cannot be known.
    Unknown,
}

impl Ended {
    /// A clean exit (code 0) is the only success.
    pub fn is_success(self) -> bool {
        self == Ended::Exited(0)
    }
}

/// What to do after an exit that nobody asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again after `delay`; `failures` is the new consecutive-failure count.
    Restart { delay: Duration, failures: u32 },
    /// Leave it down: `failed` when the exit was a failure.
    StayDown { failed: bool },
}

/// Decides after an unrequested exit. `failures` counts the consecutive short runs before
/// this one; a run that lasted `backoff.reset_after` or longer starts the count afresh.
pub fn decide(
    policy: RestartPolicy,
    backoff: &Backoff,
    ended: Ended,
    ran_for: Duration,
    failures: u32,
) -> Decision {
    let failed = !ended.is_success();
    let restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !restart {
        return Decision::StayDown { failed };
    }
    let failures = if ran_for >= backoff.reset_after {
        1
    } else {
        failures.saturating_add(1)
    };
    Decision::Restart {
        delay: delay(backoff, failures),
        failures,
    }
}

/// `initial * 2^(failures-1)`, capped at `max`.
pub fn delay(backoff: &Backoff, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    backoff
        .initial
        .checked_mul(1u32 << shift)
        .map_or(backoff.max, |d| d.min(backoff.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(10),
        }
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms: Vec<u128> = (1..=7).map(|n| delay(&b(), n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(delay(&b(), u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn always_restarts_even_after_success_and_counts_failures() {
        let d = decide(RestartPolicy::Always, &b(), Ended::Exited(0), SHORT, 2);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(400),
                failures: 3
            }
        );
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let d = decide(
            RestartPolicy::Always,
            &b(),
            Ended::Signaled(9),
            Duration::from_secs(11),
            6,
        );
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(100),
                failures: 1
            }
        );
    }

    #[test]
    fn on_failure_restarts_failures_and_unknown_only() {
        let p = RestartPolicy::OnFailure;
        assert_eq!(
            decide(p, &b(), Ended::Exited(0), SHORT, 0),
            Decision::StayDown { failed: false }
        );
        for e in [Ended::Exited(1), Ended::Signaled(9), Ended::Unknown] {
            assert!(matches!(
                decide(p, &b(), e, SHORT, 0),
                Decision::Restart { failures: 1, .. }
            ));
        }
    }

    #[test]
    fn never_stays_down() {
        let p = RestartPolicy::Never;
        assert_eq!(
            decide(p, &b(), Ended::Exited(3), SHORT, 0),
            Decision::StayDown { failed: true }
        );
        assert_eq!(
            decide(p, &b(), Ended::Exited(0), SHORT, 0),
            Decision::StayDown { failed: false }
        );
    }
}
