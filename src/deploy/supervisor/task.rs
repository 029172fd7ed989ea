//! The task that owns one app's jail: it spawns or adopts it, waits for its exit, applies
//! the restart decision, and carries out start/stop commands, one at a time. Only this task
//! signals the jail, and only through pidfds.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};

use super::policy::{Decision, Ended, decide};
use super::proc::{self, AppLog, NotAdopted, PidRecord};
use super::{AppStatus, State, SupervisorError};
use crate::deploy::app::AppConfig;
use crate::jail::launch::StartGate;
use crate::release::Layout;

/// Commands from [`super::supervisor::Supervisor`].
pub(super) enum Cmd {
    Start {
        release: Option<String>,
        reply: oneshot::Sender<Result<AppStatus, SupervisorError>>,
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

/// A live jail: the `run` process, by pidfd (and as our child when we started it).
struct Running {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    child: Option<tokio::process::Child>,
    started: Instant,
    /// Adopted from a release whose jails write the log file themselves: the supervisor
    /// caps it ([`AppLog::enforce_legacy_cap`]) until the jail is restarted.
    legacy_log: bool,
}

impl Running {
    /// Resolves when the `run` process has ended.
    async fn ended(&mut self) -> Ended {
        if let Some(child) = self.child.as_mut() {
            return match child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (st.code(), st.signal()) {
                        (Some(c), _) => Ended::Exited(c),
                        (None, Some(s)) => Ended::Signaled(s),
                        _ => Ended::Unknown,
                    }
                }
                Err(_) => Ended::Unknown,
            };
        }
        // An adopted process: the pidfd turns readable when it exits.
        let _ = self.pidfd.readable().await;
        Ended::Unknown
    }
}

pub(super) struct AppTask {
    app: AppConfig,
    exe: PathBuf,
    pid_file: PathBuf,
    log: AppLog,
    layout: Layout,
    status: watch::Sender<AppStatus>,
    running: Option<Running>,
    release: Option<String>,
    restart_at: Option<Instant>,
    failures: u32,
}

impl AppTask {
    /// Builds the task, adopting the jail its pid file names when that is still the same
    /// `droot-fleet run` process.
    pub(super) fn new(
        app: AppConfig,
        exe: PathBuf,
        pid_file: PathBuf,
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
        };
        let (tx, rx) = watch::channel(status);
        let mut task = AppTask {
            layout: Layout::new(&app.root),
            app,
            exe,
            pid_file,
            log,
            status: tx,
            running: None,
            release: None,
            restart_at: None,
            failures: 0,
        };
        task.adopt()?;
        Ok((task, rx))
    }

    /// Adopts the jail of the pid file if it is still the one recorded; removes a stale
    /// pid file otherwise.
    fn adopt(&mut self) -> Result<(), SupervisorError> {
        let path = self.pid_file.clone();
        let io_err = |what| {
            let path = path.clone();
            move |source| SupervisorError::Io { what, path, source }
        };
        let Some(rec) = proc::read_pid_file(&path).map_err(io_err("cannot read the pid file"))?
        else {
            return Ok(());
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
                return proc::remove_pid_file(&path).map_err(io_err("cannot remove the pid file"));
            }
        };
        tracing::info!(app = %name, pid = rec.pid, release = %rec.release, "adopted a running jail");
        let legacy_log = !proc::runs_with_log(rec.pid);
        if legacy_log {
            tracing::warn!(app = %name, pid = rec.pid, "this jail was started by an older release and writes its log file itself: the log is emptied above the cap, not rotated, until the app restarts");
        }
        self.running = Some(Running {
            pid: rec.pid,
            pidfd: proc::async_pidfd(fd).map_err(io_err("cannot watch the adopted jail"))?,
            child: None,
            started: Instant::now(),
            legacy_log,
        });
        self.status.send_modify(|s| {
            s.state = State::Running;
            s.pid = Some(rec.pid);
            s.since = rec.since;
            s.release = Some(rec.release.clone());
            s.adopted = true;
        });
        self.release = Some(rec.release);
        Ok(())
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut log_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let restart_at = self.restart_at;
            let legacy_log = self.running.as_ref().is_some_and(|r| r.legacy_log);
            let running = self.running.as_mut();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Shutdown { leave_all, reply }) => {
                        if !(leave_all || self.app.leave_running) {
                            self.stop_jail().await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                    // The supervisor was dropped without shutdown: leave the jail running.
                    None => return,
                },
                ended = async { match running { Some(r) => r.ended().await, None => std::future::pending().await } } => {
                    self.on_exit(ended);
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

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start { release, reply } => {
                let r = self.start(release).await;
                let _ = reply.send(r);
            }
            Cmd::Stop { reply } => {
                self.stop_jail().await;
                if self.restart_at.take().is_some() {
                    // Stopped while waiting out the backoff: no restart is due any more.
                    self.status.send_modify(|s| {
                        s.state = State::Stopped;
                        s.since = crate::wall::secs();
                    });
                }
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

    async fn start(&mut self, release: Option<String>) -> Result<AppStatus, SupervisorError> {
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
        if self.running.is_some() && self.release.as_deref() == Some(release.as_str()) {
            return Ok(self.status.borrow().clone());
        }
        if !self.layout.release(&release).is_dir() {
            return Err(SupervisorError::NoRelease {
                app: self.app.name.clone(),
                release,
                root: self.app.root.clone(),
            });
        }
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

    /// Starts `droot-fleet run` on `self.release` and records its pid file.
    fn spawn(&mut self) -> Result<(), SupervisorError> {
        let release = self.release.clone().expect("spawn needs a release");
        let root = self.layout.release(&release);
        let mut launch = self.app.jail.launch(&root, &self.app.jail.command, true);
        let spawn_err = |source| SupervisorError::Spawn {
            app: self.app.name.clone(),
            exe: self.exe.clone(),
            source,
        };
        // The jail waits until its pid file is written: if this agent dies before, nobody
        // could find (adopt or stop) it, so it must not start at all.
        let gate = StartGate::new().map_err(spawn_err)?;
        launch.start_gate = Some(gate.fd());
        launch.log = Some(self.log.spec());
        let args = launch.to_args();
        let io_err = |what, path: &PathBuf| {
            let path = path.clone();
            move |source| SupervisorError::Io { what, path, source }
        };
        let out = self
            .log
            .open()
            .map_err(io_err("cannot open the app log", &self.log.path))?;
        let err = out
            .try_clone()
            .map_err(io_err("cannot open the app log", &self.log.path))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        gate.pass_to(&mut cmd);
        let child = cmd.spawn().map_err(spawn_err)?;
        let gate = gate.spawned();
        let pid = child.id().expect("a fresh child has a pid") as i32;
        // Not yet waited for, so the pid is still this child's, even if it already exited.
        let fd = proc::pidfd_open(pid).map_err(spawn_err)?;
        let start_time = proc::start_time(pid).map_err(spawn_err)?;
        let since = crate::wall::secs();
        let rec = PidRecord {
            pid,
            start_time,
            release: release.clone(),
            since,
        };
        // On error the gate closes unopened, and the jail ends without starting.
        proc::write_pid_file(&self.pid_file, &rec)
            .map_err(io_err("cannot write the pid file", &self.pid_file))?;
        gate.open();
        self.running = Some(Running {
            pid,
            pidfd: proc::async_pidfd(fd).map_err(spawn_err)?,
            child: Some(child),
            started: Instant::now(),
            legacy_log: false,
        });
        tracing::info!(app = %self.app.name, pid, release = %release, "jail started");
        self.status.send_modify(|s| {
            s.state = State::Running;
            s.pid = Some(pid);
            s.since = since;
            s.release = Some(release);
            s.adopted = false;
        });
        Ok(())
    }

    /// An exit nobody asked for: restart per policy, or stay down.
    fn on_exit(&mut self, ended: Ended) {
        let Some(r) = self.running.take() else { return };
        let _ = proc::remove_pid_file(&self.pid_file);
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

    /// Marks the app failed with `why` (the caller reports the error).
    fn set_failed(&mut self, why: String) {
        self.status.send_modify(|s| {
            s.state = State::Failed;
            s.pid = None;
            s.since = crate::wall::secs();
            s.last_exit = Some(why);
        });
    }

    /// Stops the jail if one runs: stop_signal, then SIGKILL to `run` and the jail's init
    /// after stop_timeout. Returns once they are gone; the app is then `stopped`.
    async fn stop_jail(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        let name = self.app.name.clone();
        let graceful = async {
            if self.app.stop_signal == Signal::SIGKILL {
                return None;
            }
            let _ = proc::pidfd_signal(r.pidfd.get_ref(), self.app.stop_signal);
            timeout(self.app.stop_timeout, r.ended()).await.ok()
        };
        let ended = match graceful.await {
            Some(e) => e,
            None => {
                tracing::warn!(app = %name, pid = r.pid, timeout = ?self.app.stop_timeout, "killing the jail");
                kill_jail(&mut r).await
            }
        };
        let _ = proc::remove_pid_file(&self.pid_file);
        tracing::info!(app = %name, pid = r.pid, ended = %describe(ended), "jail stopped");
        self.status.send_modify(|s| {
            s.state = State::Stopped;
            s.pid = None;
            s.since = crate::wall::secs();
            s.last_exit = Some(describe(ended));
        });
    }
}

/// SIGKILL to `run` and to the jail's init (PID 1 of its namespace), then waits for both:
/// when init is gone the kernel has ended every process of the jail.
async fn kill_jail(r: &mut Running) -> Ended {
    let inits = proc::children_pidfds(r.pid);
    for fd in inits.iter().chain([r.pidfd.get_ref()]) {
        let _ = proc::pidfd_signal(fd, Signal::SIGKILL);
    }
    let e = r.ended().await;
    for fd in inits {
        proc::wait_pidfd(fd).await;
    }
    e
}

fn describe(e: Ended) -> String {
    match e {
        Ended::Exited(c) => format!("exited with status {c}"),
        Ended::Signaled(s) => format!("killed by signal {s}"),
        Ended::Unknown => "ended (adopted: status unknown)".into(),
    }
}
