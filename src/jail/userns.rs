//! The jail in a user namespace (`run --userns`): its root is an unprivileged host uid.
//!
//! # Why
//! Without a user namespace, root in the jail is host root on every file it can reach: its
//! release (a setuid file it makes there runs as root for anyone who reaches it), and any host
//! file bound into it. In a user namespace whose uid and gid maps send the jail's 0-65535 to
//! the app's host range ([`IdRange`]), root in the jail is host uid `base`: a file it makes
//! setuid gives euid `base`, and a host file owned by host root (unmapped, seen as `nobody`)
//! cannot be written, chmodded or chowned at all, since capabilities in a user namespace act
//! only on inodes whose owner and group are mapped in it.
//!
//! # How
//! The namespaces are made in two steps, so that everything that needs host privileges is
//! done with them and nothing after:
//! 1. The child is cloned into new mount and PID namespaces as host root, and makes every
//!    mount there: `/proc`, the read-only `/sys`, the `/dev` tmpfs with device nodes made by
//!    `mknod` (a process in a user namespace could not), devpts, the `/proc` masks, binds.
//! 2. It then unshares a new user namespace ([`enter`]), before the chroot (the kernel
//!    refuses `CLONE_NEWUSER` in a chroot). The parent, host root, writes `0 BASE 65536` to
//!    its `uid_map` and `gid_map` ([`map_child`]); the child switches to uid and gid 0 of the
//!    namespace (host `base`) and goes on: chroot through the root descriptor it opened
//!    before, users, capabilities, seccomp, exec.
//!
//! The mount namespace is owned by the host's user namespace, so the jail holds no
//! `CAP_SYS_ADMIN` over it whatever its capabilities: it cannot mount or unmount, even with
//! `--no-dropcaps`. Its files are owned by its own range: the release is unpacked with shifted
//! owners (see `release::userns` for why not an idmapped mount), the `/dev` tmpfs and the
//! `--cp` files are given to its root, and devpts gives new ptys the jail's group 5.
//!
//! A credential change clears the parent-death signal, so the init sets it again after the
//! switch, then checks that the parent is still there (its end of the sync socket is open for
//! the whole run): a jail never outlives the `run` that started it.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{Gid, Pid, Uid};

use super::JailError;
use crate::id_range::IdRange;

/// The two ends of the socket the parent and the child step through the mapping with.
pub struct Sync {
    pub parent: OwnedFd,
    pub child: OwnedFd,
}

impl Sync {
    pub fn new() -> Result<Sync, JailError> {
        let (parent, child) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| JailError::sys("socketpair (user namespace sync)", e))?;
        Ok(Sync { parent, child })
    }
}

fn userns_err(op: &str) -> impl FnOnce(Errno) -> JailError + '_ {
    move |e| JailError::UserNamespace {
        op: op.to_string(),
        err: e.into(),
    }
}

/// Reads one byte; `Ok(false)` at end of file.
fn read_byte(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(n) => return Ok(n == 1),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn write_byte(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    loop {
        match nix::unistd::write(fd, &[1]) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// In the parent: waits for the child to have unshared its user namespace, writes its maps
/// and lets it go on. `Ok(false)` when the child ended first (its report says why).
pub fn map_child(child: Pid, range: IdRange, sock: &OwnedFd) -> Result<bool, JailError> {
    if !read_byte(sock.as_fd()).map_err(userns_err("wait for the jail's user namespace"))? {
        return Ok(false);
    }
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{}/{file}", child.as_raw());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(range.map_line().as_bytes()))
            .map_err(|e| JailError::UserNamespace {
                op: format!("write {path} ({})", range.map_line().trim_end()),
                err: (&e).into(),
            })?;
    }
    write_byte(sock.as_fd()).map_err(userns_err("let the jail go on"))?;
    Ok(true)
}

/// In the child, after the mounts and before the chroot: unshares a user namespace, has the
/// parent map it, and becomes its root (host `base`). With `pid_ns` (we are the jail's
/// init), the parent-death signal the credential change cleared is set again.
pub fn enter(sock: RawFd, pid_ns: bool) -> Result<(), JailError> {
    // SAFETY: the descriptor stays open for the whole call; it is the child's end, owned by
    // the child's copy of the plan.
    let sock = unsafe { BorrowedFd::borrow_raw(sock) };
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(userns_err("unshare (new user namespace)"))?;
    write_byte(sock).map_err(userns_err("tell the parent to map the namespace"))?;
    if !read_byte(sock).map_err(userns_err("wait for the uid and gid maps"))? {
        return Err(JailError::UserNamespace {
            op: "wait for the uid and gid maps".into(),
            err: Errno::EPIPE.into(),
        });
    }
    nix::unistd::setgroups(&[]).map_err(userns_err("setgroups [] in the namespace"))?;
    let (gid, uid) = (Gid::from_raw(0), Uid::from_raw(0));
    nix::unistd::setresgid(gid, gid, gid).map_err(userns_err("setresgid 0 in the namespace"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(userns_err("setresuid 0 in the namespace"))?;
    if pid_ns {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if parent_gone(sock) {
            // SAFETY: ending the jail's init before anything runs in it.
            unsafe { libc::_exit(i32::from(super::EXIT_SETUP)) };
        }
    }
    Ok(())
}

/// Refuses a root whose top directory is not owned by an id of `range`: its files were not
/// shifted into the range (see `release::userns`), so the jail's root would own nothing in
/// it.
pub fn check_root(
    root_fd: BorrowedFd<'_>,
    root: &std::path::Path,
    range: IdRange,
) -> Result<(), JailError> {
    let st = nix::sys::stat::fstat(root_fd).map_err(|e| JailError::Root {
        root: root.to_path_buf(),
        reason: format!("cannot stat it: {}", super::SysErr::from(e)),
    })?;
    if range.contains(st.st_uid) {
        return Ok(());
    }
    Err(JailError::RootOutsideRange {
        root: root.to_path_buf(),
        owner: st.st_uid,
        range: range.to_string(),
    })
}

/// Whether the parent's end of the sync socket has closed (the parent died).
fn parent_gone(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN)),
        Err(_) => false,
    }
}
