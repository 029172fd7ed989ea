//! The deploy executor: the I/O shell that carries out the effects of each app's
//! [`Activation`](super::activation::Activation) — fetch into the release store, switch
//! `current`, stop and start the jail through the [`Supervisor`], check health, roll back —
//! and reports each outcome on a channel. The controller (gossip, signatures, waves) decides
//! *what* to deploy; this decides nothing, it only does it.
//!
//! - One task per app, so apps are independent: a slow fetch of one does not hold another.
//!   A submit only replaces the app's latest request (a `watch` slot); the task feeds it to
//!   the machine between effects, so a newer request replaces one still waiting.
//! - Every blocking filesystem step (fetch and unpack, switch, reading the store) runs on
//!   `spawn_blocking`; the async threads only wait.
//! - Bad input (a version that is not a valid release name, an unparsable URL) becomes a
//!   `failed` outcome naming the problem; nothing panics and nothing is activated.
//! - An activation under way is recorded in the store (`.droot-fleet/activating.json`)
//!   until its outcome. If the agent dies meanwhile, the new release may be running though
//!   it never passed (`current` names it only once it passed; a store an older agent left
//!   may differ); the next executor judges it failed and starts what `current` names (the
//!   release before it; with none, the app stays stopped) before anything else, so an
//!   unverified release never runs on, and the controller's retry of that deploy is a full
//!   activation, not an `ok` no-op.
//! - A deploy of the version already current is `ok` at once, without a restart; if its
//!   jail is down (stopped, or failed and not restarted), it is started first.
//! - Every activation ends: by the app's `deploy_timeout`, when a deploy of another version
//!   of the app arrives during its fetch, or when the executor shuts down (see `task.rs`).
//!   The unpack is held to the app's `max_bytes` and `max_ratio`.
//! - Releases are pruned once an activation has ended and the new release is judged (see
//!   [`crate::release::history`]): failed ones first, never the rollback target.
//! - [`Executor::status`] reads `current`, `previous` and the releases from disk each time,
//!   so a switch made by hand shows, and the next deploy starts from it.
//! - Every outcome is appended to the app's deploy journal ([`crate::deploy::journal`],
//!   loaded at start, read back with [`Executor::history`]) before it is reported.
//!
//! Phase durations ([`PhaseTimes`], on each [`Finished`]) are measured here, around the
//! effects of the forward steps (a rollback's steps are not timed). The artifact streams
//! into the unpacker, so there is no moment when it is "downloaded": `fetch` ends when the
//! object is open (connection, request, the response's head: S3's `GetObject` answered,
//! the HTTP status read, the file opened), and `unpack` is the rest of the stage step —
//! reading the body through the digest into the unpacker, the digest check and publishing
//! the release. A failed open counts wholly as `fetch`; a release already on disk has
//! neither. `start` is the supervisor's start of the new jail (beside the old one, with an
//! overlap), until it runs; `ready` is the wait for its `READY=1` (apps whose health probe
//! is `notify`), `health` the health check of any other app (without one: the settle time
//! it must stay up).

mod store;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::activation;
use super::app::{AppConfig, Userns};
use super::fetch;
use super::supervisor::{self, Supervisor, SupervisorError};
use crate::artifact::UnpackOptions;
use crate::cancel::{Cancel, Reason};
use crate::deploy::journal::Entry;
pub use crate::deploy::phases::{Phase, PhaseTimes};
use crate::id_range::IdRange;
use crate::release::Layout;

pub use store::{MAX_ERROR, truncate};

/// How long a jail must stay up after its start to count as started, for an app without a
/// health check (one that exits at once is a failed deploy). With a health check, the check
/// decides, and an exit while it runs is a crash.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long [`Executor::shutdown`] lets an activation under way finish before it is cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where artifacts come from, how they are unpacked, and how jails are run.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// This node's name (`DROOT_FLEET_NODE` for hooks).
    pub node: String,
    pub fetch: fetch::FetchOptions,
    pub unpack: UnpackOptions,
    pub supervisor: supervisor::SupervisorOptions,
    /// The agent, whose peers may hold an artifact's pieces (`None`: the store alone).
    pub agent: Option<crate::agent::AgentHandle>,
}

/// A deploy request for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    pub event_id: String,
    pub version: String,
    /// The artifact URL; empty means the app's `artifact` template for `version`.
    pub url: String,
    pub sha256: Option<[u8; 32]>,
    /// The sha256 of the artifact's chunk index, when the event pins one.
    pub chunks: Option<[u8; 32]>,
    /// Who else has the artifact (earlier waves) or fetches it now (this wave).
    pub swarm: crate::fanout::owners::Swarm,
    /// A failing `before_stop` hook of the old release does not stop the deploy.
    pub ignore_stop_hook_failures: bool,
    /// Id of the key that signed the event, for the journal (`None`: unsigned or unknown).
    pub signer: Option<String>,
}

/// How one submitted deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub app: String,
    pub outcome: activation::Outcome,
    /// How long each phase of its activation took (see the module doc).
    pub phases: PhaseTimes,
}

/// One app as the executor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRuntime {
    /// The release `current` names.
    pub current: Option<String>,
    /// What a rollback would go back to.
    pub previous: Option<String>,
    pub jail: supervisor::AppStatus,
    /// Version being activated.
    pub activating: Option<String>,
    /// Releases on disk, in deploy order (oldest first).
    pub releases: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("no app {0:?} in this agent's config; add an [apps.{0}] block or check the name")]
    UnknownApp(String),
    #[error(
        "app {0}: its executor task has ended (see the log for why); restart the agent to deploy it again"
    )]
    TaskGone(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("app {app}: {source} (app not started)")]
    Userns {
        app: String,
        #[source]
        source: crate::release::userns::UsernsError,
    },
}

/// What an app's task shares with [`Executor::status`].
#[derive(Debug, Default)]
struct Shared {
    view: store::View,
    activating: Option<String>,
    /// The journal's entries, oldest first.
    journal: Vec<Entry>,
}

struct AppHandle {
    layout: Layout,
    submit: watch::Sender<Option<Submit>>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

/// Carries out deploys for every configured app.
pub struct Executor {
    sup: Arc<Supervisor>,
    apps: BTreeMap<String, AppHandle>,
    /// Tripped by [`Executor::shutdown`]: every fetch under way stops at its next read.
    stopping: Cancel,
}

impl Executor {
    /// Takes every app under supervision (adopting jails still running from an earlier
    /// agent) and starts any app that is not running from its `current` release (apps with
    /// no release yet stay stopped). An app that cannot be started is logged and left
    /// `failed`; a deploy can fix it. An app that cannot be managed at all is an error, and
    /// then no app is left under supervision (adopted jails keep running).
    pub async fn start(
        apps: BTreeMap<String, AppConfig>,
        opts: ExecutorOptions,
    ) -> Result<(Executor, mpsc::Receiver<Finished>), ExecutorError> {
        let sup = Arc::new(Supervisor::new(opts.supervisor.clone())?);
        let (done_tx, done_rx) = mpsc::channel(64);
        let stopping = Cancel::default();
        let mut handles = BTreeMap::new();
        for (name, mut app) in apps {
            let managed = match resolve_userns(&app).await {
                Ok(range) => {
                    app.jail.userns = range;
                    sup.manage(app.clone()).await.map_err(ExecutorError::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = managed {
                sup.shutdown(true).await;
                return Err(e);
            }
            restart_if_userns_changed(&sup, &app).await;
            let view = bring_up(&sup, &app).await;
            let journal = task::record::load(&app).await;
            let shared = Arc::new(Mutex::new(Shared {
                view: view.clone(),
                activating: None,
                journal: journal
                    .as_ref()
                    .map(|j| j.entries().cloned().collect())
                    .unwrap_or_default(),
            }));
            let (submit, rx) = watch::channel(None);
            let layout = Layout::new(&app.root);
            let t = task::AppTask::new(
                app,
                view.current,
                sup.clone(),
                opts.clone(),
                shared.clone(),
                done_tx.clone(),
                stopping.clone(),
            )
            .with_journal(journal);
            let task = tokio::spawn(t.run(rx));
            handles.insert(
                name,
                AppHandle {
                    layout,
                    submit,
                    shared,
                    task,
                },
            );
        }
        Ok((
            Executor {
                sup,
                apps: handles,
                stopping,
            },
            done_rx,
        ))
    }

    /// Queues a deploy of `req` for `app` (non-blocking). One activation per app at a time;
    /// a newer submit replaces one still waiting. The outcome comes on the receiver.
    pub fn submit(&self, app: &str, req: Submit) -> Result<(), ExecutorError> {
        let h = self
            .apps
            .get(app)
            .ok_or_else(|| ExecutorError::UnknownApp(app.into()))?;
        if h.submit.is_closed() || h.task.is_finished() {
            return Err(ExecutorError::TaskGone(app.into()));
        }
        tracing::info!(app, event = %req.event_id, version = %req.version, "deploy submitted");
        h.submit.send_replace(Some(req));
        Ok(())
    }

    /// The app's releases, jail and activation; `None` for an app not configured. The
    /// releases are read from disk now (so a switch by hand shows), or as last seen when
    /// the disk cannot be read.
    pub async fn status(&self, app: &str) -> Option<AppRuntime> {
        let h = self.apps.get(app)?;
        let layout = h.layout.clone();
        let fresh = tokio::task::spawn_blocking(move || store::view(&layout)).await;
        let (view, activating) = {
            let mut s = h.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(Ok(v)) = fresh {
                s.view = v;
            }
            (s.view.clone(), s.activating.clone())
        };
        let jail = self.sup.status(app).await.ok()?;
        Some(AppRuntime {
            current: view.current,
            previous: view.previous,
            jail,
            activating,
            releases: view.releases,
        })
    }

    /// The app's deploy journal, oldest first; `None` for an app not configured.
    pub fn history(&self, app: &str) -> Option<Vec<Entry>> {
        let h = self.apps.get(app)?;
        let s = h.shared.lock().unwrap_or_else(|p| p.into_inner());
        Some(s.journal.clone())
    }

    /// The configured apps, sorted.
    pub fn apps(&self) -> Vec<String> {
        self.apps.keys().cloned().collect()
    }

    /// Stops supervising: jails stop unless the app's `leave_running` (or `leave_all`). A
    /// fetch under way is cancelled at once (nothing of it is published); any other step
    /// of an activation gets a few seconds to finish, then is cut off (logged).
    pub async fn shutdown(self, leave_all: bool) {
        self.stopping.cancel(Reason::Shutdown);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let tasks: Vec<(String, JoinHandle<()>)> = self
            .apps
            .into_iter()
            .map(|(name, h)| (name, h.task))
            .collect();
        for (name, task) in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Err(e)) if e.is_panic() => {
                    tracing::error!(app = %name, error = %e, "executor task panicked")
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(app = %name, "activation under way cut off by the shutdown");
                    abort.abort();
                }
            }
        }
        self.sup.shutdown(leave_all).await;
    }
}

/// The user namespace range of the app's jails: the store's, claimed and recorded when the
/// app asks for one ([`crate::release::userns::enable`]); `None` without, refused when the
/// store records one (its files belong to it).
async fn resolve_userns(app: &AppConfig) -> Result<Option<IdRange>, ExecutorError> {
    use crate::release::userns;
    let layout = Layout::new(&app.root);
    let want = app.userns;
    let r = tokio::task::spawn_blocking(move || match want {
        Userns::Off => userns::refuse_if_recorded(&layout).map(|()| None),
        Userns::On(base) => userns::enable(&layout, base).map(Some),
    })
    .await
    .unwrap_or_else(|e| {
        Err(userns::UsernsError::Io {
            what: "internal error setting up the user namespace of",
            path: app.root.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    r.map_err(|source| ExecutorError::Userns {
        app: app.name.clone(),
        source,
    })
}

/// A jail adopted from an earlier agent that runs with (or without) a user namespace when
/// the app's config now says otherwise is stopped, so that `bring_up` shifts its release
/// and starts it the configured way.
async fn restart_if_userns_changed(sup: &Supervisor, app: &AppConfig) {
    let Ok(st) = sup.status(&app.name).await else {
        return;
    };
    let Some(pid) = st.pid.filter(|_| st.adopted) else {
        return;
    };
    let running = crate::jail::launch::RunningLaunch::of_pid(pid);
    let with_userns = running.is_some_and(|r| r.has_flag("--userns"));
    if with_userns == app.jail.userns.is_some() {
        return;
    }
    tracing::warn!(app = %app.name, pid, userns = app.jail.userns.is_some(), "the adopted jail runs with another user namespace setting than the config; restarting it");
    if let Err(e) = sup.stop(&app.name).await {
        tracing::error!(app = %app.name, error = %e, "cannot stop the adopted jail");
    }
}

/// Protects the app's store ([`crate::release::protect`]: 0700, mounted `nosuid,nodev`),
/// shifts releases from before its user namespace into its range, reads it and starts its
/// `current` release unless that already runs. An
/// activation the previous agent left unfinished is undone first: its release was never
/// verified, so the app comes back on the release before it (or, with none, `current` is
/// removed and the app stays stopped), and a retry of the deploy is a full activation.
async fn bring_up(sup: &Supervisor, app: &AppConfig) -> store::View {
    let layout = Layout::new(&app.root);
    let name = app.name.clone();
    let range = app.jail.userns;
    let read = tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::release::protect::protect_existing(&layout) {
            tracing::error!(app = %name, error = %e, "cannot protect the release store (nosuid,nodev mount); starting the app anyway");
        }
        if let Some(r) = range
            && let Err(e) = crate::release::userns::shift_releases(&layout, r)
        {
            tracing::error!(app = %name, error = %e, "cannot shift older releases into the user namespace range; they will not start");
        }
        let undone = store::undo_interrupted(&layout);
        (undone, store::view(&layout))
    })
    .await;
    let (undone, view) = match read {
        Ok((undone, Ok(v))) => (undone, v),
        Ok((_, Err(e))) => {
            tracing::error!(app = %app.name, error = %e, "cannot read the release store");
            return store::View::default();
        }
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "cannot read the release store");
            return store::View::default();
        }
    };
    match undone {
        Ok(None) => {}
        Ok(Some(store::Undone::RolledBack(m))) => {
            tracing::warn!(app = %app.name, version = %m.version, back_on = ?m.from, "an activation was cut off by the agent's end before its health check passed; back on the release before it");
        }
        Ok(Some(store::Undone::NoPrevious(m))) => {
            tracing::warn!(app = %app.name, version = %m.version, "an activation was cut off by the agent's end before its health check passed, and no release came before it; the app stays stopped until a release is deployed");
            if let Err(e) = sup.stop(&app.name).await {
                tracing::error!(app = %app.name, error = %e, "cannot stop the unverified jail");
            }
            return view;
        }
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "cannot undo the activation an earlier agent left unfinished; starting what current names");
        }
    }
    let Some(current) = view.current.as_deref() else {
        tracing::info!(app = %app.name, "no release deployed yet; the app stays stopped");
        return view;
    };
    let running = sup.status(&app.name).await.ok().is_some_and(|s| {
        s.state == supervisor::State::Running && s.release.as_deref() == Some(current)
    });
    if !running && let Err(e) = sup.start(&app.name, Some(current)).await {
        tracing::error!(app = %app.name, error = %e, "cannot start the app");
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Executor>();
        shareable::<Finished>();
        shareable::<AppRuntime>();
    }
}
