//! One app's activation, as a pure state machine: inputs (a deploy request, and what the
//! fetcher, the release store, the supervisor and the health check report back) in,
//! effects (stage, stop, start, check, switch `current`, report) out. No I/O, no clock:
//! the executor that owns it carries out each effect and feeds the result back.
//!
//! The steps, in this order (decided in [`Activation::next`] alone), with
//! [`Handover::Overlap`]:
//! 1. stage: fetch, verify and unpack into `releases/<v>`, `current` untouched (nothing to
//!    do for a release already on disk);
//! 2. start the new release's instance beside the old one, which keeps serving;
//! 3. wait until it is ready;
//! 4. switch `current` to it;
//! 5. stop the old one (it drains), judge the new one passed;
//! 6. report.
//!
//! With [`Handover::StopFirst`] (an app that binds its own port) the old instance stops
//! before the new one starts (step 2 becomes stop, then start; step 5 has nothing to
//! stop): the app is down for its boot time.
//!
//! `current` names a release only once it passed: a restart at any step before brings back
//! the release that was live.
//!
//! Guarantees, each unit-tested:
//! - The version already `current` is a no-op (`ok` at once).
//! - A failed stage reports `failed` and touches nothing else.
//! - A failed start, a failed health check or a crash while checking rolls back: the new
//!   instance is stopped, the release still `current` is started again (with an overlap it
//!   never stopped: starting it is a no-op), and the outcome is `rolled_back` with the error. Without a release before it, the new instance is stopped
//!   and the outcome is `failed`; no `current` ever named it, so nothing starts it later.
//! - A switch that fails after the check passed rolls back the same way.
//! - One activation at a time; a request arriving meanwhile waits, and a newer one replaces
//!   it (the latest desired version wins).
//! - A release that passed its health check is judged `passed`; one that failed (stage
//!   aside: nothing was published) is judged `failed` before anything else is done, so the
//!   store never keeps it as a rollback target nor counts it towards `keep`.

use crate::release::history::Verdict;

/// A deploy of `version`, identified by the event that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub event_id: String,
    pub version: String,
    /// Where its artifact is (resolved: never empty) and the digest it must have.
    pub source: Source,
}

/// Where a release's artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub sha256: Option<[u8; 32]>,
}

/// How a new instance takes over from the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Stop the old instance, then start the new one.
    StopFirst,
    /// Start the new one beside the old one (same sockets), stop the old one once the new
    /// one is ready and `current` names it.
    Overlap,
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
    /// Start `version` as the instance that serves (stopping any other first).
    StartJail {
        version: String,
    },
    /// Start `version` beside the instance that serves.
    StartNext {
        version: String,
    },
    /// The next instance serves; stop the old one.
    Promote,
    /// Stop the next instance; the one that serves is untouched.
    Discard,
    CheckHealth {
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
    Stopping,
    Starting,
    Checking,
    Switching,
    /// Waiting for the old instance to stop, after the switch (overlap).
    Promoting,
    /// Rolling back to `to` (the release still `current`; none for a first deploy) because
    /// of `error`; the step says which answer is awaited.
    RollingBack {
        to: Option<String>,
        error: String,
        step: Back,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    Stopping,
    Starting,
}

/// The activation state of one app.
#[derive(Debug, Clone)]
pub struct Activation {
    handover: Handover,
    current: Option<String>,
    phase: Phase,
    active: Option<Request>,
    pending: Option<Request>,
}

impl Activation {
    /// Starts idle, with the release `current` names.
    pub fn new(current: Option<String>, handover: Handover) -> Self {
        Activation {
            handover,
            current,
            phase: Phase::Idle,
            active: None,
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

    /// The order of the steps: the one place it is decided.
    fn next(&mut self, phase: Phase, input: Input) -> (Phase, Vec<Effect>) {
        let version = self
            .active
            .as_ref()
            .map(|r| r.version.clone())
            .unwrap_or_default();
        match (phase, input) {
            (Phase::Idle, Input::Deploy(req)) => self.begin(req),
            (p, Input::Deploy(req)) => {
                self.pending = Some(req);
                (p, vec![])
            }
            (Phase::Fetching, Input::Fetched(Ok(()))) => match self.handover {
                Handover::StopFirst => (Phase::Stopping, vec![Effect::StopJail]),
                Handover::Overlap => (Phase::Starting, vec![Effect::StartNext { version }]),
            },
            (Phase::Fetching, Input::Fetched(Err(e))) => (Phase::Idle, vec![self.finish_failed(e)]),
            (Phase::Stopping, Input::Stopped) => {
                (Phase::Starting, vec![Effect::StartJail { version }])
            }
            (Phase::Starting, Input::Started(Ok(()))) => {
                (Phase::Checking, vec![Effect::CheckHealth { version }])
            }
            (Phase::Checking, Input::HealthPassed) => {
                (Phase::Switching, vec![Effect::SwitchCurrent { version }])
            }
            (Phase::Switching, Input::Switched(Ok(()))) => {
                self.current = Some(version);
                match self.handover {
                    Handover::StopFirst => (Phase::Idle, self.passed()),
                    Handover::Overlap => (Phase::Promoting, vec![Effect::Promote]),
                }
            }
            (Phase::Promoting, Input::Stopped) => (Phase::Idle, self.passed()),
            (Phase::Starting, Input::Started(Err(e)))
            | (Phase::Checking, Input::HealthFailed(e) | Input::Crashed(e))
            | (Phase::Switching, Input::Switched(Err(e))) => self.roll_back(e, version),
            (Phase::RollingBack { to, error, step }, input) => {
                self.rolling_back(to, error, step, input)
            }
            (p, _) => (p, vec![]),
        }
    }

    /// The activation passed: judge it, report it.
    fn passed(&mut self) -> Vec<Effect> {
        let req = self.active.take().expect("an active request");
        let judge = Effect::Judge {
            version: req.version.clone(),
            verdict: Verdict::Passed,
        };
        let ok = Outcome::Ok {
            event_id: req.event_id,
            version: req.version,
        };
        vec![judge, Effect::Report(ok)]
    }

    fn begin(&mut self, req: Request) -> (Phase, Vec<Effect>) {
        if self.current.as_deref() == Some(req.version.as_str()) {
            let ok = Outcome::Ok {
                event_id: req.event_id,
                version: req.version,
            };
            return (Phase::Idle, vec![Effect::Report(ok)]);
        }
        // Always through the stage: a release on disk when the request came may have been
        // pruned by the activation it waited for (the stage does nothing if it is there).
        let (version, source) = (req.version.clone(), req.source.clone());
        self.active = Some(req);
        (Phase::Fetching, vec![Effect::Fetch { version, source }])
    }

    fn finish_failed(&mut self, error: String) -> Effect {
        let req = self.active.take().expect("an active request");
        Effect::Report(Outcome::Failed {
            event_id: req.event_id,
            version: req.version,
            error,
        })
    }

    /// Judges `version` failed, stops the new instance and brings back the release still
    /// `current`; with none, reports `failed` once the new instance is stopped (the
    /// activation stays active until then, so its record outlives the stop).
    fn roll_back(&mut self, error: String, version: String) -> (Phase, Vec<Effect>) {
        let judge = Effect::Judge {
            version,
            verdict: Verdict::Failed,
        };
        let to = self.current.clone();
        let step = Back::Stopping;
        let stop = match self.handover {
            Handover::StopFirst => Effect::StopJail,
            Handover::Overlap => Effect::Discard,
        };
        (Phase::RollingBack { to, error, step }, vec![judge, stop])
    }

    fn rolling_back(
        &mut self,
        to: Option<String>,
        error: String,
        step: Back,
        input: Input,
    ) -> (Phase, Vec<Effect>) {
        match (step, input, to) {
            (Back::Stopping, Input::Stopped, None) => {
                let why = format!("{error}; no previous release to roll back to");
                (Phase::Idle, vec![self.finish_failed(why)])
            }
            (Back::Stopping, Input::Stopped, Some(to)) => {
                let start = Effect::StartJail {
                    version: to.clone(),
                };
                let (to, step) = (Some(to), Back::Starting);
                (Phase::RollingBack { to, error, step }, vec![start])
            }
            (Back::Starting, Input::Started(Ok(())), Some(to)) => {
                let req = self.active.take().expect("an active request");
                let out = Outcome::RolledBack {
                    event_id: req.event_id,
                    version: req.version,
                    to,
                    error,
                };
                (Phase::Idle, vec![Effect::Report(out)])
            }
            (Back::Starting, Input::Started(Err(e)), to) => {
                let to = to.unwrap_or_default();
                let both = format!("{error}; the rollback to {to} failed too: {e}");
                (Phase::Idle, vec![self.finish_failed(both)])
            }
            (step, _, to) => (Phase::RollingBack { to, error, step }, vec![]),
        }
    }
}

#[cfg(test)]
#[path = "activation_tests.rs"]
mod tests;
