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
    /// Seccomp profile: `default` (deny the dangerous syscalls) or `unconfined` (no filter).
    #[arg(long, value_enum, default_value = "default")]
    pub seccomp: SeccompProfile,
    /// The command and its arguments, looked up on the jail's PATH.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `--seccomp` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompProfile {
    /// The built-in filter (Docker's default deny list).
    Default,
    /// No seccomp filter at all.
    Unconfined,
}

/// Builds the spec, runs the jail, and exits with the command's status. Jail errors are
/// printed here (once) because their exit code matters: 125 set-up, 126 not executable,
/// 127 not found.
pub fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    let input = SpecInput {
        root: super::absolute(&args.root)?,
        user: args.user,
        group: args.group,
        bind: args.bind,
        robind: args.robind,
        copy_host_files: args.cp,
        env: args.env,
        no_dropcaps: args.no_dropcaps,
        host_pid: args.host_pid,
        seccomp_unconfined: args.seccomp == SeccompProfile::Unconfined,
        command: args.command,
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
