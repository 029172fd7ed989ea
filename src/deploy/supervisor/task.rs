//! The task that owns one app's jails: it spawns or adopts them, waits for their exits,
//! applies the restart decision, and carries out commands, one at a time. Only this task
//! signals a jail, and only through pidfds.
//!
//! An app has one instance that serves (`APP.pid`) and, while a deploy overlaps two
//! releases, the next one beside it (`APP.next.pid`), both on the app's sockets. Promoting
//! the next stops the old one and makes the next serve; discarding it stops it. A next
//! instance that ends is not restarted: the deploy that started it rolls back. An agent
//! that died mid-overlap finds both on start, keeps the one on the release `current` names
//! and stops the other, and stops one it left draining.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use super::instance::{Instance, PidFiles, Spawn, describe};
use super::notify::NotifySocket;
use super::policy::{Decision, Ended, decide};
use super::proc::{self, AppLog, NotAdopted};
use super::{AppStatus, NextStatus, State, SupervisorError};
use crate::deploy::app::AppConfig;
use crate::deploy::listen;
use crate::release::Layout;

/// Commands from [`super::Supervisor`].
pub(super) enum Cmd {
    Start {
        release: Option<String>,
        reply: oneshot::Sender<Result<AppStatus, SupervisorError>>,
    },
    StartNext {
        release: String,
        reply: oneshot::Sender<Result<AppStatus, SupervisorError>>,
    },
    Promote {
        reply: oneshot::Sender<Result<AppStatus, SupervisorError>>,
    },
    Discard {
        reply: oneshot::Sender<AppStatus>,
    },
    Stop {
        reply: oneshot::Sender<AppStatus>,
    },
    Restart {
        reply: oneshot::Sender<Result<AppStatus, SupervisorError>>,
    },
    Shutdown {
        leave_all: bool,
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct AppTask {
    app: AppConfig,
    exe: PathBuf,
    pid_files: PidFiles,
    log: AppLog,
    layout: Layout,
    status: watch::Sender<AppStatus>,
    running: Option<Instance>,
    /// The release that runs, or last ran (what a restart starts).
    release: Option<String>,
    next: Option<Instance>,
    /// An old instance an earlier agent left draining (stopped at start).
    draining: Option<Instance>,
    /// The notification sockets of the two instances (bound while each runs), and whether
    /// each has said it is ready.
    notify: Option<(NotifySocket, bool)>,
    next_notify: Option<(NotifySocket, bool)>,
    restart_at: Option<Instant>,
    failures: u32,
    /// The `listen` sockets, once bound (or taken back from an adopted jail).
    sockets: Vec<OwnedFd>,
}

impl AppTask {
    /// Builds the task, adopting the jails its pid files name when they are still the same
    /// `droot-fleet run` processes.
    pub(super) fn new(
        app: AppConfig,
        exe: PathBuf,
        state_dir: &Path,
        log: AppLog,
    ) -> Result<(AppTask, watch::Receiver<AppStatus>), SupervisorError> {
        let status = AppStatus {
            state: State::Stopped,
            pid: None,
            since: crate::wall::secs(),
            release: None,
            restarts: 0,
            last_exit: None,
            adopted: false,
            ready: false,
            next: None,
        };
        let (tx, rx) = watch::channel(status);
        let pid_files = PidFiles::new(state_dir, &app.name);
        let mut task = AppTask {
            layout: Layout::new(&app.root),
            app,
            exe,
            pid_files,
            log,
            status: tx,
            running: None,
            release: None,
            next: None,
            draining: None,
            notify: None,
            next_notify: None,
            restart_at: None,
            failures: 0,
            sockets: Vec::new(),
        };
        if let Some(i) = task.adopt(&task.pid_files.serving.clone())? {
            task.serve(i, true);
        }
        task.next = task.adopt(&task.pid_files.next.clone())?;
        task.draining = task.adopt(&task.pid_files.old.clone())?;
        task.reclaim_sockets();
        Ok((task, rx))
    }

    /// Adopts the jail of a pid file if it is still the one recorded; removes a stale pid
    /// file otherwise.
    fn adopt(&self, path: &Path) -> Result<Option<Instance>, SupervisorError> {
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| SupervisorError::Io { what, path, source }
        };
        let Some(rec) = proc::read_pid_file(path).map_err(io_err("cannot read the pid file"))?
        else {
            return Ok(None);
        };
        let name = &self.app.name;
        let adopted = match crate::release::layout::validate_version(&rec.release) {
            Ok(()) => proc::adopt(&rec, &self.layout.release(&rec.release)),
            Err(_) => Err(NotAdopted::Recycled),
        };
        let fd = match adopted {
            Ok(fd) => fd,
            Err(why) => {
                if why == NotAdopted::Gone {
                    tracing::info!(app = %name, pid = rec.pid, "the jail of the pid file is gone");
                } else {
                    tracing::warn!(app = %name, pid = rec.pid, "the pid file names another process now (pid recycled); not adopting it");
                }
                proc::remove_pid_file(path).map_err(io_err("cannot remove the pid file"))?;
                return Ok(None);
            }
        };
        tracing::info!(app = %name, pid = rec.pid, release = %rec.release, "adopted a running jail");
        let i = Instance::adopted(rec, fd).map_err(io_err("cannot watch the adopted jail"))?;
        if i.legacy_log {
            tracing::warn!(app = %name, pid = i.pid, "this jail was started by an older release and writes its log file itself: the log is emptied above the cap, not rotated, until the app restarts");
        }
        Ok(Some(i))
    }

    /// Takes the sockets back from an adopted jail, or binds them. A bind that fails now
    /// is tried again at the next start, which then fails with its error.
    fn reclaim_sockets(&mut self) {
        if self.app.listen.is_empty() {
            return;
        }
        let adopted: Vec<&Instance> = self.running.iter().chain(self.next.iter()).collect();
        for i in &adopted {
            if let Some(fds) = listen::reclaim(i.pidfd.get_ref(), &self.app.listen) {
                tracing::info!(app = %self.app.name, pid = i.pid, "took the listening sockets back from the adopted jail");
                self.sockets = fds;
                return;
            }
        }
        if let Some(i) = adopted.first() {
            tracing::error!(app = %self.app.name, pid = i.pid, "cannot take the listening sockets back from the adopted jail (pidfd_getfd refused, or it was started without them): a new instance cannot bind them while it runs; restart the app once");
        }
        if let Err(e) = self.bind_sockets() {
            tracing::warn!(app = %self.app.name, error = %e, "cannot bind the app's sockets yet");
        }
    }

    fn bind_sockets(&mut self) -> Result<(), SupervisorError> {
        if self.sockets.len() == self.app.listen.len() {
            return Ok(());
        }
        self.sockets = listen::bind_all(&self.app.listen).map_err(|(addr, source)| {
            SupervisorError::Listen {
                app: self.app.name.clone(),
                addr,
                source,
            }
        })?;
        Ok(())
    }

    /// Makes `i` the instance that serves, and says so in the status. An adopted one was
    /// serving already: it counts as ready.
    fn serve(&mut self, i: Instance, adopted: bool) {
        self.status.send_modify(|s| {
            s.ready = adopted;
            s.state = State::Running;
            s.pid = Some(i.pid);
            s.since = i.since;
            s.release = Some(i.release.clone());
            s.adopted = adopted;
        });
        self.release = Some(i.release.clone());
        self.running = Some(i);
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        self.settle_adopted_next().await;
        let mut log_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let restart_at = self.restart_at;
            let legacy_log = self.running.as_ref().is_some_and(|r| r.legacy_log);
            let run_pid = self.running.as_ref().map(|r| r.pid);
            let next_pid = self.next.as_ref().map(|r| r.pid);
            let running = self.running.as_mut();
            let next = self.next.as_mut();
            let notify = notified(self.notify.as_ref(), run_pid);
            let next_notify = notified(self.next_notify.as_ref(), next_pid);
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Shutdown { leave_all, reply }) => {
                        if !(leave_all || self.app.leave_running) {
                            self.stop_all().await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                    // The supervisor was dropped without shutdown: leave the jails running.
                    None => return,
                },
                ended = ended(running) => self.on_exit(ended),
                ended = ended(next) => self.on_next_exit(ended),
                () = notify => {
                    if let Some(n) = self.notify.as_mut() {
                        n.1 = true;
                    }
                    self.status.send_modify(|s| s.ready = true);
                }
                () = next_notify => {
                    if let Some(n) = self.next_notify.as_mut() {
                        n.1 = true;
                    }
                    self.status.send_modify(|s| {
                        if let Some(n) = s.next.as_mut() {
                            n.ready = true;
                        }
                    });
                }
                _ = async { match restart_at { Some(t) => sleep_until(t).await, None => std::future::pending().await } } => {
                    self.restart_at = None;
                    if let Err(e) = self.spawn() {
                        // Nobody waits for this restart: the log and the status carry the error.
                        tracing::error!(app = %self.app.name, error = %e, "cannot restart the jail");
                        self.set_failed(e.to_string());
                    }
                }
                _ = log_tick.tick(), if legacy_log => {
                    if let Err(e) = self.log.enforce_legacy_cap() {
                        tracing::warn!(app = %self.app.name, error = %e, "cannot cap the app log");
                    }
                }
            }
        }
    }

    /// An agent that died while two instances overlapped: the one on `current` stays; one
    /// that was draining is stopped.
    async fn settle_adopted_next(&mut self) {
        if let Some(old) = self.draining.take() {
            let (sig, grace) = (self.app.stop_signal, self.app.stop_timeout);
            old.stop(&self.app.name, sig, grace).await;
            let _ = proc::remove_pid_file(&self.pid_files.old);
        }
        let Some(next) = &self.next else { return };
        let current = crate::release::switch::current_version(&self.layout)
            .ok()
            .flatten();
        if current.as_deref() == Some(next.release.as_str()) {
            tracing::info!(app = %self.app.name, release = %next.release, "an overlap was interrupted after the switch: the next instance serves");
            if self.promote().await.is_ok() {
                // It was serving beside the old one: adopted, and ready.
                self.status
                    .send_modify(|s| (s.adopted, s.ready) = (true, true));
            }
        } else {
            tracing::info!(app = %self.app.name, release = %next.release, "an overlap was interrupted before the switch: the next instance is stopped");
            self.discard().await;
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start { release, reply } => {
                let r = self.start(release).await;
                let _ = reply.send(r);
            }
            Cmd::StartNext { release, reply } => {
                let r = self.start_next(release).await;
                let _ = reply.send(r);
            }
            Cmd::Promote { reply } => {
                let r = self.promote().await;
                let _ = reply.send(r);
            }
            Cmd::Discard { reply } => {
                self.discard().await;
                let _ = reply.send(self.status.borrow().clone());
            }
            Cmd::Stop { reply } => {
                self.stop_all().await;
                let _ = reply.send(self.status.borrow().clone());
            }
            Cmd::Restart { reply } => {
                let release = self.release.clone();
                self.stop_jail().await;
                let _ = reply.send(self.start(release).await);
            }
            Cmd::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// `release`, checked: a release name that is on disk (`None`: the one `current` names).
    fn release_to_start(&self, release: Option<String>) -> Result<String, SupervisorError> {
        let release = match release {
            Some(r) => r,
            None => crate::release::switch::current_version(&self.layout)
                .ok()
                .flatten()
                .ok_or_else(|| SupervisorError::NoCurrent {
                    app: self.app.name.clone(),
                    root: self.app.root.clone(),
                })?,
        };
        if let Err(e) = crate::release::layout::validate_version(&release) {
            return Err(SupervisorError::BadRelease {
                app: self.app.name.clone(),
                reason: e.to_string(),
            });
        }
        if !self.layout.release(&release).is_dir() {
            return Err(SupervisorError::NoRelease {
                app: self.app.name.clone(),
                release,
                root: self.app.root.clone(),
            });
        }
        Ok(release)
    }

    async fn start(&mut self, release: Option<String>) -> Result<AppStatus, SupervisorError> {
        let release = self.release_to_start(release)?;
        if self.running.is_some() && self.release.as_deref() == Some(release.as_str()) {
            return Ok(self.status.borrow().clone());
        }
        self.discard().await;
        self.stop_jail().await;
        self.restart_at = None;
        self.failures = 0;
        self.release = Some(release);
        match self.spawn() {
            Ok(()) => Ok(self.status.borrow().clone()),
            Err(e) => {
                self.set_failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Starts `self.release` as the instance that serves.
    fn spawn(&mut self) -> Result<(), SupervisorError> {
        let release = self.release.clone().expect("spawn needs a release");
        let pid_file = self.pid_files.serving.clone();
        let (i, notify) = self.spawn_instance(&release, &pid_file)?;
        self.serve(i, false);
        self.notify = notify.map(|n| (n, false));
        Ok(())
    }

    /// Starts an instance of `release` on the app's sockets, with its own notification
    /// socket when the app is ready by notification.
    fn spawn_instance(
        &mut self,
        release: &str,
        pid_file: &Path,
    ) -> Result<(Instance, Option<NotifySocket>), SupervisorError> {
        self.bind_sockets()?;
        let notify =
            match self.app.ready_by_notify() {
                true => Some(NotifySocket::bind(&self.app.name).map_err(|source| {
                    SupervisorError::Io {
                        what: "cannot make the readiness socket",
                        path: PathBuf::from(format!("@droot-fleet/notify/{}", self.app.name)),
                        source,
                    }
                })?),
                false => None,
            };
        let root = self.layout.release(release);
        let s = Spawn {
            exe: &self.exe,
            log: &self.log,
            pid_file,
            sockets: &self.sockets,
            notify_env: notify.as_ref().map(NotifySocket::env),
        };
        Ok((Instance::spawn(&self.app, release, &root, s)?, notify))
    }

    /// Starts `release` beside the instance that serves (which keeps serving).
    async fn start_next(&mut self, release: String) -> Result<AppStatus, SupervisorError> {
        let release = self.release_to_start(Some(release))?;
        self.discard().await;
        let pid_file = self.pid_files.next.clone();
        let (i, notify) = self.spawn_instance(&release, &pid_file)?;
        self.status.send_modify(|s| {
            s.next = Some(NextStatus {
                release: release.clone(),
                pid: Some(i.pid),
                last_exit: None,
                ready: false,
            });
        });
        self.next = Some(i);
        self.next_notify = notify.map(|n| (n, false));
        Ok(self.status.borrow().clone())
    }

    /// The next instance serves from now on; the old one is stopped (`stop_signal`, then
    /// SIGKILL after `stop_timeout`), draining meanwhile. Its pid file moves aside first
    /// (`APP.old.pid`), so an agent that dies during the drain still finds and stops it.
    async fn promote(&mut self) -> Result<AppStatus, SupervisorError> {
        let Some(next) = self.next.take() else {
            return Err(SupervisorError::NoNext(self.app.name.clone()));
        };
        let old = self.running.take();
        let files = &self.pid_files;
        let moved = match old.is_some() {
            true => std::fs::rename(&files.serving, &files.old),
            false => Ok(()),
        };
        if let Err(source) = moved.and_then(|()| std::fs::rename(&files.next, &files.serving)) {
            tracing::error!(app = %self.app.name, error = %source, "cannot record the promoted jail's pid file");
        }
        self.restart_at = None;
        self.failures = 0;
        let ready = self.status.borrow().next.as_ref().is_some_and(|n| n.ready);
        self.status.send_modify(|s| s.next = None);
        self.serve(next, false);
        self.status.send_modify(|s| s.ready = ready);
        let old_notify = std::mem::replace(&mut self.notify, self.next_notify.take());
        if let Some(old) = old {
            let (sig, grace) = (self.app.stop_signal, self.app.stop_timeout);
            old.stop(&self.app.name, sig, grace).await;
            let _ = proc::remove_pid_file(&self.pid_files.old);
        }
        drop(old_notify);
        Ok(self.status.borrow().clone())
    }

    /// Stops the next instance, if any; the one that serves is untouched.
    async fn discard(&mut self) {
        if let Some(next) = self.next.take() {
            let (sig, grace) = (self.app.stop_signal, self.app.stop_timeout);
            next.stop(&self.app.name, sig, grace).await;
        }
        self.next_notify = None;
        let _ = proc::remove_pid_file(&self.pid_files.next);
        self.status.send_modify(|s| s.next = None);
    }

    async fn stop_all(&mut self) {
        self.discard().await;
        self.stop_jail().await;
        if self.restart_at.take().is_some() {
            // Stopped while waiting out the backoff: no restart is due any more.
            self.status.send_modify(|s| {
                s.state = State::Stopped;
                s.since = crate::wall::secs();
            });
        }
    }

    /// An exit nobody asked for: restart per policy, or stay down.
    fn on_exit(&mut self, ended: Ended) {
        let Some(r) = self.running.take() else { return };
        let _ = proc::remove_pid_file(&self.pid_files.serving);
        self.notify = None;
        self.status.send_modify(|s| s.ready = false);
        let ran_for = r.started.elapsed();
        let what = describe(ended);
        let d = decide(
            self.app.restart,
            &self.app.backoff,
            ended,
            ran_for,
            self.failures,
        );
        tracing::warn!(app = %self.app.name, pid = r.pid, ended = %what, decision = ?d, "jail ended");
        match d {
            Decision::Restart { delay, failures } => {
                self.failures = failures;
                self.restart_at = Some(Instant::now() + delay);
                self.status.send_modify(|s| {
                    s.state = State::Starting;
                    s.pid = None;
                    s.since = crate::wall::secs();
                    s.restarts += 1;
                    s.last_exit = Some(what);
                });
            }
            Decision::StayDown { failed } => self.status.send_modify(|s| {
                s.state = if failed {
                    State::Failed
                } else {
                    State::Stopped
                };
                s.pid = None;
                s.since = crate::wall::secs();
                s.last_exit = Some(what);
            }),
        }
    }

    /// The next instance ended by itself: it stays down, and the status says how it ended.
    fn on_next_exit(&mut self, ended: Ended) {
        let Some(n) = self.next.take() else { return };
        let _ = proc::remove_pid_file(&self.pid_files.next);
        let what = describe(ended);
        tracing::warn!(app = %self.app.name, pid = n.pid, release = %n.release, ended = %what, "the next jail ended");
        self.next_notify = None;
        self.status.send_modify(|s| {
            s.next = Some(NextStatus {
                release: n.release,
                pid: None,
                last_exit: Some(what),
                ready: false,
            })
        });
    }

    /// Marks the app failed with `why` (the caller reports the error).
    fn set_failed(&mut self, why: String) {
        self.status.send_modify(|s| {
            s.state = State::Failed;
            s.pid = None;
            s.since = crate::wall::secs();
            s.last_exit = Some(why);
        });
    }

    /// Stops the instance that serves, if one runs; the app is then `stopped`.
    async fn stop_jail(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        self.notify = None;
        let (sig, grace) = (self.app.stop_signal, self.app.stop_timeout);
        let ended = r.stop(&self.app.name, sig, grace).await;
        let _ = proc::remove_pid_file(&self.pid_files.serving);
        self.status.send_modify(|s| {
            s.state = State::Stopped;
            s.pid = None;
            s.ready = false;
            s.since = crate::wall::secs();
            s.last_exit = Some(describe(ended));
        });
    }
}

/// Resolves when the instance `pid` (if any) is ready by its notification socket; once it
/// is, drains the socket and never resolves.
async fn notified(socket: Option<&(NotifySocket, bool)>, pid: Option<i32>) {
    match (socket, pid) {
        (Some((s, false)), Some(pid)) => s.ready(pid).await,
        (Some((s, true)), _) => s.drain().await,
        _ => std::future::pending().await,
    }
}

/// Resolves when `i` (if any) has ended.
async fn ended(i: Option<&mut Instance>) -> Ended {
    match i {
        Some(i) => i.ended().await,
        None => std::future::pending().await,
    }
}
