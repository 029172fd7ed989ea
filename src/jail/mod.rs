//! `run`: a command chrooted into a root, in its own mount namespace — the jail.
//!
//! # Why
//! droot ran a Docker-exported rootfs with `chroot` plus a few host mounts. It mounted blindly
//! (a symlink in the rootfs could redirect a mount onto the host), leaked mounts into the host
//! when it died, created `/dev/zero` with the numbers of `/dev/null`, and kept the host's
//! environment. This module keeps droot's model (chroot, not a container) and closes those holes.
//!
//! # What is guaranteed
//! - The jail has its own mount namespace, with `/` made recursively private first: none of its
//!   mounts (a fresh `/proc`, a read-only `/sys`, a small `/dev` tmpfs, binds) appear in the
//!   host's mount table, and they vanish with the last process of the jail.
//! - Every mount target inside the root is reached component by component with
//!   `O_NOFOLLOW`; a symlink anywhere on the way is refused ([`paths`]). `--cp` never writes
//!   through a symlink inside the root ([`etc_copy`]).
//! - Host-wide kernel knobs under `/proc` and `/sys` are read-only or masked, as in runc and
//!   Docker ([`procfs`]).
//! - The process gets exactly the credentials asked for (`setgroups`, `setgid`, `setuid`, in
//!   that order), the capability bounding set is cut to droot's list, inheritable and ambient
//!   sets are cleared and `NO_NEW_PRIVS` is set ([`caps`]) unless `--no-dropcaps`; then the
//!   default seccomp filter goes on just before exec ([`seccomp`]) unless
//!   `--seccomp unconfined`.
//! - The jail is in its own session and never shares the caller's controlling terminal; an
//!   interactive run gets a fresh pty ([`tty`]).
//! - The environment is `/.drootenv` plus `-e`; the host's environment is never inherited,
//!   and no descriptor above stderr survives into the command (a host directory fd would be
//!   a way out of the chroot).
//! - With `--userns` the jail runs in a user namespace whose root is an unprivileged host uid
//!   ([`userns`]): its mounts are made first, as host root, then it unshares the namespace
//!   before the chroot, and can neither change host-root files nor mount anything.
//! - Signals sent to us are forwarded to the jailed process and its exit status becomes ours
//!   (killed by signal N: 128+N). By default the jail has its own PID namespace, where a
//!   minimal init of ours is PID 1 and reaps orphans; `--host-pid` shares the host's
//!   ([`process`]).
//! - A failure after the fork (mount refused, command not found, ...) travels back to the
//!   parent over a close-on-exec pipe as a typed [`JailError`], so the caller sees one error.
//! - A supervised jail (`run --log-file`) writes its stdout and stderr into a pipe that `run`
//!   copies into the app's log, capped and rotated by rename; the jail never holds the log
//!   file ([`output`]).
//!
//! # Layout
//! [`spec`] (pure flag parsing into a [`JailSpec`]), [`user`] (passwd/group), [`env`](mod@env)
//! (environment and `PATH`), [`paths`] (symlink-safe walk), [`etc_copy`] (`--cp`), [`mounts`]
//! (namespace, proc, sys, binds), [`procfs`] (read-only and masked kernel paths), [`devices`]
//! (`/dev`), [`caps`], [`seccomp`], [`userns`] (the user namespace and its maps), [`tty`]
//! (session, pty relay), [`output`] (the log pipe), [`process`] (fork, init, signals, exec),
//! `report` (errors across the fork).
//!
//! [`run`] forks, so it must be called from a single-threaded process (the `run` command
//! never starts a tokio runtime).

pub mod caps;
pub mod devices;
pub mod env;
pub mod etc_copy;
pub mod launch;
pub mod mounts;
pub mod output;
pub mod paths;
pub mod process;
pub mod procfs;
mod report;
pub mod seccomp;
pub mod spec;
pub mod tty;
pub mod user;
pub mod userns;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use output::LogSpec;
pub use process::{JailExit, run};
pub use spec::{BindMount, JailSpec};

/// Exit code for a jail set-up failure (as `docker run`).
pub const EXIT_SETUP: u8 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// An errno value that can cross the fork (serializable), printed as `ENOENT (No such ...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysErr(pub i32);

impl From<nix::errno::Errno> for SysErr {
    fn from(e: nix::errno::Errno) -> Self {
        SysErr(e as i32)
    }
}

impl From<&std::io::Error> for SysErr {
    fn from(e: &std::io::Error) -> Self {
        SysErr(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for SysErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = nix::errno::Errno::from_raw(self.0);
        write!(f, "{e:?}: {}", e.desc())
    }
}

/// Everything that can go wrong in `run`, with what failed and why.
///
/// Serializable so that a failure in the forked child reaches the parent intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum JailError {
    #[error("run needs root (mount namespaces, chroot, mknod); current euid is {euid}")]
    NotRoot { euid: u32 },
    #[error("invalid argument {arg:?}: {reason}")]
    InvalidArg { arg: String, reason: String },
    #[error("root {root} is unusable: {reason}")]
    Root { root: PathBuf, reason: String },
    #[error("bind source {source_path} is unusable: {reason}")]
    BindSource {
        source_path: PathBuf,
        reason: String,
    },
    #[error(
        "refusing {path} inside root {root}: component {component:?} {reason} \
         (mount targets must not go through symlinks)"
    )]
    UnsafePath {
        root: PathBuf,
        path: PathBuf,
        component: String,
        reason: String,
    },
    #[error("cannot prepare {path} inside the root ({op}): {err}")]
    PathSetup {
        path: PathBuf,
        op: String,
        err: SysErr,
    },
    #[error("--cp: cannot copy host {file} into the root: {reason}")]
    Copy { file: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    #[error("unknown user {user:?}: not in the jail's /etc/passwd nor the host's")]
    UnknownUser { user: String },
    #[error("unknown group {group:?}: not in the jail's /etc/group nor the host's")]
    UnknownGroup { group: String },
    #[error("{what} mount on {target} refused: {err}")]
    Mount {
        what: String,
        target: PathBuf,
        err: SysErr,
    },
    #[error("cannot create device {path}: {err}")]
    Device { path: PathBuf, err: SysErr },
    #[error("chroot into {root} failed: {err}")]
    Chroot { root: PathBuf, err: SysErr },
    #[error("cannot switch credentials ({op}): {err}")]
    Credentials { op: String, err: SysErr },
    #[error("cannot restrict capabilities ({op}): {reason}")]
    Capabilities { op: String, reason: String },
    #[error(
        "cannot set up the seccomp filter ({op}): {reason}; \
         `--seccomp unconfined` runs without it"
    )]
    Seccomp { op: String, reason: String },
    #[error("command {cmd:?} not found inside the jail (PATH={path:?})")]
    CommandNotFound { cmd: String, path: String },
    #[error("command {cmd:?} cannot be executed: {err}")]
    NotExecutable { cmd: String, err: SysErr },
    #[error("exec of {cmd:?} failed: {err}")]
    Exec { cmd: String, err: SysErr },
    #[error("user namespace set-up failed ({op}): {err}")]
    UserNamespace { op: String, err: SysErr },
    #[error(
        "root {root} is owned by uid {owner}, outside the jail's id range {range}: it was not \
         unpacked for this user namespace (a store that turns user namespaces on shifts its \
         releases into its range; a plain directory must be chowned into it)"
    )]
    RootOutsideRange {
        root: PathBuf,
        owner: u32,
        range: String,
    },
    #[error("{op} failed: {err}")]
    Sys { op: String, err: SysErr },
    #[error("the jail's set-up process failed without a report: {reason}")]
    ChildLost { reason: String },
    #[error("cannot open the app log {path}: {reason} (jail not started)")]
    Log { path: PathBuf, reason: String },
}

impl JailError {
    /// The exit code the `run` command uses for this error (125, 126 or 127, as `docker run`).
    pub fn exit_code(&self) -> u8 {
        match self {
            JailError::CommandNotFound { .. } => EXIT_NOT_FOUND,
            JailError::NotExecutable { .. } => EXIT_NOT_EXECUTABLE,
            _ => EXIT_SETUP,
        }
    }

    pub(crate) fn sys(op: impl Into<String>, err: impl Into<SysErr>) -> Self {
        JailError::Sys {
            op: op.into(),
            err: err.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_pipe_encoding() {
        let e = JailError::Mount {
            what: "proc".into(),
            target: "/r/proc".into(),
            err: SysErr(libc::EPERM),
        };
        let bytes = postcard::to_allocvec(&e).unwrap();
        let back: JailError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.to_string(),
            "proc mount on /r/proc refused: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn exit_codes_follow_docker_run() {
        let nf = JailError::CommandNotFound {
            cmd: "x".into(),
            path: "/bin".into(),
        };
        assert_eq!(nf.exit_code(), 127);
        let ne = JailError::NotExecutable {
            cmd: "x".into(),
            err: SysErr(libc::EACCES),
        };
        assert_eq!(ne.exit_code(), 126);
        assert_eq!(JailError::NotRoot { euid: 1 }.exit_code(), 125);
    }
}
