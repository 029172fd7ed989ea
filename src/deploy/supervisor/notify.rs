//! Readiness by systemd's `sd_notify` protocol: each instance the supervisor starts gets
//! its own datagram socket, named in its environment (`NOTIFY_SOCKET`), and is ready once
//! it sends `READY=1` there.
//!
//! The socket is in the abstract namespace (the jail shares the host's network namespace,
//! so no file has to be mounted into the jail), under a random name. Anyone on the host can
//! find and write to such a name, so a message counts only when the kernel-checked sender
//! credentials (`SCM_CREDENTIALS`, which only CAP_SYS_ADMIN could forge) name a process in
//! the PID namespace of the very instance the socket was made for: not the old instance
//! that serves beside it, not another jail, not a host user.
//!
//! The socket stays bound for the instance's whole life and is drained (later messages,
//! `STATUS=` or `WATCHDOG=1`, are read and dropped; descriptors sent along are closed): a
//! freed name could be bound by anyone, who would then receive what the app sends there. A
//! flood is read at most [`BATCH`] datagrams per wake-up, and refused senders are logged at
//! most once per wake-up, so a sender gets no more of the agent than its share.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest notification read; longer ones are cut (and then carry no `READY=1` line
/// past the cut).
const MAX_MESSAGE: usize = 4096;
/// Most datagrams read per wake-up before the task yields.
const BATCH: usize = 64;

/// One instance's notification socket.
pub(super) struct NotifySocket {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl NotifySocket {
    /// Binds a fresh abstract socket for an instance of `app`.
    pub(super) fn bind(app: &str) -> io::Result<Self> {
        let name = format!("droot-fleet/notify/{app}/{:032x}", rand::random::<u128>());
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd = socket::socket(AddressFamily::Unix, SockType::Datagram, flags, None)?;
        socket::setsockopt(&fd, sockopt::PassCred, &true)?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?)?;
        Ok(NotifySocket {
            // SAFETY: an OwnedFd is open and returns the same descriptor until it is dropped,
            // which happens only with the AsyncFd.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?,
            name,
        })
    }

    /// `NOTIFY_SOCKET=@NAME`, for the instance's environment.
    pub(super) fn env(&self) -> String {
        format!("{}=@{}", crate::sd_notify::ENV, self.name)
    }

    /// Resolves once a process in the PID namespace of the jail under `run_pid` (the
    /// instance's `droot-fleet run`) sends `READY=1`. Other senders are ignored.
    pub(super) async fn ready(&self, run_pid: i32) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut refused = None;
            for _ in 0..BATCH {
                let Some((sender, ready)) = self.receive() else {
                    guard.clear_ready();
                    break;
                };
                if ready && in_jail_of(sender, run_pid) {
                    return;
                }
                if ready {
                    refused = Some(sender);
                }
            }
            if let Some(sender) = refused {
                tracing::warn!(
                    run_pid,
                    sender,
                    "READY=1 from a process outside the instance's jail ignored"
                );
            }
            drop(guard);
            tokio::task::yield_now().await;
        }
    }

    /// Reads and drops what arrives, for good (once the instance is ready).
    pub(super) async fn drain(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            for _ in 0..BATCH {
                if self.receive().is_none() {
                    guard.clear_ready();
                    break;
                }
            }
            drop(guard);
            tokio::task::yield_now().await;
        }
    }

    /// One pending datagram: its sender's pid (0 without credentials) and whether it says
    /// `READY=1`; `None` when nothing is pending.
    fn receive(&self) -> Option<(i32, bool)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let fd = self.fd.get_ref().as_raw_fd();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), flags).ok()?;
        let mut pid = 0;
        for c in msg.cmsgs().ok()? {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = cred.pid(),
                // Descriptors sent along are not kept.
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: a descriptor the kernel just installed for us alone.
                        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                    }
                }
                _ => {}
            }
        }
        let len = msg.bytes;
        Some((pid, says_ready(&buf[..len])))
    }
}

/// Whether a notification holds the line `READY=1` (newline-separated assignments).
pub fn says_ready(msg: &[u8]) -> bool {
    msg.split(|b| *b == b'\n').any(|line| line == b"READY=1")
}

/// Whether `pid` is in the PID namespace of the jail's init, the child of `run_pid`.
fn in_jail_of(pid: i32, run_pid: i32) -> bool {
    let ns = |p: i32| {
        std::fs::metadata(format!("/proc/{p}/ns/pid"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let Some(&init) = super::proc::child_pids(run_pid).first() else {
        return false;
    };
    // The jail's namespace is never the host's (`run` makes a new one): a host process
    // must not pass for the jail because both lookups failed alike.
    pid > 0 && ns(init).is_some() && ns(init) != ns(run_pid) && ns(pid) == ns(init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_line_means_ready() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=up\nREADY=1\n"));
        for not in [
            &b"READY=0"[..],
            b"READY=1x",
            b"XREADY=1",
            b"STATUS=READY=1",
            b"",
        ] {
            assert!(!says_ready(not), "{:?}", String::from_utf8_lossy(not));
        }
    }

    /// A host process (this test) is not the jail of any `run`: even with its own pid as
    /// `run`, the namespace check fails closed.
    #[test]
    fn a_host_process_is_never_in_the_jail() {
        let me = std::process::id() as i32;
        assert!(!in_jail_of(me, me));
        assert!(!in_jail_of(0, me));
    }
}
