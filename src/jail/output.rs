//! A supervised jail's stdout and stderr: a pipe that `run` reads, writes to the app's log
//! file, caps and rotates by rename. The jail never holds a descriptor of the log file.
//!
//! Why: when the jail's stdout was the log file itself, any jail user could `ftruncate(1,
//! 3e9)` it into a 3 GB sparse file, and the cap then copied it byte for byte into
//! `NAME.log.1` (2.8 GiB of real disk, written as root). A pipe cannot be truncated, sought
//! or reopened as the file, and only bytes the jail actually wrote reach the disk.
//!
//! Who writes: the `droot-fleet run` process that owns the jail (outside the chroot), not
//! the agent, so a jail left running across an agent restart or upgrade
//! (`leave_running`) keeps logging and rotating with no agent at all.
//!
//! Bounds (disk, memory, time):
//! - `NAME.log` never grows past `cap` from the jail's bytes: a write that would cross it
//!   is split, the file renamed to `NAME.log.1` (replacing the previous one) and a new
//!   `NAME.log` opened. Lines are not respected: a line (or one `write`) that never ends is
//!   cut at the cap like any other bytes. On disk: at most `2 * cap`, plus `run`'s own few
//!   messages (its stdout and stderr follow the current file).
//! - Between the pipe and the file sits a queue of at most [`QUEUE_CHUNKS`] reads of at
//!   most [`CHUNK`] bytes each. The reader never waits on the disk: when the writer is stuck
//!   (a stalled or full log disk) and the queue is full, further output is **dropped and
//!   counted**, and a line `[droot-fleet: N bytes of output dropped ...]` marks the gap once
//!   the writer moves again. The jail never blocks on its stdout longer than it takes to
//!   read the pipe; a write error (ENOSPC) drops that chunk the same way.
//! - When the jail has ended, [`Pump::finish`] drains what is left for at most
//!   [`FINISH_DEADLINE`] (a writer stuck on a dead disk is abandoned; `run` exits anyway).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::JailError;

/// Bytes taken from the pipe per read (the default pipe capacity).
pub const CHUNK: usize = 64 << 10;
/// Reads queued for the writer at most: with [`CHUNK`], 1 MiB of memory.
pub const QUEUE_CHUNKS: usize = 16;
/// How long [`Pump::finish`] waits for the last bytes to reach the file.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(5);
/// What [`Pump::finish`] still reads from the pipe after the jail ended (a `--host-pid`
/// daemon may keep writing).
const FINISH_MAX_BYTES: usize = 4 << 20;

/// Where a supervised jail's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// `NAME.log`; the rotated copy is `NAME.log.1` beside it.
    pub path: PathBuf,
    /// Size at which the file is rotated (bytes, at least 1).
    pub cap: u64,
}

/// The log file, kept under its cap by rotation.
pub struct RotatingLog {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
    /// Make this process's own stdout and stderr follow the current file.
    follow_stdio: bool,
}

impl RotatingLog {
    /// Opens (creates 0600) `spec.path` for appending; it must be a regular file.
    pub fn open(spec: &LogSpec, follow_stdio: bool) -> io::Result<Self> {
        let file = open_log(&spec.path)?;
        let size = file.metadata()?.len();
        let log = RotatingLog {
            path: spec.path.clone(),
            cap: spec.cap.max(1),
            file,
            size,
            follow_stdio,
        };
        log.point_stdio()?;
        Ok(log)
    }

    /// The rotated copy's path: `NAME.log.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    fn point_stdio(&self) -> io::Result<()> {
        if self.follow_stdio {
            for target in [1, 2] {
                // SAFETY: dup2 onto this process's own stdio; both descriptors are open.
                if unsafe { libc::dup2(self.file.as_raw_fd(), target) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Renames the file to `NAME.log.1` (replacing it) and starts a new one.
    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = open_log(&self.path)?;
        self.size = self.file.metadata()?.len();
        self.point_stdio()
    }

    /// Appends `data`, rotating whenever the file reached its cap.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.cap {
                self.rotate()?;
            }
            let room = usize::try_from(self.cap - self.size).unwrap_or(usize::MAX);
            let n = room.min(data.len()).max(1);
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// The descriptor of the current file (the jail's child closes it).
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    // O_NONBLOCK only kept a FIFO planted at the path from blocking the open.
    fcntl(file.as_fd(), FcntlArg::F_SETFL(OFlag::O_APPEND)).map_err(io::Error::from)?;
    Ok(file)
}

/// The descriptors the jail's child needs: the pipe's write end for its stdout and
/// stderr, and the ones it must close (the pipe's read end, the log file).
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    write: RawFd,
    close: [RawFd; 2],
}

/// In the jail's child, first thing after the clone: stdout and stderr become the pipe,
/// and no descriptor of the log file or of the pipe's read end stays open (init never
/// execs, so close-on-exec alone would not do).
pub fn redirect_in_child(fds: ChildFds) -> Result<(), JailError> {
    for target in [1, 2] {
        // SAFETY: dup2 on descriptors this process holds.
        if unsafe { libc::dup2(fds.write, target) } < 0 {
            return Err(JailError::sys("dup2 of the output pipe", Errno::last()));
        }
    }
    for fd in fds.close.into_iter().chain([fds.write]) {
        // SAFETY: closing our copies; nothing in the child uses these numbers again.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The pipe and the log, set up before the clone.
pub struct Output {
    read: OwnedFd,
    write: OwnedFd,
    log: RotatingLog,
}

impl Output {
    /// Opens the log (`run`'s own stdout and stderr now follow it) and the pipe.
    pub fn open(spec: &LogSpec) -> Result<Self, JailError> {
        let log = RotatingLog::open(spec, true).map_err(|e| JailError::Log {
            path: spec.path.clone(),
            reason: e.to_string(),
        })?;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| JailError::sys("pipe2 (the jail's output)", e))?;
        Ok(Output { read, write, log })
    }

    /// What the child needs ([`redirect_in_child`]).
    pub fn child_fds(&self) -> ChildFds {
        ChildFds {
            write: self.write.as_raw_fd(),
            close: [self.read.as_raw_fd(), self.log.raw_fd()],
        }
    }

    /// After the clone: closes our write end and starts copying.
    pub fn start(self) -> Result<Pump, JailError> {
        drop(self.write);
        Pump::start(self.read, self.log)
    }
}

/// What travels from the reader to the writer.
enum Chunk {
    Data(Vec<u8>),
    /// This many bytes were dropped here (queue full or the file refused them).
    Dropped(u64),
}

/// The threads that copy the pipe into the log.
pub struct Pump {
    stop: OwnedFd,
    done: Receiver<()>,
}

impl Pump {
    /// Starts the reader and the writer threads. They inherit the caller's signal mask.
    pub fn start(read: OwnedFd, mut log: RotatingLog) -> Result<Pump, JailError> {
        let spawn_err = |e: io::Error| JailError::sys("start the output threads", &e);
        let (stop_rd, stop_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| JailError::sys("pipe2 (output stop)", e))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CHUNKS);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                write_chunks(&rx, |b| log.write(b));
                let _ = done_tx.send(());
            })
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("log-reader".into())
            .spawn(move || read_pipe(&read, &stop_rd, &tx))
            .map_err(spawn_err)?;
        Ok(Pump {
            stop: stop_wr,
            done,
        })
    }

    /// After the jail ended: takes what is left in the pipe (bounded) and waits up to
    /// `deadline` for it to reach the file. Threads still busy then are left to die with
    /// the process.
    pub fn finish(self, deadline: Duration) {
        let _ = nix::unistd::write(&self.stop, &[1]);
        match self.done.recv_timeout(deadline) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    ?deadline,
                    "the log writer is stuck; its last output is lost"
                );
            }
        }
    }
}

/// Reads the pipe into the queue until EOF, or until `stop` (then drains what is there,
/// bounded). Never waits for the writer: a full queue drops and counts.
fn read_pipe(read: &OwnedFd, stop: &OwnedFd, tx: &SyncSender<Chunk>) {
    let mut queue = Queue { tx, dropped: 0 };
    loop {
        let mut fds = [
            PollFd::new(read.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        let readable = fds[0].revents().is_some_and(|r| !r.is_empty());
        if stopping {
            drain(read, &mut queue);
            return;
        }
        if readable && !read_once(read, &mut queue) {
            return;
        }
    }
}

/// One read of the pipe into the queue; `false` at EOF (or a read error).
fn read_once(read: &OwnedFd, queue: &mut Queue<'_>) -> bool {
    let mut buf = vec![0u8; CHUNK];
    match nix::unistd::read(read.as_fd(), &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            buf.truncate(n);
            queue.push(buf);
            true
        }
        Err(Errno::EINTR | Errno::EAGAIN) => true,
        Err(_) => false,
    }
}

/// What is in the pipe now, without waiting, at most [`FINISH_MAX_BYTES`].
fn drain(read: &OwnedFd, queue: &mut Queue<'_>) {
    if fcntl(read.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return;
    }
    let mut taken = 0;
    while taken < FINISH_MAX_BYTES {
        let mut buf = vec![0u8; CHUNK];
        match nix::unistd::read(read.as_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.truncate(n);
                taken += n;
                queue.push_waiting(buf);
            }
        }
    }
}

/// The reader's end of the queue, with the count of bytes dropped since the last push.
struct Queue<'a> {
    tx: &'a SyncSender<Chunk>,
    dropped: u64,
}

impl Queue<'_> {
    /// Queues `data` if there is room, after a marker for what was dropped before it.
    fn push(&mut self, data: Vec<u8>) {
        if self.dropped > 0 {
            match self.tx.try_send(Chunk::Dropped(self.dropped)) {
                Ok(()) => self.dropped = 0,
                Err(_) => {
                    self.dropped += data.len() as u64;
                    return;
                }
            }
        }
        let len = data.len() as u64;
        match self.tx.try_send(Chunk::Data(data)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped += len,
        }
    }

    /// At the end, when nothing waits on us any more: queues even if it must wait (the
    /// caller bounds the whole by a deadline).
    fn push_waiting(&mut self, data: Vec<u8>) {
        if self.dropped > 0 && self.tx.send(Chunk::Dropped(self.dropped)).is_ok() {
            self.dropped = 0;
        }
        let _ = self.tx.send(Chunk::Data(data));
    }
}

impl Drop for Queue<'_> {
    /// At EOF or stop (the jail's output is over): the last count may wait for room.
    fn drop(&mut self) {
        if self.dropped > 0 {
            let _ = self.tx.send(Chunk::Dropped(self.dropped));
        }
    }
}

/// The writer: every chunk to `write`; what was dropped or refused is counted and marked
/// by a line as soon as a write succeeds again.
fn write_chunks(rx: &Receiver<Chunk>, mut write: impl FnMut(&[u8]) -> io::Result<()>) {
    let mut lost: u64 = 0;
    let mut why = String::new();
    let mark = |lost: &mut u64, why: &str, write: &mut dyn FnMut(&[u8]) -> io::Result<()>| {
        let note = format!("\n[droot-fleet: {lost} bytes of output dropped: {why}]\n");
        if *lost > 0 && write(note.as_bytes()).is_ok() {
            *lost = 0;
        }
    };
    for chunk in rx {
        match chunk {
            Chunk::Dropped(n) => {
                lost += n;
                why = "the log writer fell behind".into();
                mark(&mut lost, &why, &mut write);
            }
            Chunk::Data(data) => {
                mark(&mut lost, &why, &mut write);
                if let Err(e) = write(&data) {
                    lost += data.len() as u64;
                    why = format!("the log file refused them ({e})");
                }
            }
        }
    }
    mark(&mut lost, &why, &mut write);
}

#[cfg(test)]
mod tests;
