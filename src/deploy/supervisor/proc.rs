//! The supervisor's process plumbing: pid files, `/proc/PID/stat` start times, pidfds and the
//! app log's name and flags.
//!
//! Guarantees:
//! - A pid file names a process by pid **and** start time (field 22 of `/proc/PID/stat`, in
//!   clock ticks since boot), and is replaced by rename(2) only. A pid is adopted only when
//!   both still match and its command line is `droot-fleet run --root ROOT`, so a recycled
//!   pid is never adopted, signalled or waited for.
//! - Every signal goes through a pidfd (`pidfd_send_signal`), opened while the process is
//!   known to be ours, so a signal can never reach a process that reused the pid.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::jail::launch::RunningLaunch;

/// What a pid file records about one running jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// Host pid of the `droot-fleet run` process.
    pub pid: i32,
    /// Its start time, field 22 of `/proc/PID/stat`.
    pub start_time: u64,
    /// The release it runs (`releases/<release>`).
    pub release: String,
    /// Unix seconds when it was started.
    pub since: u64,
}

/// Field 22 (starttime) of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat"))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// Field `n` (1-based, `n >= 3`) of a `/proc/PID/stat` line, counted after the last `)`
/// (field 3, the state, is the first one after it).
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n - 3)
}

/// Reads a pid file; `None` when there is none.
pub fn read_pid_file(path: &Path) -> io::Result<Option<PidRecord>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a pid file atomically (temp file, fsync, rename).
pub fn write_pid_file(path: &Path, rec: &PidRecord) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(rec).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Removes a pid file; a missing one is fine.
pub fn remove_pid_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Why a pid file was not adopted.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdopted {
    /// No process has that pid any more.
    Gone,
    /// The pid now belongs to another process (start time or command line differ).
    Recycled,
}

/// Opens a pidfd on the recorded process if it is still the same `droot-fleet run --root
/// ROOT`: same start time, same command line. The pidfd is opened first and the checks made
/// after, so the pidfd cannot name a process that replaced the checked one.
pub fn adopt(rec: &PidRecord, root: &Path) -> Result<OwnedFd, NotAdopted> {
    let fd = pidfd_open(rec.pid).map_err(|_| NotAdopted::Gone)?;
    let started = start_time(rec.pid).map_err(|_| NotAdopted::Gone)?;
    if started != rec.start_time {
        return Err(NotAdopted::Recycled);
    }
    let running = RunningLaunch::of_pid(rec.pid).ok_or(NotAdopted::Recycled)?;
    if running.root() != root.as_os_str().as_encoded_bytes() {
        return Err(NotAdopted::Recycled);
    }
    Ok(fd)
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the kernel returns a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: ESRCH when the process is gone.
pub fn pidfd_signal(fd: &OwnedFd, sig: Signal) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pidfds of the children of `pid` (the jail's init, for `run`). Each is checked to still be
/// a child of `pid` after its pidfd is open, so none names a process that reused a pid.
pub fn children_pidfds(pid: i32) -> Vec<OwnedFd> {
    child_pids(pid)
        .into_iter()
        .filter_map(|c| {
            let fd = pidfd_open(c).ok()?;
            let stat = fs::read_to_string(format!("/proc/{c}/stat")).ok()?;
            let ppid: i32 = stat_field(&stat, 4)?.parse().ok()?;
            (ppid == pid).then_some(fd)
        })
        .collect()
}

/// The pids `/proc/PID/task/PID/children` lists (the jail's init, for `run`); a pid read
/// here may be reused by the time it is used.
pub fn child_pids(pid: i32) -> Vec<i32> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Registers a pidfd with tokio's reactor (readable once the process has exited).
pub fn async_pidfd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and always returns the same descriptor until it is dropped,
    // which happens only with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// Waits (at most 10 s) until the process of a pidfd has exited. For a PID namespace's init,
/// the kernel has then ended every process of the namespace.
pub async fn wait_pidfd(fd: OwnedFd) {
    let Ok(afd) = async_pidfd(fd) else {
        return;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), afd.readable()).await;
}

/// A per-app log file: `NAME.log`, and `NAME.log.1` once rotated. The jail's output reaches
/// it through a pipe that its `droot-fleet run` process reads, caps and rotates by rename
/// ([`crate::jail::output`]); the supervisor only opens it for `run`'s own first messages
/// and names it with `--log-file`, so a jail outlives its supervisor without losing its output.
#[derive(Debug, Clone)]
pub struct AppLog {
    pub path: PathBuf,
    pub cap: u64,
}

impl AppLog {
    /// Opens the log for appending, for `run`'s own stdout and stderr until it opens it
    /// itself.
    pub fn open(&self) -> io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
    }

    /// What `run` is told of the log ([`crate::jail::launch::Launch::log`]).
    pub fn spec(&self) -> crate::jail::LogSpec {
        crate::jail::LogSpec {
            path: self.path.clone(),
            cap: self.cap,
        }
    }

    /// For a jail adopted from a release before `run --log-file`, whose output still goes to
    /// the file itself: above the cap the file is emptied in place (never copied: the jail
    /// may have made it a huge sparse file). Returns whether it did.
    pub fn enforce_legacy_cap(&self) -> io::Result<bool> {
        let len = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if len <= self.cap {
            return Ok(false);
        }
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?
            .set_len(0)?;
        Ok(true)
    }
}

/// Whether the `run` process `pid` writes its log itself (`run --log-file`), judged from its
/// command line; `false` for a jail started by a release before that flag.
pub fn runs_with_log(pid: i32) -> bool {
    RunningLaunch::of_pid(pid).is_some_and(|r| r.has_flag("--log-file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_hostile_comm() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("42 (x"), None);
        assert!(start_time(std::process::id() as i32).unwrap() > 0);
    }

    #[test]
    fn pid_file_round_trip_and_recycled_pid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pid");
        assert_eq!(read_pid_file(&p).unwrap(), None);
        let me = std::process::id() as i32;
        let rec = PidRecord {
            pid: me,
            start_time: start_time(me).unwrap() + 1,
            release: "v1".into(),
            since: 1,
        };
        write_pid_file(&p, &rec).unwrap();
        assert_eq!(read_pid_file(&p).unwrap(), Some(rec.clone()));
        assert_eq!(
            adopt(&rec, Path::new("/r")).unwrap_err(),
            NotAdopted::Recycled
        );
        let same_time = PidRecord {
            start_time: start_time(me).unwrap(),
            ..rec
        };
        // Right start time, but this test binary is not `droot-fleet run --root /r`.
        assert_eq!(
            adopt(&same_time, Path::new("/r")).unwrap_err(),
            NotAdopted::Recycled
        );
        remove_pid_file(&p).unwrap();
        remove_pid_file(&p).unwrap();
    }

    #[test]
    fn a_legacy_log_is_emptied_in_place_never_copied() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog {
            path: dir.path().join("a.log"),
            cap: 10,
        };
        let mut f = log.open().unwrap();
        f.write_all(b"0123456789").unwrap();
        assert!(!log.enforce_legacy_cap().unwrap());
        // What a jail holding the file could do: a 3 GB sparse file.
        f.set_len(3_000_000_000).unwrap();
        assert!(log.enforce_legacy_cap().unwrap());
        assert_eq!(fs::metadata(&log.path).unwrap().len(), 0);
        assert!(!dir.path().join("a.log.1").exists(), "copied");
        assert!(!runs_with_log(std::process::id() as i32));
    }
}
