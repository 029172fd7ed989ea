//! Rsync mode: update the root in place, like `rsync -a --delete` from the archive.
//!
//! The archive is first unpacked, with every check, into a staging directory beside the root
//! (`PARENT/.NAME.droot-fleet/staging/rsync`, see [`Layout::in_place`]), so a refused
//! archive changes nothing, and a jail whose `/` is the root can see neither the staging
//! tree nor the lock. Then the staged tree is merged into the root: changed or new entries
//! are renamed into place (same filesystem, so no data is copied and each file is replaced
//! atomically), unchanged files keep their inode, and entries absent from the archive are
//! deleted. A file whose size and mtime match is compared byte by byte, so a same-length
//! change from a reproducible build (every mtime equal) is never skipped.
//!
//! The root may be live: a running jail can change any name in it at any moment. So every
//! operation inside it is relative to a directory descriptor and refuses symlinks and mount
//! crossings at every step ([`crate::beneath`]: `openat2`, `renameat2`, `unlinkat`); a name
//! swapped for a symlink mid-deploy makes the deploy fail, never write or delete through it.
//! Mountpoints inside the root (a running jail's /proc, /sys, /dev, bind mounts) and
//! everything below them are never touched.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, readlinkat, renameat, renameat2};
use nix::sys::stat::{FileStat, SFlag, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::ReleaseError;
use super::layout::{Layout, RootLock};
use crate::artifact::{self, UnpackOptions, UnpackStats};
use crate::beneath::{self, Mounts, kind, lstat_at};
use crate::mountinfo;

/// What an rsync-mode deploy changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub skipped_mounts: u64,
}

const STAGING: &str = "rsync";

struct Syncer<'a> {
    root: &'a Path,
    /// Mountpoints strictly below the root, as paths relative to it.
    mounts: HashSet<PathBuf>,
    stats: SyncStats,
}

impl Syncer<'_> {
    fn is_mount(&self, rel: &Path) -> bool {
        self.mounts.contains(rel)
    }

    fn holds_mount(&self, rel: &Path) -> bool {
        self.mounts.iter().any(|m| m.starts_with(rel) && m != rel)
    }

    /// An error about `root/rel`; a symlink or mount found mid-walk gets a plain reason.
    fn err(&self, what: &'static str, rel: &Path) -> impl FnOnce(Errno) -> ReleaseError + use<> {
        let path = self.root.join(rel);
        move |e| {
            let source = match e {
                Errno::ELOOP
                | Errno::ENOTDIR
                | Errno::EISDIR
                | Errno::EEXIST
                | Errno::ENOTEMPTY => io::Error::other(
                    "it changed during the deploy (a symlink, file or directory took its \
                         place: is a jail changing it?); nothing was written through a symlink, \
                         run the deploy again",
                ),
                Errno::EXDEV => io::Error::other(
                    "a mountpoint took its place during the deploy; it was left alone",
                ),
                e => e.into(),
            };
            ReleaseError::Io { what, path, source }
        }
    }

    /// Merges the staged directory `src` into the live directory `dst` (both at `rel`).
    fn sync_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<(), ReleaseError> {
        let names = beneath::list(src).map_err(self.err("cannot read", rel))?;
        let wanted: HashSet<&OsString> = names.iter().collect();
        for name in &names {
            let child = rel.join(name);
            if self.is_mount(&child) {
                self.stats.skipped_mounts += 1;
                continue;
            }
            self.sync_entry(src, dst, Path::new(name), &child)?;
        }
        // Delete what the archive does not have.
        for name in beneath::list(dst).map_err(self.err("cannot read", rel))? {
            if !wanted.contains(&name) {
                self.delete(dst, Path::new(&name), &rel.join(&name))?;
            }
        }
        Ok(())
    }

    fn sync_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &Path,
        rel: &Path,
    ) -> Result<(), ReleaseError> {
        let s = lstat_at(src, name).map_err(self.err("cannot stat staged", rel))?;
        let d = match lstat_at(dst, name) {
            Ok(d) => Some(d),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(self.err("cannot stat", rel)(e)),
        };
        let is_dir = |st: &FileStat| kind(st) == SFlag::S_IFDIR;
        if is_dir(&s) {
            match &d {
                Some(d) if is_dir(d) => {
                    let dchild = beneath::open_dir(dst, name, Mounts::Refuse)
                        .map_err(self.err("cannot open", rel))?;
                    let schild = beneath::open_dir(src, name, Mounts::Refuse)
                        .map_err(self.err("cannot open staged", rel))?;
                    self.sync_dir(schild.as_fd(), dchild.as_fd(), rel)?;
                    return self.copy_dir_attrs(&s, &dchild, rel);
                }
                Some(_) => self.delete(dst, name, rel)?,
                None => {}
            }
            // NOREPLACE: a directory never lands on a name something else took meanwhile.
            renameat2(src, name, dst, name, RenameFlags::RENAME_NOREPLACE)
                .map_err(self.err("cannot move into place", rel))?;
            self.stats.updated += 1;
            return Ok(());
        }
        match &d {
            Some(d) if is_dir(d) => {
                if self.holds_mount(rel) {
                    // Cannot replace a directory that holds a live mount; keep it.
                    self.stats.skipped_mounts += 1;
                    return Ok(());
                }
                self.delete(dst, name, rel)?;
            }
            Some(d) if self.same_entry(src, dst, name, &s, d, rel)? => {
                self.stats.unchanged += 1;
                return Ok(());
            }
            _ => {}
        }
        // rename(2) over an existing non-directory replaces it atomically (never following it).
        renameat(src, name, dst, name).map_err(self.err("cannot move into place", rel))?;
        self.stats.updated += 1;
        Ok(())
    }

    /// Whether two non-directory entries are the same: type, mode, owner, then the link
    /// target, the device number, or size, mtime and (when those match) the bytes.
    fn same_entry(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &Path,
        s: &FileStat,
        d: &FileStat,
        rel: &Path,
    ) -> Result<bool, ReleaseError> {
        if s.st_mode != d.st_mode || s.st_uid != d.st_uid || s.st_gid != d.st_gid {
            return Ok(false);
        }
        match kind(s) {
            SFlag::S_IFLNK => Ok(readlinkat(src, name).ok() == readlinkat(dst, name).ok()),
            SFlag::S_IFREG => {
                if s.st_size != d.st_size
                    || s.st_mtime != d.st_mtime
                    || s.st_mtime_nsec != d.st_mtime_nsec
                {
                    return Ok(false);
                }
                let open = |dir| {
                    beneath::open(
                        dir,
                        name,
                        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
                        Mounts::Refuse,
                    )
                };
                let mut a = File::from(open(src).map_err(self.err("cannot open staged", rel))?);
                let live = match open(dst) {
                    Ok(fd) => fd,
                    // Gone or swapped meanwhile: not the same; it gets replaced.
                    Err(_) => return Ok(false),
                };
                let now = fstat(&live).map_err(self.err("cannot stat", rel))?;
                if (now.st_dev, now.st_ino) != (d.st_dev, d.st_ino) {
                    return Ok(false);
                }
                beneath::same_content(&mut a, &mut File::from(live))
                    .map_err(ReleaseError::io("cannot compare", self.root.join(rel)))
            }
            _ => Ok(s.st_rdev == d.st_rdev),
        }
    }

    fn copy_dir_attrs(&self, s: &FileStat, dst: &OwnedFd, rel: &Path) -> Result<(), ReleaseError> {
        let d = fstat(dst).map_err(self.err("cannot stat", rel))?;
        let owner = (d.st_uid != s.st_uid || d.st_gid != s.st_gid).then_some((s.st_uid, s.st_gid));
        let mode = (d.st_mode & 0o7777 != s.st_mode & 0o7777).then_some(s.st_mode & 0o7777);
        beneath::set_attrs(dst.as_fd(), mode, owner, None).map_err(self.err("cannot chmod", rel))
    }

    /// Deletes `name` in `dst` without touching mountpoints or anything below them.
    fn delete(&mut self, dst: BorrowedFd<'_>, name: &Path, rel: &Path) -> Result<(), ReleaseError> {
        if self.is_mount(rel) {
            self.stats.skipped_mounts += 1;
            return Ok(());
        }
        let st = match lstat_at(dst, name) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.err("cannot stat", rel)(e)),
        };
        if kind(&st) != SFlag::S_IFDIR {
            unlinkat(dst, name, UnlinkatFlags::NoRemoveDir)
                .map_err(self.err("cannot delete", rel))?;
        } else if self.holds_mount(rel) {
            let sub = beneath::open_dir(dst, name, Mounts::Refuse)
                .map_err(self.err("cannot open", rel))?;
            for child in beneath::list(sub.as_fd()).map_err(self.err("cannot read", rel))? {
                self.delete(sub.as_fd(), Path::new(&child), &rel.join(&child))?;
            }
            return Ok(()); // the directory itself stays: it leads to a mountpoint
        } else {
            beneath::remove_tree_at(dst, name).map_err(self.err("cannot delete", rel))?;
        }
        self.stats.deleted += 1;
        Ok(())
    }
}

/// Mountpoints strictly below `root`, relative to it.
fn mounts_below(root: &Path) -> Result<HashSet<PathBuf>, ReleaseError> {
    let table = mountinfo::read().map_err(|e| ReleaseError::Io {
        what: "cannot read the mount table for",
        path: root.to_path_buf(),
        source: io::Error::other(e),
    })?;
    Ok(mountinfo::mounts_at_or_below(&table, root)
        .into_iter()
        .filter_map(|m| m.strip_prefix(root).ok().map(Path::to_path_buf))
        .filter(|m| !m.as_os_str().is_empty())
        .collect())
}

/// Unpacks `input` and merges it into `layout.root` in place.
pub fn deploy<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    opts: &UnpackOptions,
) -> Result<(UnpackStats, SyncStats), ReleaseError> {
    let layout =
        Layout::in_place(&layout.root).map_err(ReleaseError::io("cannot create", &layout.root))?;
    layout
        .ensure(false)
        .map_err(ReleaseError::io("cannot create", layout.tool_dir()))?;
    let _lock =
        RootLock::acquire(&layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    refuse_foreign_mount(&layout.root)?;
    super::protect::protect(&layout)?;
    let opts = &super::store_unpack_options(&layout, opts)?;
    let root = layout.root.as_path();
    let staging_dir = layout.staging_dir();
    let staging = staging_dir.join(STAGING);
    let io_err = |what, p: &Path| {
        let p = p.to_path_buf();
        move |e: Errno| ReleaseError::io(what, p)(e.into())
    };
    let state_fd = beneath::open_named_dir(&staging_dir)
        .map_err(ReleaseError::io("cannot open", &staging_dir))?;
    let clear = || match beneath::remove_tree_at(state_fd.as_fd(), Path::new(STAGING)) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err("cannot remove", &staging)(e)),
    };
    clear()?;
    beneath::mkdir_mode(state_fd.as_fd(), Path::new(STAGING), 0o700)
        .map_err(io_err("cannot create", &staging))?;
    let unpacked = match artifact::unpack(input, &staging, opts) {
        Ok(s) => s,
        Err(e) => {
            clear()?;
            return Err(ReleaseError::Unpack(e));
        }
    };
    let owner = opts.id_shift.map(|r| (r.base(), r.base()));
    let result = merge(&layout, &state_fd, &unpacked, owner);
    clear()?;
    let stats = result?;
    tracing::info!(root = %root.display(), updated = stats.updated, deleted = stats.deleted, "rsync deploy done");
    Ok((unpacked, stats))
}

/// Merges the staged tree into the live root, then gives the root the archive root's mode
/// (and, in a user namespace store, the jail's root as owner).
fn merge(
    layout: &Layout,
    state_fd: &OwnedFd,
    unpacked: &UnpackStats,
    owner: Option<(u32, u32)>,
) -> Result<SyncStats, ReleaseError> {
    let root = layout.root.as_path();
    let io_err = |what, p: &Path| {
        let p = p.to_path_buf();
        move |e: Errno| ReleaseError::io(what, p)(e.into())
    };
    let staged = beneath::open_dir(state_fd.as_fd(), Path::new(STAGING), Mounts::Refuse)
        .map_err(io_err("cannot open staging for", root))?;
    let (root_fd, src_fd) = open_for_merge(layout, &staged)?;
    let mut syncer = Syncer {
        root,
        mounts: mounts_below(root)?,
        stats: SyncStats::default(),
    };
    syncer.sync_dir(src_fd.as_fd(), root_fd.as_fd(), Path::new(""))?;
    if unpacked.root_mode.is_some() || owner.is_some() {
        beneath::set_attrs(root_fd.as_fd(), unpacked.root_mode, owner, None)
            .map_err(io_err("cannot chmod", root))?;
    }
    Ok(syncer.stats)
}

/// Refuses a root that is a mountpoint, unless the mount is the store's own (a bind of the
/// root onto itself, [`super::protect`]): the staging tree is renamed into the root, which
/// works only on one filesystem.
fn refuse_foreign_mount(root: &Path) -> Result<(), ReleaseError> {
    let table = mountinfo::read().map_err(|e| ReleaseError::Io {
        what: "cannot read the mount table for",
        path: root.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mounted = table.iter().any(|m| m.mount_point == root);
    if mounted && !mountinfo::is_store_mount(&table, root) {
        return Err(not_own_mount(root));
    }
    Ok(())
}

fn not_own_mount(root: &Path) -> ReleaseError {
    ReleaseError::Io {
        what: "rsync mode needs its staging directory on the filesystem of",
        path: root.to_path_buf(),
        source: io::Error::other(
            "the root is a mountpoint of its own; deploy into a directory below it instead (nothing was changed)",
        ),
    }
}

/// The root and the staged tree as descriptors on one mount, so that rename(2) works
/// between them. The root is normally under the store's own `nosuid,nodev` bind mount
/// ([`super::protect`]), which rename(2) cannot cross from staging; so both are reached
/// through a detached copy of the parent's mount, where the root's directory is uncovered.
/// Each must be the very directory the host sees (same device and inode): a root that is
/// another filesystem's mountpoint is refused. Without root (no copy can be made) both are
/// used as they are, and must already share a mount.
fn open_for_merge(layout: &Layout, staged: &OwnedFd) -> Result<(OwnedFd, OwnedFd), ReleaseError> {
    let root = layout.root.as_path();
    let io_err = |what, p: &Path| {
        let p = p.to_path_buf();
        move |e: Errno| ReleaseError::io(what, p)(e.into())
    };
    let visible = beneath::open_named_dir(root).map_err(ReleaseError::io("cannot open", root))?;
    let parent = root.parent().unwrap_or(Path::new("/"));
    let copy = match crate::newmount::clone_tree(parent) {
        Ok(copy) => copy,
        Err(Errno::EPERM | Errno::ENOSYS) => {
            let (rm, sm) = (
                beneath::mount_id(visible.as_fd()).map_err(io_err("cannot stat", root))?,
                beneath::mount_id(staged.as_fd())
                    .map_err(io_err("cannot stat staging for", root))?,
            );
            if rm != sm {
                return Err(not_own_mount(root));
            }
            let src = beneath::open_dir(staged.as_fd(), Path::new(""), Mounts::Refuse)
                .map_err(io_err("cannot open staging for", root))?;
            return Ok((visible, src));
        }
        Err(e) => {
            return Err(io_err(
                "cannot reach the directory under the store mount of",
                root,
            )(e));
        }
    };
    let name = Path::new(root.file_name().unwrap_or_default());
    let staging_rel = layout
        .staging_dir()
        .join(STAGING)
        .strip_prefix(parent)
        .map(Path::to_path_buf)
        .map_err(|_| not_own_mount(root))?;
    let root_fd = beneath::open_dir(copy.as_fd(), name, Mounts::Refuse)
        .map_err(io_err("cannot open", root))?;
    let src_fd = beneath::open_dir(copy.as_fd(), &staging_rel, Mounts::Refuse)
        .map_err(io_err("cannot open staging for", root))?;
    let same = |a: &OwnedFd, b: &OwnedFd| -> Result<bool, Errno> {
        let (x, y) = (fstat(a)?, fstat(b)?);
        Ok((x.st_dev, x.st_ino) == (y.st_dev, y.st_ino))
    };
    if !same(&root_fd, &visible).map_err(io_err("cannot stat", root))?
        || !same(&src_fd, staged).map_err(io_err("cannot stat staging for", root))?
    {
        return Err(not_own_mount(root));
    }
    Ok((root_fd, src_fd))
}
