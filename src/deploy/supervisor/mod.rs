//! The jail supervisor: one tokio task per app keeps its jail running, behind an async API
//! the agent drives (`manage`, `start`, `stop`, `restart`, `status`, `shutdown`).
//!
//! - Each jail is a child process `droot-fleet run --root ROOT/releases/V ...` (the binary
//!   from [`std::env::current_exe`] unless overridden), never `jail::run` in this process:
//!   that forks and blocks signals, which needs a single-threaded caller. `run` gives it its
//!   own mount and PID namespaces, and its init dies with `run` (PDEATHSIG), so killing the
//!   `run` process and its init ends the whole jail.
//! - The jail runs in its own process group with stdin on /dev/null. Its stdout and stderr
//!   go through a pipe that its `run` process copies into `STATE_DIR/APP.log`, capped and
//!   rotated by rename to `APP.log.1` ([`crate::jail::output`]; the jail never holds the
//!   file), so it keeps running and logging when the supervisor exits.
//! - `STATE_DIR/APP.pid` records pid, start time and release (`APP.next.pid` the instance
//!   a deploy starts beside it, `APP.old.pid` one draining after the next took over).
//!   [`Supervisor::manage`] adopts a jail still running from an earlier supervisor instead
//!   of starting a second copy, and refuses a pid that now names another process.
//! - With `listen`, the app's sockets are bound once and handed to every instance
//!   ([`crate::deploy::listen`]); readiness by `READY=1` is heard on a socket of each
//!   instance's own ([`notify`]). An adopted jail is not our child: it is
//!   watched through a pidfd, and its exit status is unknown.
//! - A crash is restarted per the app's `restart` policy with exponential backoff
//!   ([`policy`]). Stop sends `stop_signal`, then SIGKILL after
//!   `stop_timeout`; it returns once every process of the jail is gone.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::deploy::app::AppConfig;
use proc::AppLog;
use task::{AppTask, Cmd};

mod instance;
pub mod notify;
pub mod policy;
pub mod proc;
mod task;

pub use policy::Ended;

/// Where and how the supervisor keeps its files and starts jails.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The droot-fleet binary that runs jails (`run`).
    pub exe: PathBuf,
    /// Pid files and logs, one of each per app. Created 0700.
    pub state_dir: PathBuf,
    /// Size at which an app's log is rotated (one old copy is kept: at most twice this on
    /// disk per app).
    pub log_cap: u64,
}

impl SupervisorOptions {
    /// This binary, 10 MiB logs.
    pub fn new(state_dir: impl Into<PathBuf>) -> io::Result<Self> {
        Ok(SupervisorOptions {
            exe: std::env::current_exe()?,
            state_dir: state_dir.into(),
            log_cap: 10 << 20,
        })
    }
}

/// An app's state, as `query status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    /// Waiting out the restart backoff.
    Starting,
    /// Not running: stopped on request, never started, or ended cleanly with no restart due.
    Stopped,
    /// Ended with a failure and the policy does not restart it, or it could not be started.
    Failed,
}

/// A snapshot of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStatus {
    pub state: State,
    /// Host pid of the `droot-fleet run` process, while running.
    pub pid: Option<i32>,
    /// Unix seconds of the last state change.
    pub since: u64,
    /// The release running, or last run.
    pub release: Option<String>,
    /// Restarts after unrequested exits since the app was managed.
    pub restarts: u32,
    /// How the last run ended, or why it could not start.
    pub last_exit: Option<String>,
    /// Whether the running jail was adopted from an earlier supervisor.
    pub adopted: bool,
    /// With readiness by notification: whether the running jail has sent `READY=1` (an
    /// adopted one counts as ready).
    pub ready: bool,
    /// The instance a deploy started beside this one, while it lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<NextStatus>,
}

/// The instance a deploy started beside the one that serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextStatus {
    pub release: String,
    /// Host pid of its `run` process; `None` once it ended by itself.
    pub pid: Option<i32>,
    /// How it ended, if it did.
    pub last_exit: Option<String>,
    /// With readiness by notification: whether it has sent `READY=1`.
    pub ready: bool,
}

/// A supervisor error. Each says what state the app is left in.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("app {0} is not managed by this supervisor")]
    NoSuchApp(String),
    #[error("app {0} is already managed")]
    AlreadyManaged(String),
    #[error(
        "app {app}: {root}/current does not name a release; deploy one first (app not started)"
    )]
    NoCurrent { app: String, root: PathBuf },
    #[error("app {app}: release {release} is not in {root}/releases (app not started)")]
    NoRelease {
        app: String,
        release: String,
        root: PathBuf,
    },
    #[error("app {app}: {reason} (app not started)")]
    BadRelease { app: String, reason: String },
    #[error("app {app}: cannot start {exe}: {source} (app not running)")]
    Spawn {
        app: String,
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("app {0}: its supervisor task has ended")]
    TaskGone(String),
    #[error("app {app}: cannot listen on {addr}: {source} (app not started)")]
    Listen {
        app: String,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("app {0}: no next instance runs to be promoted (the one that serves is unchanged)")]
    NoNext(String),
}

struct Handle {
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<AppStatus>,
    task: JoinHandle<()>,
}

/// Supervises the jails of several apps. Cheap to share behind an `Arc`.
pub struct Supervisor {
    opts: SupervisorOptions,
    apps: Mutex<HashMap<String, Handle>>,
}

impl Supervisor {
    /// Creates the state dir (0700) if needed.
    pub fn new(opts: SupervisorOptions) -> Result<Self, SupervisorError> {
        crate::dirs::create_dir_all_mode(&opts.state_dir, 0o755, 0o700).map_err(|source| {
            SupervisorError::Io {
                what: "cannot create the supervisor state dir",
                path: opts.state_dir.clone(),
                source,
            }
        })?;
        Ok(Supervisor {
            opts,
            apps: Mutex::new(HashMap::new()),
        })
    }

    /// Takes an app under supervision. A jail still running from an earlier supervisor (per
    /// its pid file) is adopted; otherwise the app is `stopped` until [`Self::start`].
    pub async fn manage(&self, app: AppConfig) -> Result<AppStatus, SupervisorError> {
        let mut apps = self.apps.lock().await;
        if apps.contains_key(&app.name) {
            return Err(SupervisorError::AlreadyManaged(app.name));
        }
        let name = app.name.clone();
        let log = AppLog {
            path: self.opts.state_dir.join(format!("{name}.log")),
            cap: self.opts.log_cap,
        };
        let (task, status) = AppTask::new(app, self.opts.exe.clone(), &self.opts.state_dir, log)?;
        let first = status.borrow().clone();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(task.run(rx));
        apps.insert(name, Handle { tx, status, task });
        Ok(first)
    }

    /// Starts `release` (`None`: the release `current` names). A running jail on another
    /// release is stopped first; on the same release this changes nothing.
    pub async fn start(
        &self,
        app: &str,
        release: Option<&str>,
    ) -> Result<AppStatus, SupervisorError> {
        let release = release.map(str::to_string);
        self.ask(app, |reply| Cmd::Start { release, reply }).await?
    }

    /// Starts `release` beside the instance that serves, on the same sockets (a deploy that
    /// overlaps them); an earlier next instance is stopped first.
    pub async fn start_next(&self, app: &str, release: &str) -> Result<AppStatus, SupervisorError> {
        let release = release.to_string();
        self.ask(app, |reply| Cmd::StartNext { release, reply })
            .await?
    }

    /// The next instance serves from now on; the old one is stopped (stop_signal, SIGKILL
    /// after stop_timeout).
    pub async fn promote(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        self.ask(app, |reply| Cmd::Promote { reply }).await?
    }

    /// Stops the next instance; the one that serves is untouched.
    pub async fn discard(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        self.ask(app, |reply| Cmd::Discard { reply }).await
    }

    /// Stops the jails (stop_signal, SIGKILL after stop_timeout) and keeps them down.
    pub async fn stop(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        self.ask(app, |reply| Cmd::Stop { reply }).await
    }

    /// Stops and starts the same release again.
    pub async fn restart(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        self.ask(app, |reply| Cmd::Restart { reply }).await?
    }

    /// The app's current status.
    pub async fn status(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        Ok(self.watch(app).await?.borrow().clone())
    }

    /// A receiver that sees every status change of the app.
    pub async fn watch(&self, app: &str) -> Result<watch::Receiver<AppStatus>, SupervisorError> {
        let apps = self.apps.lock().await;
        let h = apps
            .get(app)
            .ok_or_else(|| SupervisorError::NoSuchApp(app.into()))?;
        Ok(h.status.clone())
    }

    /// Ends supervision of every app: each jail is stopped unless its `leave_running` (or
    /// `leave_all`) says to leave it running, with its pid file, for the next supervisor.
    pub async fn shutdown(&self, leave_all: bool) {
        let handles: Vec<(String, Handle)> = self.apps.lock().await.drain().collect();
        for (name, h) in handles {
            let (reply, rx) = oneshot::channel();
            if h.tx.send(Cmd::Shutdown { leave_all, reply }).await.is_ok() {
                let _ = rx.await;
            }
            if let Err(e) = h.task.await {
                tracing::error!(app = %name, error = %e, "supervisor task panicked");
            }
        }
    }

    async fn ask<T>(
        &self,
        app: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, SupervisorError> {
        let tx = {
            let apps = self.apps.lock().await;
            let h = apps
                .get(app)
                .ok_or_else(|| SupervisorError::NoSuchApp(app.into()))?;
            h.tx.clone()
        };
        let (reply, rx) = oneshot::channel();
        let gone = || SupervisorError::TaskGone(app.into());
        tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}
