//! A failure in the forked child reaches the parent intact: the child writes the
//! postcard-encoded [`JailError`] to a close-on-exec pipe and exits with its code; a
//! successful exec closes the pipe empty, so the parent reads either one error or nothing.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::JailError;

/// Reads the child's report: `None` when the pipe closed empty (the command was exec'd).
pub(crate) fn read_report(rd: OwnedFd) -> Option<JailError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(rd.as_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Some(JailError::ChildLost {
                    reason: format!("reading its report: {e}"),
                });
            }
        }
    }
    if buf.is_empty() {
        return None;
    }
    Some(
        postcard::from_bytes(&buf).unwrap_or_else(|e| JailError::ChildLost {
            reason: format!("undecodable report: {e}"),
        }),
    )
}

/// Sends `err` to the parent and exits with its code. Never returns.
pub(crate) fn report_and_exit(wr: RawFd, err: &JailError) -> ! {
    let bytes = postcard::to_allocvec(err).unwrap_or_else(|e| {
        postcard::to_allocvec(&JailError::ChildLost {
            reason: format!("{err} (and it could not be encoded: {e})"),
        })
        .unwrap_or_default()
    });
    // SAFETY: the fd stays open until `_exit`; it is not owned by anything that will close it.
    let fd = unsafe { BorrowedFd::borrow_raw(wr) };
    let mut off = 0;
    while off < bytes.len() {
        match nix::unistd::write(fd, &bytes[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    // SAFETY: ends this (forked) process without unwinding into the parent's copied frames.
    unsafe { libc::_exit(i32::from(err.exit_code())) }
}
