//! The jail's mounts: a private mount namespace, a fresh `/proc`, a read-only `/sys`, binds.
//!
//! Runs in the forked child, which was cloned with `CLONE_NEWNS`. `/` is first made
//! recursively private, so nothing mounted here propagates to the host; the mounts disappear
//! with the namespace. Every target is an `O_PATH` descriptor from [`super::paths`] and is
//! mounted on through `/proc/self/fd/N`, so a symlink in the rootfs cannot redirect a mount.
//! Read-only binds are made recursively read-only with `mount_setattr(AT_RECURSIVE)` (Linux
//! 5.12+); on older kernels only the top mount is remounted read-only.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use super::JailError;
use super::paths::{Kind, fd_path, open_beneath};
use super::spec::BindMount;

const NONE: Option<&str> = None;

fn mount_err(what: &str, root: &Path, rel: &Path, e: Errno) -> JailError {
    JailError::Mount {
        what: what.to_string(),
        target: root.join(rel),
        err: e.into(),
    }
}

/// Makes every mount of this (new) namespace private, so none of ours leaks to the host.
pub fn make_root_private() -> Result<(), JailError> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE).map_err(|e| {
        JailError::Mount {
            what: "make-rprivate".into(),
            target: "/".into(),
            err: e.into(),
        }
    })
}

/// Mounts a fresh procfs on `root/proc`. Done by the process whose PID namespace it shows.
pub fn mount_proc(root_fd: BorrowedFd<'_>, root: &Path) -> Result<(), JailError> {
    let rel = Path::new("proc");
    let target = open_beneath(root_fd, root, rel, Kind::Dir, true)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &fd_path(target.as_fd()),
        Some("proc"),
        flags,
        NONE,
    )
    .map_err(|e| mount_err("proc", root, rel, e))?;
    tracing::debug!(target = %root.join(rel).display(), "mounted proc");
    Ok(())
}

/// Binds the host's `/sys` (recursively) on `root/sys`, read-only.
pub fn mount_sys(root_fd: BorrowedFd<'_>, root: &Path) -> Result<(), JailError> {
    let rel = Path::new("sys");
    let target = open_beneath(root_fd, root, rel, Kind::Dir, true)?;
    mount(
        Some("/sys"),
        &fd_path(target.as_fd()),
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| mount_err("sys (rbind of /sys)", root, rel, e))?;
    let mounted = open_beneath(root_fd, root, rel, Kind::Dir, false)?;
    make_readonly(mounted.as_fd(), true)
        .map_err(|e| mount_err("sys (read-only remount)", root, rel, e))?;
    tracing::debug!(target = %root.join(rel).display(), "mounted sys read-only");
    Ok(())
}

/// Bind-mounts `b.source` (a `kind` file or directory) on its target, creating it when missing.
/// A source inside the root (`source_in_root`, relative to it) is opened like a target, so a
/// rootfs symlink cannot turn `-b ROOT/data` into a bind of the host's `/etc`.
pub fn bind(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    b: &BindMount,
    kind: Kind,
    source_in_root: Option<&Path>,
) -> Result<(), JailError> {
    let what = if b.read_only {
        "read-only bind"
    } else {
        "bind"
    };
    let source_fd = match source_in_root {
        Some(rel) => Some(open_beneath(root_fd, root, rel, kind, false)?),
        None => None,
    };
    let source = source_fd
        .as_ref()
        .map_or_else(|| b.source.clone(), |fd| fd_path(fd.as_fd()));
    let target = open_beneath(root_fd, root, &b.target, kind, true)?;
    mount(
        Some(&source),
        &fd_path(target.as_fd()),
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| {
        mount_err(
            &format!("{what} of {}", b.source.display()),
            root,
            &b.target,
            e,
        )
    })?;
    if b.read_only {
        let mounted = open_beneath(root_fd, root, &b.target, kind, false)?;
        make_readonly(mounted.as_fd(), kind == Kind::Dir).map_err(|e| {
            mount_err(
                &format!("{what} of {} (read-only remount)", b.source.display()),
                root,
                &b.target,
                e,
            )
        })?;
    }
    tracing::debug!(source = %b.source.display(), target = %root.join(&b.target).display(), read_only = b.read_only, "bind mounted");
    Ok(())
}

/// Makes the mount whose root is `mounted` read-only (and nosuid, nodev, and for sys-like
/// trees noexec), recursively when `mount_setattr` exists; else remounts the top only.
pub(crate) fn make_readonly(mounted: BorrowedFd<'_>, noexec: bool) -> Result<(), Errno> {
    use crate::newmount::{
        MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    };
    let mut set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if noexec {
        set |= MOUNT_ATTR_NOEXEC;
    }
    let attrs = crate::newmount::Attrs {
        set,
        private: false,
        recursive: true,
    };
    let e = match crate::newmount::set_attrs(mounted, attrs) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if !matches!(e, Errno::ENOSYS | Errno::EINVAL) {
        return Err(e);
    }
    tracing::debug!(errno = %e, "mount_setattr unavailable; remounting the top mount read-only only");
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(NONE, &fd_path(mounted), NONE, flags, NONE)
}
