//! The release store gives no host user anything: it is out of their reach, and mounted
//! `nosuid,nodev` as the host sees it.
//!
//! # Why
//! A release is a real host directory, and root in a jail without a user namespace is host
//! root on it: it can `chmod 4755` a root-owned file of its own release. Were the store open,
//! any host user could then run `DIR/current/bin/tool` and get euid 0; `NO_NEW_PRIVS` guards
//! only the inside of the jail. Two independent fences close that:
//! - **Reach.** In symlink mode `DIR` is 0700 (and so owned by its creator, root): no other
//!   host user can walk into `releases/` at all. A jail does not need it: its root is pinned
//!   by `chroot`, above which nothing is looked up. A store an older version made 0755 is
//!   tightened (its group and other bits cleared) the next time it is deployed to, rolled
//!   back, pruned or started by the agent. In rsync mode `DIR` is the jail's `/`, which the
//!   jail's own users must be able to enter, so it keeps the archive root's mode; there the
//!   mount below is the fence (and a user namespace, see [`super::userns`]).
//! - **Mount.** `DIR` is bind-mounted onto itself `nosuid,nodev` (and private, so no mount
//!   event propagates through it), made atomically with the new mount API: the flags are set
//!   on the detached copy before it appears. A set-id bit or a device node anywhere in the
//!   store is then inert for every host process that reaches it, whatever the modes. One
//!   mount covers the whole store, so staging and `releases/` stay on one mount and the
//!   publishing rename(2) works. It is made when missing (after a reboot, by the next deploy
//!   or agent start); a `DIR` already on a `nosuid,nodev` filesystem needs none.
//!
//! The mount table's readers agree with it: `umount` leaves it (it clears what jails left,
//! not the store's fence), `rm` removes it with the rest, pruning never sees it (it sits
//! above `releases/`), and rsync mode reaches the directory under it through a detached
//! copy of the parent's mount (see [`super::rsync`]).
//!
//! Without root, or as a root that may not mount (a container without CAP_SYS_ADMIN), no
//! mount can be made: the store is then only 0700, and a warning says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::statvfs::{FsFlags, statvfs};

use super::ReleaseError;
use super::layout::{Layout, RootLock};

/// Tightens and mounts the store of `layout`. Called with the root lock held.
pub fn protect(layout: &Layout) -> Result<(), ReleaseError> {
    if !layout.is_in_place() {
        tighten(&layout.root)?;
    }
    mount_nosuid(&layout.root)
}

/// [`protect`] for a store that may not exist yet (nothing to do then): takes the lock.
/// For the agent, before it starts an app.
pub fn protect_existing(layout: &Layout) -> Result<(), ReleaseError> {
    if !layout.tool_dir().is_dir() {
        return Ok(());
    }
    let _lock = RootLock::acquire(layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    protect(layout)
}

/// Clears the group and other bits of `dir` (which is the operator's: its symlinks are
/// followed).
fn tighten(dir: &Path) -> Result<(), ReleaseError> {
    let meta = std::fs::metadata(dir).map_err(ReleaseError::io("cannot stat", dir))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o077))
        .map_err(ReleaseError::io("cannot chmod", dir))?;
    tracing::info!(root = %dir.display(), from = format!("{mode:o}"), to = format!("{:o}", mode & !0o077), "release store tightened: no other host user may enter it");
    Ok(())
}

/// Whether the host sees `dir` on a `nosuid,nodev` mount.
pub fn is_mounted_nosuid(dir: &Path) -> Result<bool, ReleaseError> {
    let st = statvfs(dir).map_err(|e| ReleaseError::io("cannot statvfs", dir)(e.into()))?;
    let want = FsFlags::ST_NOSUID | FsFlags::ST_NODEV;
    Ok(st.flags().contains(want))
}

fn mount_nosuid(dir: &Path) -> Result<(), ReleaseError> {
    if is_mounted_nosuid(dir)? {
        return Ok(());
    }
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        tracing::warn!(root = %dir.display(), euid = euid.as_raw(), "release store not mounted nosuid,nodev: that needs root");
        return Ok(());
    }
    let canonical = dir
        .canonicalize()
        .map_err(ReleaseError::io("cannot resolve", dir))?;
    use crate::newmount::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, bind_onto_itself};
    match bind_onto_itself(&canonical, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) {
        Ok(()) => {}
        // Root without CAP_SYS_ADMIN (a container, say): the 0700 store is the fence.
        Err(nix::errno::Errno::EPERM) => {
            tracing::warn!(root = %canonical.display(), "release store not mounted nosuid,nodev: mounting is not permitted here (no CAP_SYS_ADMIN); it is only 0700");
            return Ok(());
        }
        Err(e) => {
            return Err(ReleaseError::Io {
                what: "cannot mount the release store nosuid,nodev (a bind onto itself) at",
                path: canonical.clone(),
                source: e.into(),
            });
        }
    }
    tracing::info!(root = %canonical.display(), "release store mounted nosuid,nodev");
    Ok(())
}
