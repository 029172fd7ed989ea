//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`, Linux 5.12+), in thin
//! wrappers: the jail uses it to make its read-only mounts recursive, the release store to
//! mount itself `nosuid,nodev` in one step, and rsync mode to reach the directory under such
//! a mount.
//!
//! A tree cloned with [`clone_tree`] is detached: it appears nowhere until [`attach`], its
//! attributes are set with [`set_attrs`] before anyone can see it (so there is no window with
//! the old flags), and it vanishes when its descriptor is closed.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_int = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// What [`set_attrs`] changes on a mount.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// Make the mount private (`MS_PRIVATE`): no mount event propagates into or out of it.
    pub private: bool,
    /// Apply to every mount below as well.
    pub recursive: bool,
}

fn path_cstr(path: &Path) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)
}

/// `open_tree(OPEN_TREE_CLONE)` of `path` (not recursive): a detached copy of the mount at
/// `path`, rooted there, with none of the mounts below it. Under a bind mount of a directory
/// onto itself, the clone of its parent shows the directory itself, uncovered.
pub fn clone_tree(path: &Path) -> Result<OwnedFd, Errno> {
    let c = path_cstr(path)?;
    // SAFETY: plain syscall with a NUL-terminated path; on success the kernel returns a new
    // descriptor that we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mount_setattr(2)` on the mount whose root `fd` is.
pub fn set_attrs(fd: BorrowedFd<'_>, attrs: Attrs) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: attrs.set,
        attr_clr: 0,
        propagation: if attrs.private { libc::MS_PRIVATE } else { 0 },
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if attrs.recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: plain syscall with a valid fd, a NUL-terminated empty path and a live struct of
    // the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// `move_mount(2)` of the detached tree `fd` onto `target`.
pub fn attach(fd: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
    let c = path_cstr(target)?;
    // SAFETY: plain syscall with a valid fd and NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

/// Bind-mounts `dir` onto itself, private, with `set` (`MOUNT_ATTR_*`) already applied when
/// it appears.
pub fn bind_onto_itself(dir: &Path, set: u64) -> Result<(), Errno> {
    let tree = clone_tree(dir)?;
    set_attrs(
        std::os::fd::AsFd::as_fd(&tree),
        Attrs {
            set,
            private: true,
            recursive: false,
        },
    )?;
    attach(std::os::fd::AsFd::as_fd(&tree), dir)
}
