//! One app's activation, as a pure state machine: inputs (a deploy request, and what the
//! fetcher, the release store, the supervisor and the health check report back) in,
//! effects (fetch, switch `current`, stop, start, check, report) out. No I/O, no clock:
//! the executor that owns it carries out each effect and feeds the result back.
//!
//! Guarantees, each unit-tested below:
//! - The version already `current` is a no-op (`ok` at once); a version already in
//!   `releases/` is switched to without a fetch.
//! - A fetch only stages the release (`current` untouched); the switch is its own step.
//! - A failed fetch or switch reports `failed` and activates nothing (a release staged and
//!   never switched to is judged `failed`).
//! - A failed start, a failed health check or a crash while checking rolls back: stop, switch
//!   `current` back, start the previous release, report `rolled_back` with the error. Without
//!   a previous release it stops the jail, removes `current` (so no later start runs a
//!   release that never passed) and reports `failed`; deploying that version again is then
//!   a full activation, not a no-op.
//! - One activation at a time; a request arriving meanwhile waits, and a newer one replaces
//!   it (the latest desired version wins).
//! - A release that passed its health check is judged `passed`; one that failed after the
//!   switch (start, check, crash) is judged `failed`, before anything else is done, so the
//!   store never keeps it as a rollback target nor counts it towards `keep`.

use crate::release::history::Verdict;

/// A deploy of `version`, identified by the event that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub event_id: String,
    pub version: String,
    /// Where its artifact is (resolved: never empty) and the digest it must have.
    pub source: Source,
    /// Whether `releases/<version>` is already on disk.
    pub present: bool,
}

/// Where a release's artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub sha256: Option<[u8; 32]>,
}

/// What happened, reported by the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Deploy(Request),
    Fetched(Result<(), String>),
    /// `current` was switched (or the switch failed).
    Switched(Result<(), String>),
    Stopped,
    Started(Result<(), String>),
    HealthPassed,
    HealthFailed(String),
    /// The new jail ended while it was being checked.
    Crashed(String),
}

/// What the executor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Fetch {
        version: String,
        source: Source,
    },
    SwitchCurrent {
        version: String,
    },
    StopJail,
    StartJail {
        version: String,
    },
    CheckHealth {
        version: String,
    },
    /// Remove `current` if it still names `version` (the only release, which failed).
    ClearCurrent {
        version: String,
    },
    /// Record how the activation of `version` went, in the release store.
    Judge {
        version: String,
        verdict: Verdict,
    },
    Report(Outcome),
}

/// How a deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        event_id: String,
        version: String,
    },
    Failed {
        event_id: String,
        version: String,
        error: String,
    },
    RolledBack {
        event_id: String,
        version: String,
        to: String,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Fetching,
    Switching,
    Stopping,
    Starting,
    Checking,
    /// Rolling back to `to` because of `error`; the step says which answer is awaited.
    RollingBack {
        to: String,
        error: String,
        step: Back,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    Stopping,
    Switching,
    Starting,
}

/// The activation state of one app.
#[derive(Debug, Clone)]
pub struct Activation {
    current: Option<String>,
    phase: Phase,
    active: Option<Request>,
    previous: Option<String>,
    pending: Option<Request>,
}

impl Activation {
    /// Starts idle, with the release `current` names.
    pub fn new(current: Option<String>) -> Self {
        Activation {
            current,
            phase: Phase::Idle,
            active: None,
            previous: None,
            pending: None,
        }
    }

    /// The release `current` names, as far as this machine knows.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Whether no activation is under way.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The request being activated, if any.
    pub fn active(&self) -> Option<&Request> {
        self.active.as_ref()
    }

    /// Feeds one input; returns the effects to carry out, in order. Inputs that do not fit
    /// the phase (a late answer) change nothing and return no effect.
    pub fn step(&mut self, input: Input) -> Vec<Effect> {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let (phase, mut effects) = self.next(phase, input);
        self.phase = phase;
        if self.phase == Phase::Idle
            && let Some(req) = self.pending.take()
        {
            effects.extend(self.step(Input::Deploy(req)));
        }
        effects
    }

    fn next(&mut self, phase: Phase, input: Input) -> (Phase, Vec<Effect>) {
        let version = self.active.as_ref().map(|r| r.version.clone());
        match (phase, input) {
            (Phase::Idle, Input::Deploy(req)) => self.begin(req),
            (p, Input::Deploy(req)) => {
                self.pending = Some(req);
                (p, vec![])
            }
            (Phase::Fetching, Input::Fetched(Ok(()))) => (
                Phase::Switching,
                vec![Effect::SwitchCurrent {
                    version: version.unwrap_or_default(),
                }],
            ),
            (Phase::Fetching, Input::Fetched(Err(e))) => (Phase::Idle, vec![self.finish_failed(e)]),
            (Phase::Switching, Input::Switched(Err(e))) => {
                // A release staged by this activation never went live: not a rollback target.
                let staged = self.active.as_ref().filter(|r| !r.present);
                let judge = staged.map(|r| Effect::Judge {
                    version: r.version.clone(),
                    verdict: Verdict::Failed,
                });
                let report = self.finish_failed(e);
                (Phase::Idle, judge.into_iter().chain([report]).collect())
            }
            (Phase::Switching, Input::Switched(Ok(()))) => {
                self.previous = self.current.replace(version.unwrap_or_default());
                (Phase::Stopping, vec![Effect::StopJail])
            }
            (Phase::Stopping, Input::Stopped) => (
                Phase::Starting,
                vec![Effect::StartJail {
                    version: version.unwrap_or_default(),
                }],
            ),
            (Phase::Starting, Input::Started(Ok(()))) => (
                Phase::Checking,
                vec![Effect::CheckHealth {
                    version: version.unwrap_or_default(),
                }],
            ),
            (Phase::Checking, Input::HealthPassed) => {
                let req = self.active.take().expect("an active request");
                let judge = Effect::Judge {
                    version: req.version.clone(),
                    verdict: Verdict::Passed,
                };
                let ok = Outcome::Ok {
                    event_id: req.event_id,
                    version: req.version,
                };
                (Phase::Idle, vec![judge, Effect::Report(ok)])
            }
            (Phase::Starting, Input::Started(Err(e)))
            | (Phase::Checking, Input::HealthFailed(e) | Input::Crashed(e)) => self.roll_back(e),
            (Phase::RollingBack { to, error, step }, input) => {
                self.rolling_back(to, error, step, input)
            }
            (p, _) => (p, vec![]),
        }
    }

    fn begin(&mut self, req: Request) -> (Phase, Vec<Effect>) {
        if self.current.as_deref() == Some(req.version.as_str()) {
            let ok = Outcome::Ok {
                event_id: req.event_id,
                version: req.version,
            };
            return (Phase::Idle, vec![Effect::Report(ok)]);
        }
        let version = req.version.clone();
        let (present, source) = (req.present, req.source.clone());
        self.active = Some(req);
        if present {
            (Phase::Switching, vec![Effect::SwitchCurrent { version }])
        } else {
            (Phase::Fetching, vec![Effect::Fetch { version, source }])
        }
    }

    fn finish_failed(&mut self, error: String) -> Effect {
        let req = self.active.take().expect("an active request");
        Effect::Report(Outcome::Failed {
            event_id: req.event_id,
            version: req.version,
            error,
        })
    }

    fn roll_back(&mut self, error: String) -> (Phase, Vec<Effect>) {
        let judge = Effect::Judge {
            version: self
                .active
                .as_ref()
                .map(|r| r.version.clone())
                .unwrap_or_default(),
            verdict: Verdict::Failed,
        };
        match self.previous.clone() {
            Some(to) => (
                Phase::RollingBack {
                    to,
                    error,
                    step: Back::Stopping,
                },
                vec![judge, Effect::StopJail],
            ),
            None => {
                let version = self.current.take().unwrap_or_default();
                (
                    Phase::Idle,
                    vec![
                        judge,
                        Effect::StopJail,
                        Effect::ClearCurrent { version },
                        self.finish_failed(format!("{error}; no previous release to roll back to")),
                    ],
                )
            }
        }
    }

    fn rolling_back(
        &mut self,
        to: String,
        error: String,
        step: Back,
        input: Input,
    ) -> (Phase, Vec<Effect>) {
        let at = |step| Phase::RollingBack {
            to: to.clone(),
            error: error.clone(),
            step,
        };
        match (step, input) {
            (Back::Stopping, Input::Stopped) => (
                at(Back::Switching),
                vec![Effect::SwitchCurrent {
                    version: to.clone(),
                }],
            ),
            (Back::Switching, Input::Switched(Ok(()))) => {
                self.current = Some(to.clone());
                (
                    at(Back::Starting),
                    vec![Effect::StartJail {
                        version: to.clone(),
                    }],
                )
            }
            (Back::Starting, Input::Started(Ok(()))) => {
                let req = self.active.take().expect("an active request");
                let out = Outcome::RolledBack {
                    event_id: req.event_id,
                    version: req.version,
                    to,
                    error,
                };
                (Phase::Idle, vec![Effect::Report(out)])
            }
            (
                Back::Switching | Back::Starting,
                Input::Switched(Err(e)) | Input::Started(Err(e)),
            ) => {
                let both = format!("{error}; the rollback to {to} failed too: {e}");
                (Phase::Idle, vec![self.finish_failed(both)])
            }
            (step, _) => (at(step), vec![]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: &str, present: bool) -> Request {
        Request {
            event_id: format!("e-{v}"),
            version: v.into(),
            source: source(v),
            present,
        }
    }

    fn source(v: &str) -> Source {
        Source {
            url: format!("s3://b/web-{v}.tar"),
            sha256: Some([v.len() as u8; 32]),
        }
    }

    fn fetch(version: &str) -> Effect {
        Effect::Fetch {
            version: v(version),
            source: source(version),
        }
    }

    fn v(s: &str) -> String {
        s.to_string()
    }

    fn passed(version: &str) -> Effect {
        Effect::Judge {
            version: v(version),
            verdict: Verdict::Passed,
        }
    }

    fn failed(version: &str) -> Effect {
        Effect::Judge {
            version: v(version),
            verdict: Verdict::Failed,
        }
    }

    /// Runs the machine from v1 to v2 up to the health check.
    fn to_checking(m: &mut Activation) {
        assert_eq!(m.step(Input::Deploy(req("v2", false))), [fetch("v2")]);
        assert_eq!(
            m.step(Input::Fetched(Ok(()))),
            [Effect::SwitchCurrent { version: v("v2") }]
        );
        assert_eq!(m.step(Input::Switched(Ok(()))), [Effect::StopJail]);
        assert_eq!(
            m.step(Input::Stopped),
            [Effect::StartJail { version: v("v2") }]
        );
        assert_eq!(
            m.step(Input::Started(Ok(()))),
            [Effect::CheckHealth { version: v("v2") }]
        );
    }

    #[test]
    fn a_healthy_deploy_reports_ok() {
        let mut m = Activation::new(Some(v("v1")));
        to_checking(&mut m);
        let ok = Outcome::Ok {
            event_id: v("e-v2"),
            version: v("v2"),
        };
        assert_eq!(
            m.step(Input::HealthPassed),
            [passed("v2"), Effect::Report(ok)]
        );
        assert_eq!((m.current(), m.is_idle()), (Some("v2"), true));
    }

    #[test]
    fn failed_health_switches_back_restarts_previous_and_reports_rolled_back() {
        let mut m = Activation::new(Some(v("v1")));
        to_checking(&mut m);
        assert_eq!(
            m.step(Input::HealthFailed(v("GET: 500"))),
            [failed("v2"), Effect::StopJail]
        );
        assert_eq!(
            m.step(Input::Stopped),
            [Effect::SwitchCurrent { version: v("v1") }]
        );
        assert_eq!(
            m.step(Input::Switched(Ok(()))),
            [Effect::StartJail { version: v("v1") }]
        );
        assert_eq!(m.current(), Some("v1"));
        let out = Outcome::RolledBack {
            event_id: v("e-v2"),
            version: v("v2"),
            to: v("v1"),
            error: v("GET: 500"),
        };
        assert_eq!(m.step(Input::Started(Ok(()))), [Effect::Report(out)]);
        assert!(m.is_idle());
    }

    #[test]
    fn a_crash_while_checking_or_a_failed_start_rolls_back_too() {
        let mut m = Activation::new(Some(v("v1")));
        to_checking(&mut m);
        assert_eq!(
            m.step(Input::Crashed(v("exit 1"))),
            [failed("v2"), Effect::StopJail]
        );
        let mut m = Activation::new(Some(v("v1")));
        m.step(Input::Deploy(req("v2", true)));
        m.step(Input::Switched(Ok(())));
        m.step(Input::Stopped);
        assert_eq!(
            m.step(Input::Started(Err(v("no exe")))),
            [failed("v2"), Effect::StopJail]
        );
        assert_eq!(
            m.step(Input::Stopped),
            [Effect::SwitchCurrent { version: v("v1") }]
        );
    }

    /// The fetch stages; a switch that then fails leaves the old release current and
    /// running, and the staged one judged failed (never a rollback target).
    #[test]
    fn a_failed_switch_after_the_stage_activates_nothing() {
        let mut m = Activation::new(Some(v("v1")));
        assert_eq!(m.step(Input::Deploy(req("v2", false))), [fetch("v2")]);
        assert_eq!(
            m.step(Input::Fetched(Ok(()))),
            [Effect::SwitchCurrent { version: v("v2") }]
        );
        let out = m.step(Input::Switched(Err(v("read-only file system"))));
        assert!(
            matches!(&out[..], [j, Effect::Report(Outcome::Failed { .. })] if *j == failed("v2")),
            "{out:?}"
        );
        assert_eq!((m.current(), m.is_idle()), (Some("v1"), true));
        // A release already on disk (an earlier one) is not judged by a failed switch.
        assert_eq!(
            m.step(Input::Deploy(req("v0", true))),
            [Effect::SwitchCurrent { version: v("v0") }]
        );
        let out = m.step(Input::Switched(Err(v("read-only file system"))));
        assert!(
            matches!(&out[..], [Effect::Report(Outcome::Failed { .. })]),
            "{out:?}"
        );
    }

    #[test]
    fn a_failed_rollback_reports_both_errors() {
        let mut m = Activation::new(Some(v("v1")));
        to_checking(&mut m);
        m.step(Input::HealthFailed(v("sick")));
        m.step(Input::Stopped);
        m.step(Input::Switched(Ok(())));
        let out = m.step(Input::Started(Err(v("gone"))));
        match &out[..] {
            [Effect::Report(Outcome::Failed { error, .. })] => {
                assert!(error.contains("sick") && error.contains("gone"), "{error}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn no_previous_release_means_failed() {
        let mut m = Activation::new(None);
        m.step(Input::Deploy(req("v1", false)));
        m.step(Input::Fetched(Ok(())));
        m.step(Input::Switched(Ok(())));
        m.step(Input::Stopped);
        m.step(Input::Started(Ok(())));
        let out = m.step(Input::HealthFailed(v("sick")));
        assert_eq!(out[0], failed("v1"));
        assert_eq!(out[1], Effect::StopJail);
        assert_eq!(out[2], Effect::ClearCurrent { version: v("v1") });
        assert!(
            matches!(&out[3], Effect::Report(Outcome::Failed { error, .. }) if error.contains("no previous"))
        );
        // Regression: the failed release stayed `current` to the machine, so deploying it
        // again was an `ok` no-op with no health check.
        assert_eq!(m.current(), None);
        let out = m.step(Input::Deploy(req("v1", true)));
        assert_eq!(out, [Effect::SwitchCurrent { version: v("v1") }]);
    }

    #[test]
    fn current_is_a_no_op_present_skips_fetch_and_fetch_failure_activates_nothing() {
        let mut m = Activation::new(Some(v("v1")));
        let out = m.step(Input::Deploy(req("v1", true)));
        assert!(matches!(&out[..], [Effect::Report(Outcome::Ok { .. })]));
        assert_eq!(
            m.step(Input::Deploy(req("v0", true))),
            [Effect::SwitchCurrent { version: v("v0") }]
        );
        let mut m = Activation::new(Some(v("v1")));
        m.step(Input::Deploy(req("v2", false)));
        let out = m.step(Input::Fetched(Err(v("digest mismatch"))));
        assert!(
            matches!(&out[..], [Effect::Report(Outcome::Failed { error, .. })] if error == "digest mismatch")
        );
        assert_eq!((m.current(), m.is_idle()), (Some("v1"), true));
    }

    #[test]
    fn requests_during_an_activation_wait_and_the_newest_wins() {
        let mut m = Activation::new(Some(v("v1")));
        m.step(Input::Deploy(req("v2", false)));
        assert!(m.step(Input::Deploy(req("v3", false))).is_empty());
        assert!(m.step(Input::Deploy(req("v4", false))).is_empty());
        assert!(m.step(Input::HealthPassed).is_empty(), "late input ignored");
        let out = m.step(Input::Fetched(Err(v("404"))));
        assert!(matches!(&out[0], Effect::Report(Outcome::Failed { .. })));
        assert_eq!(out[1], fetch("v4"));
    }
}
