//! The one contract between whatever starts a jail (the supervisor, an exec health check,
//! an operator) and the `droot-fleet run` process that builds it: [`Launch`] is what `run`
//! is told, [`Launch::to_args`] its command line, and `cli::run` parses that line back into
//! the same `Launch` (a round-trip test holds the two together), which
//! [`super::JailSpec::build`] validates. The start gate that keeps
//! a jail from starting before its pid file is written lives here too, both ends.
//!
//! Why: the jail's settings used to change form three times on the way (the app's
//! settings, an argv built by hand, clap's flags, the spec's input), with flags spliced into
//! the argv at an index, and `run` reached into the deploy pipeline for the gate.
//!
//! The argv keeps `run --root ROOT` first and `--start-gate FD` right after it: a running
//! jail's command line is read back to adopt it, also for jails an older agent started.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use super::LogSpec;
use crate::id_range::IdRange;

/// The most listening sockets a jail inherits.
pub const MAX_LISTEN_FDS: usize = 16;

/// Which user namespace a jail runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userns {
    /// The range its release store recorded (`run --userns`).
    Recorded,
    /// This range (`run --userns --userns-base BASE`).
    Range(IdRange),
}

/// Everything `droot-fleet run` is told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launch {
    pub root: PathBuf,
    pub user: Option<String>,
    pub group: Option<String>,
    pub bind: Vec<String>,
    pub robind: Vec<String>,
    pub copy_host_files: bool,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub no_dropcaps: bool,
    pub host_pid: bool,
    pub seccomp_unconfined: bool,
    pub userns: Option<Userns>,
    /// The inherited descriptor of a [`StartGate`].
    pub start_gate: Option<i32>,
    /// Where the jail's output goes, capped and rotated by `run`.
    pub log: Option<LogSpec>,
    /// Listening sockets `run` inherited as descriptors 3.., by name: the command gets them
    /// at the same numbers, with systemd's `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`.
    pub listen_fds: Vec<String>,
    pub command: Vec<String>,
}

impl Launch {
    /// `run --root ROOT [flags] -- COMMAND`, as arguments to the droot-fleet binary.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into(), "--root".into(), (&self.root).into()];
        if let Some(fd) = self.start_gate {
            a.extend(["--start-gate".into(), fd.to_string().into()]);
        }
        if let Some(log) = &self.log {
            a.extend(["--log-file".into(), (&log.path).into()]);
            a.extend(["--log-cap".into(), log.cap.to_string().into()]);
        }
        a.extend((self.listen_fds.iter()).flat_map(|n| ["--listen-fd".into(), n.into()]));
        for (flag, v) in [("--user", &self.user), ("--group", &self.group)] {
            if let Some(v) = v {
                a.extend([flag.into(), v.into()]);
            }
        }
        let repeated = [("--bind", &self.bind), ("--robind", &self.robind)];
        for (flag, values) in repeated {
            a.extend(values.iter().flat_map(|v| [flag.into(), v.into()]));
        }
        let switches = [
            ("--cp", self.copy_host_files),
            ("--no-dropcaps", self.no_dropcaps),
            ("--host-pid", self.host_pid),
        ];
        a.extend(switches.iter().filter(|(_, on)| *on).map(|(f, _)| f.into()));
        if self.seccomp_unconfined {
            a.extend(["--seccomp".into(), "unconfined".into()]);
        }
        a.extend(self.env.iter().flat_map(|e| ["--env".into(), e.into()]));
        match self.userns {
            None => {}
            Some(Userns::Recorded) => a.push("--userns".into()),
            Some(Userns::Range(r)) => a.extend([
                "--userns".into(),
                "--userns-base".into(),
                r.base().to_string().into(),
            ]),
        }
        a.push("--".into());
        a.extend(self.command.iter().map(OsString::from));
        a
    }
}

/// A running `run` process's command line, read back (`/proc/PID/cmdline`): its root and
/// the flags before the jail's command. Also for jails an older agent started, whose flags
/// this release may not know; the command's own arguments are never taken for flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningLaunch {
    root: Vec<u8>,
    flags: Vec<Vec<u8>>,
}

impl RunningLaunch {
    /// `cmdline` (NUL-separated, as the kernel gives it), if it is `EXE run --root ROOT ...`.
    pub fn parse(cmdline: &[u8]) -> Option<Self> {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) != Some(&&b"run"[..]) || args.get(2) != Some(&&b"--root"[..]) {
            return None;
        }
        let root = args.get(3)?.to_vec();
        let flags = (args.iter().skip(4))
            .take_while(|a| **a != b"--")
            .map(|a| a.to_vec())
            .collect();
        Some(RunningLaunch { root, flags })
    }

    /// That of the process `pid`, if it is a `run` process.
    pub fn of_pid(pid: i32) -> Option<Self> {
        Self::parse(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
    }

    /// The root it runs.
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    /// Whether `flag` (e.g. `--userns`) is among its flags.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag.as_bytes())
    }
}

/// The pipe `run --start-gate FD` waits on: the jail starts on the byte
/// [`GateOpener::open`] writes, once its pid file is written, and ends unstarted on EOF, when
/// the opener is dropped unused or the whole supervisor died first. So no jail runs that no
/// pid file names.
pub struct StartGate {
    read: OwnedFd,
    write: OwnedFd,
}

/// The parent's end of a [`StartGate`] once the child is spawned.
pub struct GateOpener(OwnedFd);

impl StartGate {
    /// Both ends close-on-exec; [`Self::pass_to`] lets the child keep the read end.
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(StartGate { read, write })
    }

    /// Sets up what the child inherits: `listen` at descriptors 3.. (in order), the gate's
    /// read end right after them, and no other descriptor above stderr: one the agent
    /// inherited from whatever started it (a lock a wrapper holds, say) must not live on in a
    /// jail that outlives the agent. Returns the gate's number in the child
    /// ([`Launch::start_gate`]).
    pub fn pass_to(&self, cmd: &mut tokio::process::Command, listen: &[RawFd]) -> i32 {
        assert!(
            listen.len() <= MAX_LISTEN_FDS,
            "at most {MAX_LISTEN_FDS} sockets"
        );
        // Fixed-size: nothing may allocate between fork and exec.
        let mut from = [0 as RawFd; MAX_LISTEN_FDS + 1];
        from[..listen.len()].copy_from_slice(listen);
        from[listen.len()] = self.read.as_raw_fd();
        let n = listen.len() + 1;
        // SAFETY: place_fds makes only async-signal-safe calls (fcntl, dup2, close_range) on
        // the child's own descriptor table, and does not allocate.
        unsafe { cmd.pre_exec(move || place_fds(&from[..n])) };
        3 + listen.len() as i32
    }

    /// After spawn: the parent closes its read end, so EOF comes when the opener closes.
    pub fn spawned(self) -> GateOpener {
        drop(self.read);
        GateOpener(self.write)
    }
}

impl GateOpener {
    /// Lets the jail start. A child that already ended makes this a no-op (EPIPE).
    pub fn open(self) {
        let _ = nix::unistd::write(&self.0, &[1]);
    }
}

/// Moves `from[i]` to descriptor `3 + i` and marks every other descriptor above stderr
/// close-on-exec. Each is first copied above every source and target, so a source that sits
/// on another's target is not overwritten before it is moved.
fn place_fds(from: &[RawFd]) -> io::Result<()> {
    let n = from.len() as RawFd;
    let base = from.iter().copied().max().unwrap_or(0).max(2 + n) + 1;
    let mut tmp = [0 as RawFd; MAX_LISTEN_FDS + 1];
    for (i, fd) in from.iter().enumerate() {
        // SAFETY: fcntl on a descriptor number; the copy is close-on-exec.
        let t = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, base) };
        if t < 0 {
            return Err(io::Error::last_os_error());
        }
        tmp[i] = t;
    }
    for (i, t) in tmp[..from.len()].iter().enumerate() {
        // SAFETY: dup2 between descriptor numbers; the target loses close-on-exec.
        if unsafe { libc::dup2(*t, 3 + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
    // SAFETY: close_range with integer arguments; CLOEXEC only sets flags.
    if unsafe { libc::syscall(libc::SYS_close_range, 3 + n, libc::c_uint::MAX, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits on `run --start-gate FD`: true once the supervisor opened it, false on EOF (it
/// gave up on this jail, or died, before recording it).
pub fn wait_start_gate(fd: OwnedFd) -> io::Result<bool> {
    let mut f = File::from(fd);
    let mut byte = [0u8; 1];
    loop {
        match io::Read::read(&mut f, &mut byte) {
            Ok(n) => return Ok(n == 1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[OsString]) -> Vec<u8> {
        let mut out = b"/usr/bin/droot-fleet".to_vec();
        for a in args {
            out.push(0);
            out.extend_from_slice(a.as_encoded_bytes());
        }
        out.push(0);
        out
    }

    /// What the supervisor starts reads back: the root, the flags, and not the command's
    /// own arguments (an app run as `app --userns` is no user-namespace jail).
    #[test]
    fn a_launch_reads_back_from_its_command_line() {
        let launch = Launch {
            root: "/srv/web/releases/v1".into(),
            start_gate: Some(5),
            log: Some(LogSpec {
                path: "/var/lib/a/web.log".into(),
                cap: 10,
            }),
            command: vec!["app".into(), "--userns".into(), "--log-file".into()],
            ..Launch::default()
        };
        let running = RunningLaunch::parse(&cmdline(&launch.to_args())).unwrap();
        assert_eq!(running.root(), b"/srv/web/releases/v1");
        assert!(running.has_flag("--log-file") && running.has_flag("--start-gate"));
        assert!(!running.has_flag("--userns"), "the command's argument");
        let ns = Launch {
            userns: Some(Userns::Recorded),
            ..launch
        };
        assert!(
            RunningLaunch::parse(&cmdline(&ns.to_args()))
                .unwrap()
                .has_flag("--userns")
        );
        assert_eq!(RunningLaunch::parse(b"/bin/sh\0-c\0run\0"), None);
    }
}
