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

pub use super::hooks::{HookPoint, HookSet};
use crate::release::history::Verdict;

/// A deploy of `version`, identified by the event that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub event_id: String,
    pub version: String,
    /// Where its artifact is (resolved: never empty) and the digest it must have.
    pub source: Source,
    /// A failing `before_stop` hook of the old release does not stop the deploy.
    pub ignore_stop_hook_failures: bool,
}

/// Where a release's artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub sha256: Option<[u8; 32]>,
    /// The sha256 of its chunk index, when pinned: its pieces may come from peers.
    pub chunks: Option<[u8; 32]>,
    /// The peers that hold it or fetch it now.
    pub swarm: crate::fanout::owners::Swarm,
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
    /// A hook ran (its error carries the tail of its output).
    HookRan(Result<(), String>),
    /// The next instance serves and the old one stopped (or the next one was gone).
    Promoted(Result<(), String>),
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
    /// Run the app's hook `point` in the jail of `release` (or on the host, as configured),
    /// for the deploy of `version` from `previous`.
    RunHook {
        point: HookPoint,
        release: String,
        version: String,
        previous: Option<String>,
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

impl Outcome {
    pub fn event_id(&self) -> &str {
        match self {
            Outcome::Ok { event_id, .. }
            | Outcome::Failed { event_id, .. }
            | Outcome::RolledBack { event_id, .. } => event_id,
        }
    }

    /// The version the deploy was for (not the one rolled back to).
    pub fn version(&self) -> &str {
        match self {
            Outcome::Ok { version, .. }
            | Outcome::Failed { version, .. }
            | Outcome::RolledBack { version, .. } => version,
        }
    }

    /// Why it did not go through; `None` when it did.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::Failed { error, .. } | Outcome::RolledBack { error, .. } => Some(error),
        }
    }
}

/// One step of an activation, forward or back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Fetch,
    /// A hook, in the jail of this release.
    Hook(HookPoint, String),
    /// Stop the instance that serves.
    Stop,
    /// Start this release as the instance that serves.
    Start(String),
    StartNext,
    Check,
    Switch,
    Promote,
    Discard,
    /// Point `current` back at this release (a rollback after the switch).
    Restore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Carrying out `now`, then `rest`, in order.
    Forward {
        now: Step,
        rest: Vec<Step>,
    },
    /// Rolling back to `to` (the release still `current`; none for a first deploy) because
    /// of `error`.
    Back {
        to: Option<String>,
        error: String,
        now: Step,
        rest: Vec<Step>,
    },
}

/// The activation state of one app.
#[derive(Debug, Clone)]
pub struct Activation {
    handover: Handover,
    hooks: HookSet,
    current: Option<String>,
    /// `current` when the activation under way began.
    from: Option<String>,
    /// Whether an instance was stopped or started yet in the activation under way.
    touched: bool,
    /// Whether `current` was switched in the activation under way.
    switched: bool,
    phase: Phase,
    active: Option<Request>,
    pending: Option<Request>,
}

impl Activation {
    /// Starts idle, with the release `current` names.
    pub fn new(current: Option<String>, handover: Handover) -> Self {
        Activation {
            handover,
            hooks: HookSet::default(),
            current,
            from: None,
            touched: false,
            switched: false,
            phase: Phase::Idle,
            active: None,
            pending: None,
        }
    }

    /// The app has these hooks.
    pub fn with_hooks(mut self, hooks: HookSet) -> Self {
        self.hooks = hooks;
        self
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
    /// the step under way (a late answer) change nothing and return no effect.
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
        match (phase, input) {
            (Phase::Idle, Input::Deploy(req)) => self.begin(req),
            (p, Input::Deploy(req)) => {
                self.pending = Some(req);
                (p, vec![])
            }
            (Phase::Forward { now, rest }, input) => match answer(&now, input) {
                None => (Phase::Forward { now, rest }, vec![]),
                Some(Ok(())) => self.forward_done(now, rest),
                Some(Err(e)) => self.forward_failed(now, rest, e),
            },
            (
                Phase::Back {
                    to,
                    error,
                    now,
                    rest,
                },
                input,
            ) => match answer(&now, input) {
                None => (
                    Phase::Back {
                        to,
                        error,
                        now,
                        rest,
                    },
                    vec![],
                ),
                Some(r) => self.back_done(to, error, now, rest, r),
            },
            (Phase::Idle, _) => (Phase::Idle, vec![]),
        }
    }

    /// The order of the steps: the one place it is decided. Hooks the app does not have
    /// are left out, and so are the old release's when there is none.
    fn plan(&self, version: &str) -> Vec<Step> {
        let hook = |p: HookPoint, release: &str| {
            self.hooks
                .has(p)
                .then(|| Step::Hook(p, release.to_string()))
        };
        let old = self.current.as_deref();
        let stop_hook = |p| old.and_then(|o| hook(p, o));
        let new = |p| hook(p, version);
        let steps = match self.handover {
            Handover::Overlap => vec![
                Some(Step::Fetch),
                new(HookPoint::BeforeStart),
                Some(Step::StartNext),
                Some(Step::Check),
                new(HookPoint::AfterStart),
                stop_hook(HookPoint::BeforeStop),
                Some(Step::Switch),
                Some(Step::Promote),
                stop_hook(HookPoint::AfterStop),
            ],
            Handover::StopFirst => vec![
                Some(Step::Fetch),
                stop_hook(HookPoint::BeforeStop),
                Some(Step::Stop),
                stop_hook(HookPoint::AfterStop),
                new(HookPoint::BeforeStart),
                Some(Step::Start(version.to_string())),
                Some(Step::Check),
                new(HookPoint::AfterStart),
                Some(Step::Switch),
            ],
        };
        steps.into_iter().flatten().collect()
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
        let mut steps = self.plan(&req.version);
        steps.reverse();
        self.from = self.current.clone();
        self.touched = false;
        self.switched = false;
        self.active = Some(req);
        let now = steps.pop().expect("a plan starts with the stage");
        self.run(now, steps)
    }

    /// Starts step `now` (then `rest`, kept reversed: the next is last).
    fn run(&mut self, now: Step, rest: Vec<Step>) -> (Phase, Vec<Effect>) {
        self.touched |= matches!(now, Step::Stop | Step::Start(_) | Step::StartNext);
        let effect = self.effect(&now);
        (Phase::Forward { now, rest }, vec![effect])
    }

    fn effect(&self, step: &Step) -> Effect {
        let req = self.active.as_ref().expect("an active request");
        let version = req.version.clone();
        match step {
            Step::Fetch => Effect::Fetch {
                version,
                source: req.source.clone(),
            },
            Step::Hook(point, release) => Effect::RunHook {
                point: *point,
                release: release.clone(),
                version,
                previous: self.from.clone(),
            },
            Step::Stop => Effect::StopJail,
            Step::Start(release) => Effect::StartJail {
                version: release.clone(),
            },
            Step::StartNext => Effect::StartNext { version },
            Step::Check => Effect::CheckHealth { version },
            Step::Switch => Effect::SwitchCurrent { version },
            Step::Promote => Effect::Promote,
            Step::Restore(release) => Effect::SwitchCurrent {
                version: release.clone(),
            },
            Step::Discard => Effect::Discard,
        }
    }

    fn forward_done(&mut self, done: Step, mut rest: Vec<Step>) -> (Phase, Vec<Effect>) {
        if done == Step::Switch {
            self.switched = true;
            self.current = self.active.as_ref().map(|r| r.version.clone());
        }
        match rest.pop() {
            Some(now) => self.run(now, rest),
            None => (Phase::Idle, self.passed()),
        }
    }

    fn forward_failed(&mut self, failed: Step, rest: Vec<Step>, e: String) -> (Phase, Vec<Effect>) {
        let ignore_stop = self
            .active
            .as_ref()
            .is_some_and(|r| r.ignore_stop_hook_failures);
        match failed {
            // Nothing was touched: nothing to undo, and the new release is not to blame
            // for the old one's before_stop.
            Step::Fetch => (Phase::Idle, vec![self.finish_failed(e)]),
            Step::Hook(HookPoint::BeforeStop, _) if !self.touched && !ignore_stop => {
                let why = format!("{e}; nothing was changed");
                (Phase::Idle, vec![self.finish_failed(why)])
            }
            // Nothing left to veto once the old instance stopped: logged by the executor.
            Step::Hook(HookPoint::AfterStop, _) => self.forward_done(failed, rest),
            Step::Hook(HookPoint::BeforeStop, _) if ignore_stop => self.forward_done(failed, rest),
            Step::Hook(HookPoint::BeforeStop, _) => self.roll_back(e, false),
            // `current` names the new release already: it is pointed back first.
            Step::Promote => {
                self.current = self.from.clone();
                self.roll_back(e, true)
            }
            _ => self.roll_back(e, true),
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

    fn finish_failed(&mut self, error: String) -> Effect {
        let req = self.active.take().expect("an active request");
        Effect::Report(Outcome::Failed {
            event_id: req.event_id,
            version: req.version,
            error,
        })
    }

    /// Judges the new release failed (`blame`: it is at fault), stops its instance and
    /// brings back the release still `current` (then its `on_rollback` hook); with none,
    /// reports `failed` once the new instance is stopped (the activation stays active until
    /// then, so its record outlives the stop). After a switch, `current` is pointed back
    /// first.
    fn roll_back(&mut self, error: String, blame: bool) -> (Phase, Vec<Effect>) {
        let version = self
            .active
            .as_ref()
            .expect("an active request")
            .version
            .clone();
        let to = self.current.clone();
        let switched_back = self.switched;
        let stop = match self.handover {
            Handover::StopFirst => Step::Stop,
            Handover::Overlap => Step::Discard,
        };
        let mut steps = Vec::new();
        if let Some(to) = to.as_ref().filter(|_| switched_back) {
            steps.push(Step::Restore(to.clone()));
        }
        steps.push(stop);
        if let Some(to) = &to {
            steps.push(Step::Start(to.clone()));
            if self.hooks.has(HookPoint::OnRollback) {
                steps.push(Step::Hook(HookPoint::OnRollback, to.clone()));
            }
        }
        steps.reverse();
        let now = steps.pop().expect("a rollback stops the new instance");
        let mut effects = Vec::new();
        if blame {
            effects.push(Effect::Judge {
                version,
                verdict: Verdict::Failed,
            });
        }
        effects.push(self.effect(&now));
        (
            Phase::Back {
                to,
                error,
                now,
                rest: steps,
            },
            effects,
        )
    }

    fn back_done(
        &mut self,
        to: Option<String>,
        error: String,
        done: Step,
        mut rest: Vec<Step>,
        result: Result<(), String>,
    ) -> (Phase, Vec<Effect>) {
        let error = match (&done, result) {
            (_, Ok(())) => error,
            (Step::Start(to), Err(e)) => {
                let both = format!("{error}; the rollback to {to} failed too: {e}");
                return (Phase::Idle, vec![self.finish_failed(both)]);
            }
            (Step::Hook(point, _), Err(e)) => format!("{error}; {} hook: {e}", point.key()),
            (Step::Restore(to), Err(e)) => {
                format!("{error}; pointing current back at {to} failed: {e}")
            }
            (_, Err(_)) => error,
        };
        if let Some(now) = rest.pop() {
            let effect = self.effect(&now);
            return (
                Phase::Back {
                    to,
                    error,
                    now,
                    rest,
                },
                vec![effect],
            );
        }
        let Some(to) = to else {
            let why = format!("{error}; no previous release to roll back to");
            return (Phase::Idle, vec![self.finish_failed(why)]);
        };
        let req = self.active.take().expect("an active request");
        let out = Outcome::RolledBack {
            event_id: req.event_id,
            version: req.version,
            to,
            error,
        };
        (Phase::Idle, vec![Effect::Report(out)])
    }
}

/// The result `input` gives the step `now`, or `None` if it is no answer to it.
fn answer(now: &Step, input: Input) -> Option<Result<(), String>> {
    match (now, input) {
        (Step::Fetch, Input::Fetched(r)) => Some(r),
        (Step::Hook(..), Input::HookRan(r)) => Some(r),
        (Step::Stop | Step::Discard, Input::Stopped) => Some(Ok(())),
        (Step::Promote, Input::Promoted(r)) => Some(r),
        (Step::Restore(_), Input::Switched(r)) => Some(r),
        (Step::Start(_) | Step::StartNext, Input::Started(r)) => Some(r),
        (Step::Check, Input::HealthPassed) => Some(Ok(())),
        (Step::Check, Input::HealthFailed(e) | Input::Crashed(e)) => Some(Err(e)),
        (Step::Switch, Input::Switched(r)) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
#[path = "activation_tests.rs"]
mod tests;
