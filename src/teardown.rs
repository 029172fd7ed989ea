//! `umount` and `rm` of a root, and the one tree remover every deletion goes through.
//!
//! Guarantees: nothing outside the root is unmounted (path boundaries are respected).
//! `umount` leaves the release store's own `nosuid,nodev` mount at the root (see
//! `release::protect`): it clears what jails left, not the store's protection; `rm` takes it
//! away with everything else. A tree is only removed once no mountpoint remains below it, so
//! a bind mount of host data can never be deleted through the jail. Removal works from
//! directory descriptors ([`crate::beneath::remove_tree_at`]): it never follows a symlink and
//! never crosses into a mount that appeared after the check.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};

use crate::mountinfo::{self, MountInfoError};

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is a symlink; pass the directory it points to")]
    Symlink(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("refusing to remove /")]
    RefuseSlash,
    #[error("cannot resolve {path}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    #[error("cannot unmount {path}: {errno}; is a process still using it? (nothing was removed)")]
    Unmount { path: PathBuf, errno: Errno },
    #[error("{0} is still a mountpoint after unmounting; nothing was removed")]
    StillMounted(PathBuf),
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Resolves `root` to the canonical path the mount table uses.
fn canonical_dir(root: &Path) -> Result<PathBuf, TeardownError> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TeardownError::Missing(root.to_path_buf()),
        _ => TeardownError::Resolve {
            path: root.to_path_buf(),
            source: e,
        },
    })?;
    if meta.file_type().is_symlink() {
        return Err(TeardownError::Symlink(root.to_path_buf()));
    }
    if !meta.is_dir() {
        return Err(TeardownError::NotADirectory(root.to_path_buf()));
    }
    root.canonicalize()
        .map_err(|source| TeardownError::Resolve {
            path: root.to_path_buf(),
            source,
        })
}

/// Whether [`umount_all`] leaves the release store's own mount at the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMount {
    /// `umount`: the store stays `nosuid,nodev` (see `release::protect`).
    Keep,
    /// `rm`: everything goes.
    Unmount,
}

/// Unmounts every mount at or below `root`, deepest first, except, with [`StoreMount::Keep`],
/// the store's own mount at `root` itself; returns how many were removed. Busy mounts are
/// detached (MNT_DETACH), which takes them out of the tree at once.
pub fn umount_all(root: &Path, store: StoreMount) -> Result<usize, TeardownError> {
    let root = match std::fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => {
            root.canonicalize()
                .map_err(|source| TeardownError::Resolve {
                    path: root.to_path_buf(),
                    source,
                })?
        }
        _ => canonical_dir(root)?,
    };
    let mut count = 0;
    // Stacked mounts reveal the ones beneath; repeat until none remain (bounded).
    for _ in 0..64 {
        let table = mountinfo::read()?;
        let mut below = mountinfo::mounts_at_or_below(&table, &root);
        if store == StoreMount::Keep && mountinfo::is_store_mount(&table, &root) {
            below.retain(|p| *p != root);
        }
        if below.is_empty() {
            return Ok(count);
        }
        for path in below {
            match umount2(&path, MntFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EBUSY) => umount2(&path, MntFlags::MNT_DETACH).map_err(|errno| {
                    TeardownError::Unmount {
                        path: path.clone(),
                        errno,
                    }
                })?,
                // Already gone with its parent (e.g. detached recursively).
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(TeardownError::Unmount { path, errno }),
            }
            tracing::debug!(path = %path.display(), "unmounted");
            count += 1;
        }
    }
    Err(TeardownError::StillMounted(root))
}

/// Removes a tree that must hold no mountpoint, without following symlinks.
pub fn remove_tree(path: &Path) -> Result<(), TeardownError> {
    let canonical = canonical_dir(path)?;
    if canonical == Path::new("/") {
        return Err(TeardownError::RefuseSlash);
    }
    if let Some(m) = mountinfo::mounts_at_or_below(&mountinfo::read()?, &canonical)
        .into_iter()
        .next()
    {
        return Err(TeardownError::StillMounted(m));
    }
    let remove = || -> Result<(), nix::errno::Errno> {
        let (Some(parent), Some(name)) = (canonical.parent(), canonical.file_name()) else {
            return Err(Errno::EINVAL);
        };
        let parent = crate::beneath::open_named_dir(parent)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        crate::beneath::remove_tree_at(parent.as_fd(), Path::new(name))
    };
    remove().map_err(|e| TeardownError::Remove {
        path: canonical.clone(),
        source: match e {
            Errno::EXDEV => io::Error::other("a mount appeared below it; it was left alone"),
            e => e.into(),
        },
    })
}

/// `droot-fleet rm`: refuses `/` and non-directories, unmounts everything below, then removes.
pub fn remove_root(root: &Path) -> Result<(), TeardownError> {
    let canonical = canonical_dir(root)?;
    if canonical == Path::new("/") {
        return Err(TeardownError::RefuseSlash);
    }
    umount_all(&canonical, StoreMount::Unmount)?;
    remove_tree(&canonical)
}
