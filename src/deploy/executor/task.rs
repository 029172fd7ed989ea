//! One app's executor task: feeds submits to the [`Activation`] machine and carries out its
//! effects one at a time, feeding each result back, until the executor closes.
//!
//! Every activation ends by the app's `deploy_timeout`, counted from its first step: the
//! fetch is cancelled at the deadline (its blocking thread stops at its next read, the
//! staging directory is removed, `current` is unchanged), and a start or a health check due
//! after it fails, which rolls back. The rollback itself is never cut short. A fetch is also
//! cancelled when a deploy of another version of the app is submitted, so a newer version
//! never waits behind a stuck one, and when the executor shuts down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::store::{self, short};
use super::{ExecutorOptions, Finished, SETTLE, Shared, Submit};
use crate::cancel::{Cancel, Reason};
use crate::deploy::activation::{
    Activation, Effect, Handover, HookPoint, Input, Outcome, Request, Source,
};
use crate::deploy::app::{AppConfig, Probe};
use crate::deploy::health::{ExecContext, wait_healthy};
use crate::deploy::hooks::HookRun;
use crate::deploy::phases::Phase;
use crate::deploy::supervisor::{AppStatus, State, Supervisor};
use crate::release::Layout;
use crate::release::layout::validate_version;

pub(super) struct AppTask {
    app: AppConfig,
    layout: Layout,
    sup: Arc<Supervisor>,
    opts: ExecutorOptions,
    shared: Arc<Mutex<Shared>>,
    done: mpsc::Sender<Finished>,
    machine: Activation,
    /// The pid of the jail the last StartJail started.
    started_pid: Option<i32>,
    /// The version the on-disk activation record names (see [`store::mark`]).
    marked: Option<String>,
    /// Tripped when the executor shuts down; each fetch gets a child of it.
    stopping: Cancel,
    /// The event being activated and when its `deploy_timeout` ends.
    deadline: Option<(String, Instant)>,
    /// What the journal will record of it.
    record: record::Recorder,
}

/// Runs `f` on the blocking pool; a panic there becomes an error, not a panic here.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
}

impl AppTask {
    pub(super) fn new(
        app: AppConfig,
        current: Option<String>,
        sup: Arc<Supervisor>,
        opts: ExecutorOptions,
        shared: Arc<Mutex<Shared>>,
        done: mpsc::Sender<Finished>,
        stopping: Cancel,
    ) -> Self {
        AppTask {
            layout: Layout::new(&app.root),
            machine: Activation::new(current, handover(&app)).with_hooks(app.hooks.set()),
            app,
            sup,
            opts,
            shared,
            done,
            started_pid: None,
            marked: None,
            stopping,
            deadline: None,
            record: Default::default(),
        }
    }

    /// Takes submits from `rx` and carries out the machine's effects; returns once the
    /// executor has closed `rx` and no effect is left. A submit that arrived during an
    /// effect is fed before that effect's result, while the activation is still active: so
    /// it waits (or is ignored, for the event being activated) rather than racing it.
    pub(super) async fn run(mut self, mut rx: watch::Receiver<Option<Submit>>) {
        let mut queue: VecDeque<Effect> = VecDeque::new();
        loop {
            let Some(effect) = queue.pop_front() else {
                if rx.changed().await.is_err() {
                    return;
                }
                self.take_submit(&mut rx, &mut queue).await;
                continue;
            };
            let input = self.carry_out(effect, &rx).await;
            if rx.has_changed().unwrap_or(false) {
                self.take_submit(&mut rx, &mut queue).await;
            }
            if let Some(input) = input {
                queue.extend(self.machine.step(input));
            }
            self.track().await;
        }
    }

    async fn take_submit(
        &mut self,
        rx: &mut watch::Receiver<Option<Submit>>,
        queue: &mut VecDeque<Effect>,
    ) {
        let req = rx.borrow_and_update().clone();
        if let Some(req) = req {
            queue.extend(self.deploy(req).await);
            self.track().await;
        }
    }

    /// Reports `req` failed with `error` before it reached the machine: nothing to do.
    async fn fail(&mut self, req: Submit, error: String) -> Vec<Effect> {
        self.report(Outcome::Failed {
            event_id: req.event_id,
            version: req.version,
            error,
        })
        .await;
        vec![]
    }

    /// Feeds a submit to the machine; a version that is no release name fails at once, and
    /// the event being activated again is ignored (its outcome comes once).
    async fn deploy(&mut self, req: Submit) -> Vec<Effect> {
        self.note_signer(&req);
        if self
            .machine
            .active()
            .is_some_and(|a| a.event_id == req.event_id)
        {
            tracing::debug!(app = %self.app.name, event = %req.event_id, "already being activated");
            return vec![];
        }
        if let Err(e) = validate_version(&req.version) {
            return self.fail(req, e.to_string()).await;
        }
        if self.machine.is_idle() {
            self.resync().await;
            if self.machine.current() == Some(req.version.as_str())
                && let Err(error) = self.ensure_running(&req.version).await
            {
                return self.fail(req, error).await;
            }
        }
        let (layout, version, want) = (self.layout.clone(), req.version.clone(), req.sha256);
        // A release already on disk is used as it is: it must be of the digest asked for.
        let checked = blocking(move || match want {
            Some(want) if store::is_present(&layout, &version) => {
                store::check_present_digest(&layout, &version, &want)
            }
            _ => Ok(()),
        })
        .await;
        if let Err(error) = checked {
            return self.fail(req, error).await;
        }
        // An event without a URL uses this node's own template for the app.
        let url = if req.url.is_empty() {
            self.app.artifact_url(&req.version)
        } else {
            req.url
        };
        self.machine.step(Input::Deploy(Request {
            event_id: req.event_id,
            version: req.version,
            source: Source {
                url,
                sha256: req.sha256,
                chunks: req.chunks,
                swarm: req.swarm,
            },
            ignore_stop_hook_failures: req.ignore_stop_hook_failures,
        }))
    }

    /// Re-reads the store; when `current` was switched behind our back (a `deploy
    /// --rollback` by hand), the idle machine starts again from what the disk says. After
    /// an activation an earlier agent left unfinished, it starts from the release before
    /// it: `current` was never verified, so deploying it again is a full activation.
    async fn resync(&mut self) {
        self.refresh().await;
        let layout = self.layout.clone();
        let left = blocking(move || Ok(store::interrupted(&layout)))
            .await
            .ok()
            .flatten();
        let current = match left {
            Some(m) => {
                tracing::warn!(app = %self.app.name, version = %m.version, from = ?m.from, "an earlier activation was interrupted; its release counts as unverified");
                // Replaced by the next activation's record, or removed if none starts.
                self.marked = Some(m.version);
                m.from
            }
            None => self.shared().view.current.clone(),
        };
        if current.as_deref() != self.machine.current() {
            tracing::info!(app = %self.app.name, ?current, "current changed outside the executor");
            self.machine =
                Activation::new(current, handover(&self.app)).with_hooks(self.app.hooks.set());
        }
    }

    /// For a deploy of the current version: points `current` at it (it may not be, after
    /// an interrupted activation) and starts its jail unless that runs (or waits out a
    /// restart backoff) on that release.
    async fn ensure_running(&mut self, version: &str) -> Result<(), String> {
        let (layout, v) = (self.layout.clone(), version.to_string());
        blocking(move || store::switch(&layout, &v)).await?;
        self.refresh().await;
        let st = self
            .sup
            .status(&self.app.name)
            .await
            .map_err(|e| short(&e))?;
        let up = matches!(st.state, State::Running | State::Starting);
        if up && st.release.as_deref() == Some(version) {
            return Ok(());
        }
        tracing::info!(app = %self.app.name, %version, "starting the current release");
        self.sup
            .start(&self.app.name, Some(version))
            .await
            .map(drop)
            .map_err(|e| short(&e))
    }

    /// When the activation under way must end (set at its first step).
    fn deadline(&mut self) -> Instant {
        let id = self.machine.active().map(|r| r.event_id.clone());
        match (&self.deadline, id) {
            (Some((event, at)), Some(id)) if *event == id => *at,
            (_, id) => {
                let at = Instant::now() + self.app.deploy_timeout;
                self.deadline = id.map(|id| (id, at));
                at
            }
        }
    }

    fn timed_out(&self) -> String {
        Reason::Deadline(self.app.deploy_timeout).to_string()
    }

    fn machine_overlaps(&self) -> bool {
        handover(&self.app) == Handover::Overlap
    }

    /// Whether `version` is what the activation under way brings (not a rollback target).
    fn is_forward(&self, version: &str) -> bool {
        self.machine.active().is_some_and(|r| r.version == version)
    }

    /// Carries out one effect; returns what happened, for the machine. `rx` is watched for
    /// a newer version while a fetch runs.
    async fn carry_out(
        &mut self,
        effect: Effect,
        rx: &watch::Receiver<Option<Submit>>,
    ) -> Option<Input> {
        let name = self.app.name.clone();
        tracing::debug!(app = %name, ?effect, "deploy step");
        let deadline = self.deadline();
        self.begin();
        match effect {
            Effect::Fetch { version, source } => Some(Input::Fetched(
                self.fetch(&version, source, deadline, rx).await,
            )),
            Effect::SwitchCurrent { version } => Some(self.switch(version).await),
            Effect::StopJail => {
                if let Err(e) = self.sup.stop(&name).await {
                    tracing::error!(app = %name, error = %e, "cannot stop the jail");
                }
                Some(Input::Stopped)
            }
            Effect::StartJail { version } => Some(self.start(&version, false, deadline).await),
            Effect::StartNext { version } => Some(self.start(&version, true, deadline).await),
            Effect::RunHook {
                point,
                release,
                version,
                previous,
            } => Some(Input::HookRan(
                self.hook(point, &release, &version, previous, deadline)
                    .await,
            )),
            Effect::Promote => {
                let r = self.sup.promote(&name).await;
                Some(Input::Promoted(r.map(drop).map_err(|e| short(&e))))
            }
            Effect::Discard => {
                if let Err(e) = self.sup.discard(&name).await {
                    tracing::error!(app = %name, error = %e, "cannot stop the new jail");
                }
                Some(Input::Stopped)
            }
            Effect::CheckHealth { version } => {
                let t0 = std::time::Instant::now();
                let input = match tokio::time::timeout_at(deadline, self.check(&version)).await {
                    Ok(input) => input,
                    Err(_) => Input::HealthFailed(format!(
                        "{} (during the health check)",
                        self.timed_out()
                    )),
                };
                self.timed(self.check_phase(), t0.elapsed());
                Some(input)
            }
            Effect::Judge { version, verdict } => {
                let layout = self.layout.clone();
                let r = blocking(move || {
                    crate::release::judge(&layout, &version, verdict).map_err(|e| short(&e))
                })
                .await;
                if let Err(e) = r {
                    tracing::error!(app = %name, error = %e, "cannot record how the activation went");
                }
                None
            }
            Effect::Report(outcome) => {
                // The record goes first: a crash right after the outcome must not find it.
                self.track().await;
                // Then the store is pruned (the new release has its verdict by now), so an
                // outcome means the activation is over, disk included.
                self.prune().await;
                self.report(outcome).await;
                None
            }
        }
    }

    /// Points `current` at `version`. A next instance that ended after its check (during a
    /// hook) is not switched to.
    async fn switch(&mut self, version: String) -> Input {
        if self.machine_overlaps() && self.is_forward(&version) {
            let st = self.sup.status(&self.app.name).await.ok();
            let next = st.as_ref().and_then(|s| s.next.as_ref());
            if self.started_pid.is_none() || next.and_then(|n| n.pid) != self.started_pid {
                let how = next.and_then(|n| n.last_exit.clone()).unwrap_or_default();
                return Input::Switched(Err(format!(
                    "the new instance ended before the switch ({how})"
                )));
            }
        }
        let layout = self.layout.clone();
        let r = blocking(move || store::switch(&layout, &version)).await;
        self.refresh().await;
        Input::Switched(r)
    }

    /// Starts `version` as the instance that serves, or `beside` it; a forward start due
    /// after the deadline fails instead.
    async fn start(&mut self, version: &str, beside: bool, deadline: Instant) -> Input {
        if self.is_forward(version) && Instant::now() >= deadline {
            return Input::Started(Err(self.timed_out()));
        }
        let name = &self.app.name;
        let t0 = std::time::Instant::now();
        let r = match beside {
            true => self.sup.start_next(name, version).await,
            false => self.sup.start(name, Some(version)).await,
        };
        if self.is_forward(version) {
            self.timed(Phase::Start, t0.elapsed());
        }
        self.started_pid = r.as_ref().ok().and_then(|s| started_pid(s, beside));
        Input::Started(r.map(drop).map_err(|e| short(&e)))
    }

    /// Runs the app's hook at `point` in the jail of `release`, for the deploy of `version`
    /// from `previous`; its output's tail goes into the log.
    async fn hook(
        &self,
        point: HookPoint,
        release: &str,
        version: &str,
        previous: Option<String>,
        deadline: Instant,
    ) -> Result<(), String> {
        let Some(hook) = self.app.hooks.0.get(&point) else {
            return Ok(());
        };
        let event = self.machine.active().map(|r| r.event_id.clone());
        let env = [
            ("DROOT_FLEET_APP", self.app.name.clone()),
            ("DROOT_FLEET_VERSION", version.to_string()),
            ("DROOT_FLEET_PREVIOUS_VERSION", previous.unwrap_or_default()),
            ("DROOT_FLEET_EVENT_ID", event.unwrap_or_default()),
            ("DROOT_FLEET_NODE", self.opts.node.clone()),
            ("DROOT_FLEET_HOOK", point.key().to_string()),
            ("DROOT_FLEET_RELEASE", release.to_string()),
        ];
        let run = HookRun {
            exe: self.opts.supervisor.exe.clone(),
            root: self.layout.release(release),
            jail: self.app.jail.clone(),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        };
        let (app, hook_name) = (&self.app.name, point.key());
        // A rollback is never cut short: on_rollback has its own timeout only.
        let deadline = (point != HookPoint::OnRollback).then_some(deadline);
        match crate::deploy::hooks::run(point, hook, &run, deadline).await {
            Ok(tail) => {
                tracing::info!(%app, hook = hook_name, %release, output = %tail, "hook passed");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%app, hook = hook_name, %release, error = %e, "hook failed");
                Err(e)
            }
        }
    }

    /// Prunes the store to `keep` once an activation has ended (failed releases first).
    async fn prune(&self) {
        let (layout, keep) = (self.layout.clone(), self.app.keep);
        let r = blocking(move || {
            if !layout.tool_dir().exists() {
                return Ok(Vec::new());
            }
            crate::release::prune(&layout, keep).map_err(|e| short(&e))
        })
        .await;
        match r {
            Ok(pruned) if pruned.is_empty() => {}
            Ok(pruned) => tracing::info!(app = %self.app.name, ?pruned, "releases pruned"),
            Err(e) => tracing::warn!(app = %self.app.name, error = %e, "cannot prune releases"),
        }
        self.refresh().await;
    }

    /// Health-checks the jail just started: the app's check, or (without one) that it stays
    /// up for [`SETTLE`]. The jail ending meanwhile is a crash.
    async fn check(&mut self, version: &str) -> Input {
        let Ok(mut rx) = self.sup.watch(&self.app.name).await else {
            return Input::Crashed("the app's supervisor task has ended".into());
        };
        let pid = self.started_pid;
        let beside = self.machine_overlaps();
        let gone = move |s: &AppStatus| match beside {
            true => s.next.as_ref().and_then(|n| n.pid) != pid,
            false => s.state != State::Running || s.pid != pid,
        };
        let ctx = ExecContext {
            exe: self.opts.supervisor.exe.clone(),
            root: self.layout.release(version),
            jail: self.app.jail.clone(),
        };
        let mut ready_rx = rx.clone();
        let ready = move |s: &AppStatus| match beside {
            true => s.next.as_ref().is_some_and(|n| n.ready),
            false => s.ready,
        };
        let probe = async {
            match &self.app.health {
                Some(cfg) if cfg.probe == Probe::Notify => {
                    let wait = ready_rx.wait_for(ready);
                    match tokio::time::timeout(cfg.deadline, wait).await {
                        Ok(_) => Ok(()),
                        Err(_) => Err(format!(
                            "no READY=1 from the new instance within {} (sd_notify)",
                            humantime::format_duration(cfg.deadline)
                        )),
                    }
                }
                Some(cfg) => wait_healthy(cfg, &ctx)
                    .await
                    .map(drop)
                    .map_err(|e| short(&e)),
                None => {
                    tokio::time::sleep(SETTLE).await;
                    Ok(())
                }
            }
        };
        let crashed = async {
            match rx.wait_for(gone).await {
                Ok(s) => crash_message(&s),
                Err(_) => "the app's supervisor task has ended".to_string(),
            }
        };
        let result = tokio::select! {
            biased;
            c = crashed => return Input::Crashed(c),
            r = probe => r,
        };
        let now = rx.borrow().clone();
        match result {
            Ok(()) if gone(&now) => Input::Crashed(crash_message(&now)),
            Ok(()) => Input::HealthPassed,
            Err(e) => Input::HealthFailed(e),
        }
    }

    async fn report(&mut self, outcome: Outcome) {
        let app = self.app.name.clone();
        match &outcome {
            Outcome::Ok { event_id, version } => {
                tracing::info!(%app, event = %event_id, %version, "deploy ok")
            }
            Outcome::Failed {
                event_id,
                version,
                error,
            } => tracing::warn!(%app, event = %event_id, %version, %error, "deploy failed"),
            Outcome::RolledBack {
                event_id,
                version,
                to,
                error,
            } => {
                tracing::warn!(%app, event = %event_id, %version, %to, %error, "deploy rolled back")
            }
        }
        let phases = self.record(&outcome).await;
        let finished = Finished {
            app,
            outcome,
            phases,
        };
        if self.done.send(finished).await.is_err() {
            tracing::debug!("nobody listens for deploy outcomes any more");
        }
    }

    /// Re-reads `current`, `previous` and the releases for `status`.
    async fn refresh(&self) {
        let layout = self.layout.clone();
        match blocking(move || store::view(&layout)).await {
            Ok(view) => self.shared().view = view,
            Err(e) => {
                tracing::warn!(app = %self.app.name, error = %e, "cannot read the release store")
            }
        }
    }

    /// Publishes the version being activated, and records it on disk while it lasts.
    async fn track(&mut self) {
        let active = self.machine.active().map(|r| r.version.clone());
        self.shared().activating = active.clone();
        if active == self.marked {
            return;
        }
        let layout = self.layout.clone();
        let r = match &active {
            Some(version) => {
                let m = store::Marker {
                    version: version.clone(),
                    from: self.machine.current().map(str::to_string),
                };
                blocking(move || store::mark(&layout, &m)).await
            }
            None => blocking(move || store::unmark(&layout)).await,
        };
        if let Err(e) = r {
            tracing::warn!(app = %self.app.name, error = %e, "cannot update the activation record");
        }
        self.marked = active;
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn handover(app: &AppConfig) -> Handover {
    match app.overlap {
        true => Handover::Overlap,
        false => Handover::StopFirst,
    }
}

/// The pid of the instance a start started: the next one, or the one that serves.
fn started_pid(s: &AppStatus, beside: bool) -> Option<i32> {
    match beside {
        true => s.next.as_ref().and_then(|n| n.pid),
        false => s.pid,
    }
}

/// Why a jail being checked is no longer the one started.
fn crash_message(s: &AppStatus) -> String {
    let next = s.next.as_ref().and_then(|n| n.last_exit.as_deref());
    let how = next.or(s.last_exit.as_deref()).unwrap_or("ended");
    format!("the jail ended while being checked ({how})")
}

#[path = "fetch_step.rs"]
mod fetch_step;
#[path = "record.rs"]
pub(super) mod record;
