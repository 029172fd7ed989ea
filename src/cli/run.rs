//! `run`: flags to a validated [`crate::jail::JailSpec`], then into the jail.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::jail::{self, JailSpec, SpecInput};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The root to chroot into (a release dir, or DIR/current).
    #[arg(long)]
    pub root: PathBuf,
    /// User to run as: a name (jail's /etc/passwd first, then the host's) or a uid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Group to run as: a name or a gid. Defaults to the user's primary group.
    #[arg(short = 'g', long)]
    pub group: Option<String>,
    /// Bind mount SRC[:DST] into the jail (DST defaults to SRC); created when missing.
    #[arg(short = 'b', long = "bind")]
    pub bind: Vec<String>,
    /// Read-only bind mount SRC[:DST].
    #[arg(long)]
    pub robind: Vec<String>,
    /// Copy the host's /etc/hosts, /etc/resolv.conf, /etc/passwd and /etc/group into the root.
    #[arg(long)]
    pub cp: bool,
    /// Set KEY=VALUE in the jail's environment (overrides /.drootenv).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Keep all capabilities (skips bounding-set cut, NO_NEW_PRIVS).
    #[arg(long)]
    pub no_dropcaps: bool,
    /// Accepted for compatibility: a new PID namespace is the default (see --host-pid).
    #[arg(long, conflicts_with = "host_pid")]
    pub pid_ns: bool,
    /// Share the host's PID namespace (droot's behaviour): the jail can then see and signal
    /// host processes and read other jails through /proc/PID/root.
    #[arg(long)]
    pub host_pid: bool,
    /// Seccomp profile: `default` (an allow list after Docker's) or `unconfined` (no filter).
    #[arg(long, value_enum, default_value = "default")]
    pub seccomp: SeccompProfile,
    /// Run in a user namespace: root in the jail is the unprivileged host uid BASE, the
    /// jail's id N is host BASE+N (N < 65536). The root must have been deployed for it
    /// (`deploy --userns`).
    #[arg(long)]
    pub userns: bool,
    /// The host id the jail's root maps to (a multiple of 65536); by default the one the
    /// root's release store recorded at `deploy --userns`.
    #[arg(long, value_name = "BASE", requires = "userns")]
    pub userns_base: Option<String>,
    /// Internal (the supervisor's): wait for one byte on this inherited descriptor before
    /// doing anything; EOF ends `run` unstarted (exit 125).
    #[arg(long, value_name = "FD", hide = true, value_parser = clap::value_parser!(i32).range(3..))]
    pub start_gate: Option<i32>,
    /// Internal (the supervisor's): the jail's stdout and stderr go through a pipe into
    /// this file, which `run` caps and rotates to FILE.1; `run`'s own messages follow it.
    #[arg(long, value_name = "FILE", hide = true)]
    pub log_file: Option<PathBuf>,
    /// Internal: the size at which --log-file is rotated.
    #[arg(long, value_name = "BYTES", hide = true, requires = "log_file", default_value_t = 10 << 20)]
    pub log_cap: u64,
    /// The command and its arguments, looked up on the jail's PATH.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `--seccomp` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompProfile {
    /// The built-in allow list, after Docker's default profile.
    Default,
    /// No seccomp filter at all.
    Unconfined,
}

/// Builds the spec, runs the jail, and exits with the command's status. Jail errors are
/// printed here (once) because their exit code matters: 125 set-up, 126 not executable,
/// 127 not found.
pub fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(fd) = args.start_gate
        && !start_gate_opened(fd)?
    {
        eprintln!(
            "droot-fleet: error: not started: the supervisor that spawned this jail ended or gave up on it before recording its pid file"
        );
        return Ok(ExitCode::from(125));
    }
    close_inherited_descriptors();
    let root = super::absolute(&args.root)?;
    let userns = match (args.userns, &args.userns_base) {
        (false, _) => None,
        (true, Some(base)) => Some(crate::id_range::IdRange::parse(base)?),
        (true, None) => Some(crate::release::userns::recorded_for_root(&root)?.ok_or_else(|| {
            anyhow::anyhow!(
                "--userns: {} is not a release of a store deployed with `deploy --userns`; pass --userns-base BASE",
                root.display()
            )
        })?),
    };
    let input = SpecInput {
        root,
        user: args.user,
        group: args.group,
        bind: args.bind,
        robind: args.robind,
        copy_host_files: args.cp,
        env: args.env,
        no_dropcaps: args.no_dropcaps,
        host_pid: args.host_pid,
        seccomp_unconfined: args.seccomp == SeccompProfile::Unconfined,
        userns,
        command: args.command,
        log: args.log_file.map(|path| jail::LogSpec {
            path,
            cap: args.log_cap,
        }),
    };
    let result = JailSpec::build(input).and_then(|spec| jail::run(&spec));
    match result {
        Ok(exit) => Ok(ExitCode::from(exit.code())),
        Err(err) => {
            eprintln!("droot-fleet: error: {err}");
            Ok(ExitCode::from(err.exit_code()))
        }
    }
}

/// Closes every descriptor above stderr. Whatever the process that started `run` left open
/// (an agent started under `flock(1)`, a shell's redirection) would otherwise stay open in
/// `run` and in the jail's init, which is forked, not exec'd, for as long as the jail runs
/// (a `leave_running` jail outlives its agent): a lock held for good, a host file or
/// directory that only the capability check of `/proc/1/fd` keeps from the jail's root.
/// Nothing of this process's own is open yet (the start gate was closed after its byte).
fn close_inherited_descriptors() {
    // SAFETY: close_range on plain integers; no descriptor above 2 belongs to this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Before Linux 5.9: one by one (the listing's own descriptor is closed by then).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: closing a descriptor number nothing in this process uses.
        unsafe { libc::close(fd) };
    }
}

/// Waits on the supervisor's start gate (see `deploy::supervisor::proc::StartGate`).
fn start_gate_opened(fd: i32) -> anyhow::Result<bool> {
    use anyhow::Context;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: F_GETFD only checks that the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        anyhow::bail!("--start-gate {fd}: no such open descriptor");
    }
    // SAFETY: the descriptor is open and nothing else in this process uses it: it was
    // inherited for this purpose only.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::deploy::supervisor::proc::wait_start_gate(owned)
        .with_context(|| format!("reading the start gate (descriptor {fd})"))
}
