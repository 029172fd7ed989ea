//! The jail's terminal: never the caller's. A fresh pty when stdin is a terminal.
//!
//! A process that shares the caller's controlling terminal can push input into it with the
//! `TIOCSTI` ioctl, and the operator's shell runs it after the jail exits. So every jailed
//! process starts in a new session (`setsid`), which has no controlling terminal: `TIOCSTI`
//! then fails on any descriptor (it needs the terminal to be the caller's own, or
//! `CAP_SYS_ADMIN`), and the seccomp filter refuses it as well.
//!
//! When stdin is a terminal, `run` relays through a fresh pty, as `docker run -it` does:
//! - the command gets the pty's slave as controlling terminal and stdin, and as stdout and
//!   stderr where those are the caller's terminal too (`run -- cat f > copy` still writes
//!   plain bytes to the file), so job control, Ctrl-C (the pty's own line discipline sends
//!   SIGINT to the jail's foreground process group) and `isatty` work;
//! - the caller's terminal is put in raw mode and restored on every way out of `run` (a guard
//!   dropped on return, error or panic); only SIGKILL of `droot-fleet` can skip it;
//! - the pty starts with the caller's window size, and each SIGWINCH copies it again;
//! - the exit status is the command's, as without a pty.
//!
//! The pty is allocated inside the jail, on its own devpts instance (as runc's console
//! socket does): the child opens it after the chroot, keeps the slave (owned by the
//! command's user, so `tty` and re-opening `/dev/pts/N` work) and passes the master to the
//! parent over a socketpair. Whatever the jail injects into its pty reaches only itself.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::{SfdFlags, SigSet, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::{Pid, Uid, fchown};

use super::JailError;
use super::process::{JailExit, reap};

/// The parent's and the child's ends of the socket that carries the pty's master.
pub struct ConsoleSocket {
    pub parent: OwnedFd,
    pub child: OwnedFd,
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Where the pty's output goes: our stdout if it is a terminal, else our stderr (which then
/// is: only terminal descriptors were given the pty).
fn output() -> BorrowedFd<'static> {
    // SAFETY: fds 1 and 2 stay open for the life of the process.
    let out = unsafe { BorrowedFd::borrow_raw(1) };
    if nix::unistd::isatty(out).unwrap_or(false) {
        return out;
    }
    // SAFETY: as above.
    unsafe { BorrowedFd::borrow_raw(2) }
}

/// A socket for the jail's pty when stdin is a terminal; `None` otherwise.
pub fn socket_if_terminal() -> Result<Option<ConsoleSocket>, JailError> {
    if !nix::unistd::isatty(stdin()).unwrap_or(false) {
        return Ok(None);
    }
    let (parent, child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| JailError::sys("socketpair (console socket)", e))?;
    Ok(Some(ConsoleSocket { parent, child }))
}

fn pty_err(op: &str) -> impl FnOnce(Errno) -> JailError + '_ {
    move |e| JailError::sys(format!("{op} (the jail's pty)"), e)
}

/// In the jail, after the chroot: opens a pty on the jail's devpts, hands the master to the
/// parent over `sock` and returns the slave (close-on-exec), owned by `uid`.
pub fn open_in_jail(sock: RawFd, uid: u32) -> Result<OwnedFd, JailError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = posix_openpt(flags).map_err(pty_err("open /dev/ptmx"))?;
    grantpt(&master).map_err(pty_err("grantpt"))?;
    unlockpt(&master).map_err(pty_err("unlockpt"))?;
    let name = ptsname_r(&master).map_err(pty_err("ptsname"))?;
    let slave = nix::fcntl::open(name.as_str(), flags, Mode::empty())
        .map_err(pty_err("open the pty's slave"))?;
    fchown(&slave, Some(Uid::from_raw(uid)), None).map_err(pty_err("chown"))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sock,
        &[IoSlice::new(b"pty")],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(pty_err("send the master"))?;
    Ok(slave)
}

/// In the parent: the master the jail sent, sized like the caller's terminal; `None` when
/// the child ended before sending one (its report says why).
pub fn receive_master(sock: &OwnedFd) -> Result<Option<OwnedFd>, JailError> {
    let mut byte = [0u8; 8];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(pty_err("receive the master"))?,
        }
    };
    let mut master = None;
    for c in msg.cmsgs().map_err(pty_err("receive the master"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                master.get_or_insert(owned);
            }
        }
    }
    if let Some(m) = &master {
        copy_window_size(stdin(), m.as_fd());
    }
    Ok(master)
}

fn window_size(fd: BorrowedFd<'_>) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `struct winsize` into a live one.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(ws)
}

fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    if let Some(ws) = window_size(from) {
        // SAFETY: TIOCSWINSZ reads a live `struct winsize`; the kernel signals the pty's
        // foreground process group with SIGWINCH.
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// In the jailed command, before exec: `slave` becomes the controlling terminal and stdin,
/// and replaces stdout and stderr where they are a terminal. The caller is a session leader
/// (see `process`).
pub fn attach(slave: RawFd) -> Result<(), JailError> {
    // SAFETY: ioctl with an integer argument on a descriptor we hold.
    if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
        return Err(JailError::sys(
            "TIOCSCTTY (pty as controlling terminal)",
            Errno::last(),
        ));
    }
    for target in 0..=2 {
        // SAFETY: fds 0-2 are ours; isatty only queries.
        if target > 0 && unsafe { libc::isatty(target) } != 1 {
            continue;
        }
        // SAFETY: dup2 on descriptors we hold; replaces the caller's stdio in this process.
        if unsafe { libc::dup2(slave, target) } < 0 {
            return Err(JailError::sys("dup2 of the pty", Errno::last()));
        }
    }
    // The slave itself is close-on-exec; its copies on 0-2 are not.
    Ok(())
}

/// The caller's terminal in raw mode; the saved settings come back when this is dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Result<RawMode, JailError> {
        let saved = tcgetattr(stdin()).map_err(|e| JailError::sys("tcgetattr (stdin)", e))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin(), SetArg::TCSANOW, &raw)
            .map_err(|e| JailError::sys("tcsetattr (raw mode)", e))?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(stdin(), SetArg::TCSADRAIN, &self.0);
    }
}

/// Relays between the caller's terminal and `master` until `child` exits; forwards signals
/// (a resize is applied to the pty instead). `signals` are blocked already.
pub fn relay(master: OwnedFd, child: Pid, signals: &SigSet) -> Result<JailExit, JailError> {
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| JailError::sys("signalfd", e))?;
    let _raw = RawMode::enter()?;
    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = [0u8; 8192];
    let out = output();
    loop {
        if let Some(exit) = reap(child)? {
            drain(master.as_fd(), out, &mut buf);
            return Ok(exit);
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if master_open {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(JailError::sys("poll", e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => copy_window_size(stdin(), master.as_fd()),
                    sig => {
                        tracing::debug!(signal = %sig, pid = child.as_raw(), "forwarding signal");
                        let _ = kill(child, sig);
                    }
                }
            }
        }
        let mut i = 1;
        if master_open {
            if ready[i] {
                master_open = copy(master.as_fd(), out, &mut buf);
            }
            i += 1;
        }
        if stdin_open && ready[i] {
            stdin_open = copy(stdin(), master.as_fd(), &mut buf);
        }
    }
}

/// Copies one read's worth from `from` to `to`; `false` at end of input (or EIO: the pty's
/// other side is gone).
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let n = match nix::unistd::read(from, buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(Errno::EINTR | Errno::EAGAIN) => return true,
        Err(_) => return false,
    };
    write_all(to, &buf[..n]);
    true
}

fn write_all(to: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(to, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut pf = [PollFd::new(to, PollFlags::POLLOUT)];
                let _ = poll(&mut pf, PollTimeout::NONE);
            }
            Err(_) => return,
        }
    }
}

/// After the command exited: what it wrote and we have not relayed yet.
fn drain(master: BorrowedFd<'_>, out: BorrowedFd<'_>, buf: &mut [u8]) {
    if fcntl(master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return;
    }
    while let Ok(n) = nix::unistd::read(master, buf) {
        if n == 0 {
            break;
        }
        write_all(out, &buf[..n]);
    }
}
