//! Read-only and masked kernel paths under the jail's `/proc` and `/sys`, as runc and Docker do.
//!
//! A fresh procfs still exposes host-global knobs: a jailed root that writes
//! `/proc/sys/kernel/core_pattern` makes the kernel run a program of its choice as host root.
//! So, after `/proc`, `/sys` and `/dev` are mounted:
//! - [`READ_ONLY`] paths are bind-mounted over themselves and made read-only, nosuid, nodev and
//!   noexec (recursively);
//! - [`MASKED`] paths are hidden: a file gets the jail's own `/dev/null` bound over it, a
//!   directory an empty read-only tmpfs. The bind source is the jail's `/dev/null` on its private
//!   `/dev` tmpfs, never the host's: a `chmod` through the mask must not reach a host inode.
//!
//! The lists are Docker's defaults (moby `oci/defaults.go`, applied by runc's
//! `libcontainer/rootfs_linux.go`). A path the running kernel does not have is skipped. The jail
//! cannot undo any of this: unmounting or remounting needs `CAP_SYS_ADMIN`, which is not in the
//! bounding set, and the seccomp filter refuses the mount calls as well.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::JailError;
use super::mounts::make_readonly;
use super::paths::{Kind, fd_path, open_beneath};

/// Paths made read-only (relative to the jail's root).
pub const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Paths hidden behind `/dev/null` (files) or an empty read-only tmpfs (directories).
pub const MASKED: [&str; 12] = [
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/timer_list",
    "proc/timer_stats",
    "sys/devices/virtual/powercap",
    "sys/firmware",
];

const NONE: Option<&str> = None;

fn mount_err(what: &str, root: &Path, rel: &str, e: Errno) -> JailError {
    JailError::Mount {
        what: what.to_string(),
        target: root.join(rel),
        err: e.into(),
    }
}

/// Applies [`READ_ONLY`] and [`MASKED`]. Needs `/proc`, `/sys` and `/dev` mounted already.
pub fn protect(root_fd: BorrowedFd<'_>, root: &Path) -> Result<(), JailError> {
    for rel in READ_ONLY {
        let Some((target, _)) = open_kernel_path(root_fd, root, rel)? else {
            continue;
        };
        let at = fd_path(target.as_fd());
        mount(
            Some(&at),
            &at,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(|e| mount_err("read-only bind over itself", root, rel, e))?;
        let Some((mounted, _)) = open_kernel_path(root_fd, root, rel)? else {
            continue;
        };
        make_readonly(mounted.as_fd(), true)
            .map_err(|e| mount_err("read-only remount", root, rel, e))?;
    }
    let null = open_beneath(root_fd, root, Path::new("dev/null"), Kind::File, false)?;
    for rel in MASKED {
        let Some((target, is_dir)) = open_kernel_path(root_fd, root, rel)? else {
            continue;
        };
        mask(null.as_fd(), target.as_fd(), is_dir).map_err(|e| mount_err("mask", root, rel, e))?;
    }
    tracing::debug!(root = %root.display(), "kernel paths made read-only and masked");
    Ok(())
}

fn mask(null: BorrowedFd<'_>, target: BorrowedFd<'_>, is_dir: bool) -> Result<(), Errno> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if is_dir {
        return mount(
            Some("tmpfs"),
            &fd_path(target),
            Some("tmpfs"),
            flags,
            Some("mode=0555"),
        );
    }
    mount(
        Some(&fd_path(null)),
        &fd_path(target),
        NONE,
        MsFlags::MS_BIND,
        NONE,
    )
}

/// Opens `rel` (`proc/...` or `sys/...`) as `O_PATH` without following symlinks, with whether
/// it is a directory; `None` when this kernel does not have it. The parent (`proc`, `sys`, ...)
/// is reached with [`open_beneath`]; below it is kernel-made, but still never followed.
fn open_kernel_path(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    rel: &str,
) -> Result<Option<(OwnedFd, bool)>, JailError> {
    let path = Path::new(rel);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir = match open_beneath(root_fd, root, parent, Kind::Dir, false) {
        Ok(d) => d,
        Err(JailError::PathSetup {
            err: super::SysErr(libc::ENOENT),
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(setup_err(root, rel, "open", e)),
    };
    let st = fstat(&fd).map_err(|e| setup_err(root, rel, "fstat", e))?;
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Ok(Some((fd, true))),
        SFlag::S_IFREG => Ok(Some((fd, false))),
        // A symlink or anything else where a kernel file should be: leave it alone.
        _ => Ok(None),
    }
}

fn setup_err(root: &Path, rel: &str, op: &str, e: Errno) -> JailError {
    JailError::PathSetup {
        path: root.join(rel),
        op: op.to_string(),
        err: e.into(),
    }
}
