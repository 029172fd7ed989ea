//! `run`: flags to a validated [`crate::jail::JailSpec`], then into the jail.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::jail::launch::{Launch, Userns};
use crate::jail::{self, JailSpec};

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
    /// Internal (the supervisor's): descriptors 3.. are listening sockets, one flag each, in
    /// order, by name; the command gets them as systemd's socket activation would.
    #[arg(long = "listen-fd", value_name = "NAME", hide = true)]
    pub listen_fds: Vec<String>,
    /// The command and its arguments, looked up on the jail's PATH.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    /// What these flags tell `run` (the inverse of [`Launch::to_args`]).
    pub fn into_launch(self) -> anyhow::Result<Launch> {
        let userns = match (self.userns, &self.userns_base) {
            (false, _) => None,
            (true, Some(base)) => Some(Userns::Range(crate::id_range::IdRange::parse(base)?)),
            (true, None) => Some(Userns::Recorded),
        };
        Ok(Launch {
            root: self.root,
            user: self.user,
            group: self.group,
            bind: self.bind,
            robind: self.robind,
            copy_host_files: self.cp,
            env: self.env,
            no_dropcaps: self.no_dropcaps,
            host_pid: self.host_pid,
            seccomp_unconfined: self.seccomp == SeccompProfile::Unconfined,
            userns,
            start_gate: self.start_gate,
            log: self.log_file.map(|path| jail::LogSpec {
                path,
                cap: self.log_cap,
            }),
            listen_fds: self.listen_fds,
            command: self.command,
        })
    }
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
    close_inherited_descriptors(args.listen_fds.len());
    check_listen_fds(args.listen_fds.len())?;
    let mut launch = args.into_launch()?;
    launch.root = super::absolute(&launch.root)?;
    let userns = match launch.userns {
        None => None,
        Some(Userns::Range(r)) => Some(r),
        Some(Userns::Recorded) => Some(
            crate::release::userns::recorded_for_root(&launch.root)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--userns: {} is not a release of a store deployed with `deploy --userns`; pass --userns-base BASE",
                    launch.root.display()
                )
            })?,
        ),
    };
    let result = JailSpec::build(launch, userns).and_then(|spec| jail::run(&spec));
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
/// The `listen` sockets at 3.. stay.
fn close_inherited_descriptors(listen: usize) {
    let first = 3 + listen as u32;
    // SAFETY: close_range on plain integers; no descriptor above the sockets belongs to
    // this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Before Linux 5.9: one by one (the listing's own descriptor is closed by then).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd >= first as i32)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: closing a descriptor number nothing in this process uses.
        unsafe { libc::close(fd) };
    }
}

/// Each of the `n` descriptors from 3 must be an open socket: the jail's command is told so.
fn check_listen_fds(n: usize) -> anyhow::Result<()> {
    for fd in 3..3 + n as i32 {
        // SAFETY: fstat into a zeroed struct; only inspects the descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
        if !ok || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            anyhow::bail!(
                "--listen-fd: descriptor {fd} is not an open socket; the sockets go at 3.., one --listen-fd each"
            );
        }
    }
    Ok(())
}

/// Waits on the supervisor's start gate ([`jail::launch::StartGate`]).
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
    jail::launch::wait_start_gate(owned)
        .with_context(|| format!("reading the start gate (descriptor {fd})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// What `droot-fleet` makes of a launch's command line.
    fn parsed(launch: &Launch) -> Launch {
        let argv = std::iter::once("droot-fleet".into()).chain(launch.to_args());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args.into_launch().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// The launch contract holds both ways: every field survives the command line.
    #[test]
    fn a_launch_survives_its_command_line() {
        let full = Launch {
            root: "/srv/web/releases/v2".into(),
            user: Some("app".into()),
            group: Some("staff".into()),
            bind: vec!["/srv/data:/data".into(), "/tmp/x".into()],
            robind: vec!["/etc/ssl:/etc/ssl".into()],
            copy_host_files: true,
            env: vec!["MODE=prod".into(), "EMPTY=".into(), "A=b=c".into()],
            no_dropcaps: true,
            host_pid: true,
            seccomp_unconfined: true,
            userns: Some(Userns::Range(
                crate::id_range::IdRange::new(131072).unwrap(),
            )),
            start_gate: Some(7),
            log: Some(jail::LogSpec {
                path: "/var/log/web.log".into(),
                cap: 12345,
            }),
            listen_fds: vec!["web".into(), "admin".into()],
            command: vec!["httpd".into(), "-f".into(), "--".into(), "-p 80".into()],
        };
        assert_eq!(parsed(&full), full);
        let bare = Launch {
            root: "/r".into(),
            userns: Some(Userns::Recorded),
            command: vec!["true".into()],
            ..Launch::default()
        };
        assert_eq!(parsed(&bare), bare);
    }

    /// From an app's settings: the supervisor's launch, through `run`'s own parser. The
    /// gate comes right after the root (adoption reads it there, also from older agents).
    #[test]
    fn an_apps_settings_reach_run_unchanged() {
        let apps = crate::deploy::app::parse_apps(
            "[apps.web]\nartifact = \"file:///a/{version}.tar\"\nroot = \"/srv/web\"\n\
             command = [\"httpd\", \"-f\"]\nuser = \"app\"\nbind = [\"/srv/data:/data\"]\n\
             copy_files = true\n[apps.web.env]\nMODE = \"prod\"\n",
        )
        .unwrap();
        let mut jail = apps["web"].jail.clone();
        // The executor resolves the range the store holds (here the configured one).
        jail.userns = Some(crate::id_range::IdRange::new(196608).unwrap());
        let mut launch = jail.launch(
            std::path::Path::new("/srv/web/releases/v1"),
            &jail.command,
            true,
        );
        launch.start_gate = Some(9);
        let args = launch.to_args();
        assert_eq!(
            args[..5],
            ["run", "--root", "/srv/web/releases/v1", "--start-gate", "9"]
        );
        let back = parsed(&launch);
        assert_eq!(back, launch);
        assert_eq!(back.env, ["MODE=prod"]);
        assert!(back.copy_host_files && back.userns.is_some());
    }
}
