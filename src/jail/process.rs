//! Processes: the fork into new namespaces, the set-up sequence in the child, the init of
//! the PID namespace, signal forwarding and the exit status.
//!
//! ```text
//! droot-fleet (parent, host namespaces; signals blocked; a pty relay when stdin is a tty;
//!              with --userns: writes the child's uid/gid maps when it asks)
//!  └─ clone(CLONE_NEWNS | CLONE_NEWPID)             (no CLONE_NEWPID with --host-pid)
//!      child: setsid, umask 022, rprivate, proc, sys, dev, /proc masks, binds,
//!             [--userns: unshare(CLONE_NEWUSER), wait for the maps, become its root],
//!             chroot, user lookup, env
//!        default:     it is PID 1 (our init): fork → setsid, pty, caps, creds, NO_NEW_PRIVS,
//!                     seccomp, exec CMD; init reaps every orphan, forwards signals, exits
//!                     with CMD's status
//!        --host-pid:  pty, caps, creds, NO_NEW_PRIVS, seccomp, exec CMD
//! ```
//!
//! Errors in the child are sent to the parent over a close-on-exec pipe (postcard-encoded
//! [`JailError`]); a successful exec closes it empty. The parent forwards HUP, INT, QUIT,
//! USR1, USR2, ALRM, TERM, CONT and WINCH to the child and returns its status.
//! The signal mask is per thread: [`run`] must be called from a single-threaded process.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::paths::{self, Kind};
use super::report::{read_report, report_and_exit};
use super::spec::JailSpec;
use super::user::{self, UserDb};
use super::{
    JailError, caps, devices, env, etc_copy, mounts, output, procfs, seccomp, tty, userns,
};

/// How the jailed command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailExit {
    /// Exited with this code. In a PID namespace (the default), a command killed by signal N
    /// shows as 128+N.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl JailExit {
    /// The shell convention: the exit code, or 128+N for signal N.
    pub fn code(self) -> u8 {
        match self {
            JailExit::Exited(c) => (c & 0xff) as u8,
            JailExit::Signaled(s) => (128 + s).clamp(0, 255) as u8,
        }
    }
}

/// Signals forwarded to the jailed process.
pub const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
];

const CHILD_STACK: usize = 8 << 20;

/// Everything the child needs, prepared in the parent before the fork.
struct Plan<'a> {
    spec: &'a JailSpec,
    root: PathBuf,
    /// Per bind: what the source is, and its path relative to the root when it lies inside
    /// it (then it is resolved without following the rootfs's symlinks, like a target).
    binds: Vec<(Kind, Option<PathBuf>)>,
    host_db: UserDb,
    /// The compiled seccomp filter; `None` with `--seccomp unconfined`.
    seccomp: Option<seccomp::Filter>,
    /// The child's end of the console socket when stdin is a terminal ([`tty`]).
    console: Option<RawFd>,
    /// The output pipe of a supervised jail ([`output`]).
    output: Option<output::ChildFds>,
    /// The user namespace sync socket with `--userns` ([`userns`]): the child's end, and the
    /// parent's, which the child closes so that the parent's death shows on its own.
    userns_sync: Option<(RawFd, RawFd)>,
}

/// Runs `spec` and returns how the command ended. Set-up failures (also those that happen
/// in the forked child) are returned as errors. Blocks until the command exits.
pub fn run(spec: &JailSpec) -> Result<JailExit, JailError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(JailError::NotRoot {
            euid: euid.as_raw(),
        });
    }
    let root_fd = paths::open_root(&spec.root)?;
    let root = std::fs::canonicalize(&spec.root).map_err(|e| JailError::Root {
        root: spec.root.clone(),
        reason: e.to_string(),
    })?;
    let binds = bind_sources(spec, &root)?;
    if let Some(range) = spec.userns {
        userns::check_root(root_fd.as_fd(), &root, range)?;
    }
    if spec.copy_host_files {
        let owner = spec.userns.map(|r| (r.base(), r.base()));
        etc_copy::copy_host_files(root_fd.as_fd(), &root, Path::new("/etc"), owner)?;
    }
    // Only needed for --cp; the child reopens the root in its own mount namespace.
    drop(root_fd);
    let host_db = host_user_db()?;
    let seccomp = match spec.seccomp {
        true => Some(seccomp::Filter::compile()?),
        false => None,
    };
    // A logged jail has no terminal: its output goes to the log.
    let output = spec.log.as_ref().map(output::Output::open).transpose()?;
    let console = match output {
        Some(_) => None,
        None => tty::socket_if_terminal()?,
    };
    let sync = spec.userns.map(|_| userns::Sync::new()).transpose()?;
    let plan = Plan {
        spec,
        root,
        binds,
        host_db,
        seccomp,
        console: console.as_ref().map(|c| c.child.as_raw_fd()),
        output: output.as_ref().map(output::Output::child_fds),
        userns_sync: sync
            .as_ref()
            .map(|s| (s.child.as_raw_fd(), s.parent.as_raw_fd())),
    };
    let (report_rd, report_wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| JailError::sys("pipe2", e))?;

    let mut wait_set = SigSet::empty();
    for s in FORWARDED {
        wait_set.add(s);
    }
    wait_set.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&wait_set), Some(&mut old_mask))
        .map_err(|e| JailError::sys("block signals", e))?;

    let streams = Streams {
        console,
        output,
        sync,
        report: (report_rd, report_wr),
    };
    let result = spawn_and_supervise(&plan, streams, &wait_set);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    result
}

/// Each bind's source kind, and its path inside the jail's root when it lies there.
fn bind_sources(spec: &JailSpec, root: &Path) -> Result<Vec<(Kind, Option<PathBuf>)>, JailError> {
    (spec.binds.iter())
        .map(|b| {
            let inside = (b.source.strip_prefix(&spec.root))
                .or_else(|_| b.source.strip_prefix(root))
                .ok()
                .map(Path::to_path_buf);
            Ok((bind_source_kind(&b.source)?, inside))
        })
        .collect()
}

/// The host's users and groups, for names given to the jail.
fn host_user_db() -> Result<UserDb, JailError> {
    let passwd = read_optional(Path::new("/etc/passwd"))?.unwrap_or_default();
    let group = read_optional(Path::new("/etc/group"))?.unwrap_or_default();
    Ok(UserDb {
        host_passwd: user::parse_passwd(&passwd),
        host_group: user::parse_group(&group),
        ..UserDb::default()
    })
}

/// The parent's ends of what connects it to the child.
struct Streams {
    console: Option<tty::ConsoleSocket>,
    output: Option<output::Output>,
    sync: Option<userns::Sync>,
    /// The child's error report: read end, write end.
    report: (OwnedFd, OwnedFd),
}

fn spawn_and_supervise(
    plan: &Plan<'_>,
    streams: Streams,
    wait_set: &SigSet,
) -> Result<JailExit, JailError> {
    let Streams {
        console,
        output,
        sync,
        report: (rd, wr),
    } = streams;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if plan.spec.pid_ns {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    let wr_raw = wr.as_raw_fd();
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the caller is single-threaded (documented contract of `run`), so the child
    // holds no lock another thread owned; the child never returns into the parent's frames:
    // it execs or calls `_exit`. The stack is large enough for the set-up code.
    let child = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(plan, wr_raw, wait_set)),
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(|e| JailError::sys("clone (new mount/PID namespace)", e))?;
    drop(wr);
    // Kept open until we return: the jail's init checks it to know we are alive.
    let sync = sync.map(|s| {
        drop(s.child);
        s.parent
    });
    if let (Some(sock), Some(range)) = (&sync, plan.spec.userns)
        && let Err(e) = userns::map_child(child, range, sock)
    {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    let pump = match output.map(output::Output::start).transpose() {
        Ok(p) => p,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(e);
        }
    };
    let result = wait_child(child, console, rd, wait_set);
    if let Some(p) = pump {
        p.finish(output::FINISH_DEADLINE);
    }
    drop(sync);
    result
}

/// After the clone: the child's report, then the relay or the wait until it exits.
fn wait_child(
    child: Pid,
    console: Option<tty::ConsoleSocket>,
    rd: OwnedFd,
    wait_set: &SigSet,
) -> Result<JailExit, JailError> {
    // The pty is opened in the jail; its master comes back over the console socket.
    let master = console
        .map(|c| {
            drop(c.child);
            tty::receive_master(&c.parent)
        })
        .transpose();
    tracing::debug!(pid = child.as_raw(), "jail process started");
    if let Some(err) = read_report(rd) {
        let _ = waitpid(child, None);
        return Err(err);
    }
    match master?.flatten() {
        Some(m) => tty::relay(m, child, wait_set),
        None => supervise(child, wait_set),
    }
}

/// The exit of `child` once it has ended; `None` while it runs.
pub(crate) fn reap(child: Pid) -> Result<Option<JailExit>, JailError> {
    loop {
        return match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(JailExit::Exited(code))),
            Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(JailExit::Signaled(sig as i32))),
            Err(Errno::EINTR) => continue,
            Ok(_) => Ok(None),
            Err(e) => Err(JailError::sys(format!("waitpid {child}"), e)),
        };
    }
}

/// Waits for `child`, forwarding every signal in `wait_set` except SIGCHLD to it. The jail
/// is in its own session, so the terminal's ^C reaches only us: it is forwarded too.
fn supervise(child: Pid, wait_set: &SigSet) -> Result<JailExit, JailError> {
    loop {
        if let Some(exit) = reap(child)? {
            return Ok(exit);
        }
        let sig = next_signal(wait_set).map_err(|e| JailError::sys("sigwaitinfo", e))?;
        if sig != Signal::SIGCHLD {
            tracing::debug!(signal = %sig, pid = child.as_raw(), "forwarding signal");
            let _ = kill(child, sig);
        }
    }
}

/// Takes the next signal of `set` (all blocked).
fn next_signal(set: &SigSet) -> Result<Signal, Errno> {
    loop {
        // SAFETY: `set` is a valid sigset_t; no siginfo is asked for.
        let n = unsafe { libc::sigwaitinfo(set.as_ref(), std::ptr::null_mut()) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        return Signal::try_from(n);
    }
}

/// What a bind source is; it must exist on the host.
fn bind_source_kind(src: &Path) -> Result<Kind, JailError> {
    let md = std::fs::metadata(src).map_err(|e| JailError::BindSource {
        source_path: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(if md.is_dir() { Kind::Dir } else { Kind::File })
}

/// Reads a text file; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, JailError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JailError::ReadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

mod child;
use child::child_main;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(JailExit::Exited(7).code(), 7);
        assert_eq!(JailExit::Signaled(15).code(), 143);
        assert_eq!(JailExit::Exited(0).code(), 0);
    }
}
