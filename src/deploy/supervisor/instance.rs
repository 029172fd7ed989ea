//! One instance of an app: a `droot-fleet run` process the supervisor started or adopted,
//! watched through a pidfd. How one is started (the launch, the start gate, the pid file,
//! the sockets at 3..), how its end is awaited, and how it is stopped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, timeout};

use super::SupervisorError;
use super::policy::Ended;
use super::proc::{self, AppLog, PidRecord};
use crate::deploy::app::AppConfig;
use crate::jail::launch::StartGate;

/// A live jail: the `run` process, by pidfd (and as our child when we started it).
pub(super) struct Instance {
    pub(super) pid: i32,
    pub(super) release: String,
    /// Unix seconds when it was started.
    pub(super) since: u64,
    pub(super) pidfd: AsyncFd<OwnedFd>,
    child: Option<tokio::process::Child>,
    pub(super) started: Instant,
    /// Adopted from a release whose jails write the log file themselves: the supervisor
    /// caps it ([`AppLog::enforce_legacy_cap`]) until the jail is restarted.
    pub(super) legacy_log: bool,
}

/// What starting an instance needs besides the app.
pub(super) struct Spawn<'a> {
    pub(super) exe: &'a Path,
    pub(super) log: &'a AppLog,
    /// Where its pid file goes (written before the jail may start).
    pub(super) pid_file: &'a Path,
    /// The app's listening sockets, handed over as descriptors 3.. .
    pub(super) sockets: &'a [OwnedFd],
    /// `NOTIFY_SOCKET=...` for its environment, with readiness by notification.
    pub(super) notify_env: Option<String>,
}

impl Instance {
    /// An adopted `run` process (not our child), from its pid file's record.
    pub(super) fn adopted(rec: PidRecord, fd: OwnedFd) -> std::io::Result<Self> {
        Ok(Instance {
            pid: rec.pid,
            legacy_log: !proc::runs_with_log(rec.pid),
            release: rec.release,
            since: rec.since,
            pidfd: proc::async_pidfd(fd)?,
            child: None,
            started: Instant::now(),
        })
    }

    /// Starts `droot-fleet run` on `release` and records its pid file; the jail starts only
    /// once that is written.
    pub(super) fn spawn(
        app: &AppConfig,
        release: &str,
        root: &Path,
        s: Spawn<'_>,
    ) -> Result<Instance, SupervisorError> {
        let spawn_err = |source| SupervisorError::Spawn {
            app: app.name.clone(),
            exe: s.exe.to_path_buf(),
            source,
        };
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| SupervisorError::Io { what, path, source }
        };
        let mut launch = app.jail.launch(root, &app.jail.command, true);
        launch.log = Some(s.log.spec());
        launch.listen_fds = app.listen.iter().map(|l| l.name.clone()).collect();
        launch.env.extend(s.notify_env);
        // The jail waits until its pid file is written: if this agent dies before, nobody
        // could find (adopt or stop) it, so it must not start at all.
        let gate = StartGate::new().map_err(spawn_err)?;
        let out = (s.log.open()).map_err(io_err("cannot open the app log", &s.log.path))?;
        let err = (out.try_clone()).map_err(io_err("cannot open the app log", &s.log.path))?;
        let mut cmd = tokio::process::Command::new(s.exe);
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let sockets: Vec<i32> = s.sockets.iter().map(|f| f.as_raw_fd()).collect();
        launch.start_gate = Some(gate.pass_to(&mut cmd, &sockets));
        cmd.args(launch.to_args());
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
            release: release.to_string(),
            since,
        };
        // On error the gate closes unopened, and the jail ends without starting.
        proc::write_pid_file(s.pid_file, &rec)
            .map_err(io_err("cannot write the pid file", s.pid_file))?;
        gate.open();
        tracing::info!(app = %app.name, pid, %release, "jail started");
        Ok(Instance {
            pid,
            release: release.to_string(),
            since,
            pidfd: proc::async_pidfd(fd).map_err(spawn_err)?,
            child: Some(child),
            started: Instant::now(),
            legacy_log: false,
        })
    }

    /// Resolves when the `run` process has ended.
    pub(super) async fn ended(&mut self) -> Ended {
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

    /// Stops it: `signal`, then SIGKILL to `run` and the jail's init after `grace`.
    /// Returns once they are gone.
    pub(super) async fn stop(mut self, app: &str, signal: Signal, grace: Duration) -> Ended {
        let graceful = async {
            if signal == Signal::SIGKILL {
                return None;
            }
            let _ = proc::pidfd_signal(self.pidfd.get_ref(), signal);
            timeout(grace, self.ended()).await.ok()
        };
        let ended = match graceful.await {
            Some(e) => e,
            None => {
                tracing::warn!(%app, pid = self.pid, timeout = ?grace, "killing the jail");
                self.kill().await
            }
        };
        tracing::info!(%app, pid = self.pid, ended = %describe(ended), "jail stopped");
        ended
    }

    /// SIGKILL to `run` and to the jail's init (PID 1 of its namespace), then waits for
    /// both: when init is gone the kernel has ended every process of the jail.
    async fn kill(&mut self) -> Ended {
        let inits = proc::children_pidfds(self.pid);
        for fd in inits.iter().chain([self.pidfd.get_ref()]) {
            let _ = proc::pidfd_signal(fd, Signal::SIGKILL);
        }
        let e = self.ended().await;
        for fd in inits {
            proc::wait_pidfd(fd).await;
        }
        e
    }
}

/// Where an app's pid files are.
pub(super) struct PidFiles {
    /// `APP.pid`: the instance that serves.
    pub(super) serving: PathBuf,
    /// `APP.next.pid`: one a deploy started beside it.
    pub(super) next: PathBuf,
    /// `APP.old.pid`: one that drains after the next took over.
    pub(super) old: PathBuf,
}

impl PidFiles {
    pub(super) fn new(state_dir: &Path, app: &str) -> Self {
        let file = |what: &str| state_dir.join(format!("{app}{what}.pid"));
        PidFiles {
            serving: file(""),
            next: file(".next"),
            old: file(".old"),
        }
    }
}

pub(super) fn describe(e: Ended) -> String {
    match e {
        Ended::Exited(c) => format!("exited with status {c}"),
        Ended::Signaled(s) => format!("killed by signal {s}"),
        Ended::Unknown => "ended (adopted: status unknown)".into(),
    }
}
