//! Rsync mode: update the root in place, like `rsync -a --delete` from the archive.
//!
//! The archive is first unpacked, with every check, into a staging directory inside the
//! root (under `.droot-fleet/`), so a refused archive changes nothing. Then the staged tree
//! is merged into the root: changed or new entries are rename(2)d into place (same
//! filesystem, so no data is copied and each file is replaced atomically), unchanged files
//! keep their inode, and entries absent from the archive are deleted.
//!
//! Mountpoints inside the root (a running jail's /proc, /sys, /dev, bind mounts) and
//! everything below them are never touched, and neither is `.droot-fleet/`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ReleaseError;
use super::layout::{Layout, RootLock, TOOL_DIR};
use crate::artifact::{self, UnpackOptions, UnpackStats};
use crate::{mountinfo, teardown};

/// What an rsync-mode deploy changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub skipped_mounts: u64,
}

/// Whether two non-directory entries are the same for rsync's quick check.
fn same_entry(a: &Metadata, b: &Metadata, a_path: &Path, b_path: &Path) -> bool {
    let kind = |m: &Metadata| m.mode() & libc::S_IFMT;
    if kind(a) != kind(b) || a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid() {
        return false;
    }
    if a.file_type().is_symlink() {
        return fs::read_link(a_path).ok() == fs::read_link(b_path).ok();
    }
    if a.file_type().is_file() {
        return a.len() == b.len() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec();
    }
    a.rdev() == b.rdev()
}

struct Syncer<'a> {
    root: &'a Path,
    staging: &'a Path,
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

    fn err(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
        ReleaseError::io(what, p)
    }

    /// Merges staging/rel into root/rel; both are directories.
    fn sync_dir(&mut self, rel: &Path) -> Result<(), ReleaseError> {
        let src_dir = self.staging.join(rel);
        let dst_dir = self.root.join(rel);
        let mut wanted: HashSet<OsString> = HashSet::new();
        for e in fs::read_dir(&src_dir).map_err(Self::err("cannot read", &src_dir))? {
            let e = e.map_err(Self::err("cannot read", &src_dir))?;
            let name = e.file_name();
            let child = rel.join(&name);
            wanted.insert(name.clone());
            if rel.as_os_str().is_empty() && name == TOOL_DIR {
                tracing::warn!("archive entry {TOOL_DIR} ignored: the name is reserved");
                continue;
            }
            if self.is_mount(&child) {
                self.stats.skipped_mounts += 1;
                continue;
            }
            self.sync_entry(&child)?;
        }
        // Delete what the archive does not have.
        for e in fs::read_dir(&dst_dir).map_err(Self::err("cannot read", &dst_dir))? {
            let e = e.map_err(Self::err("cannot read", &dst_dir))?;
            let name = e.file_name();
            if wanted.contains(&name) || (rel.as_os_str().is_empty() && name == TOOL_DIR) {
                continue;
            }
            self.delete(&rel.join(&name))?;
        }
        Ok(())
    }

    fn sync_entry(&mut self, rel: &Path) -> Result<(), ReleaseError> {
        let src = self.staging.join(rel);
        let dst = self.root.join(rel);
        let src_meta = fs::symlink_metadata(&src).map_err(Self::err("cannot stat", &src))?;
        let dst_meta = fs::symlink_metadata(&dst).ok();
        if src_meta.is_dir() {
            match &dst_meta {
                Some(m) if m.is_dir() => {
                    self.sync_dir(rel)?;
                    copy_dir_attrs(&src_meta, &dst)?;
                    return Ok(());
                }
                Some(_) => self.delete(rel)?,
                None => {}
            }
            fs::rename(&src, &dst).map_err(Self::err("cannot move into place", &dst))?;
            self.stats.updated += 1;
            return Ok(());
        }
        match &dst_meta {
            Some(m) if m.is_dir() => {
                if self.holds_mount(rel) {
                    // Cannot replace a directory that holds a live mount; keep it.
                    self.stats.skipped_mounts += 1;
                    return Ok(());
                }
                self.delete(rel)?;
            }
            Some(m) if same_entry(&src_meta, m, &src, &dst) => {
                self.stats.unchanged += 1;
                return Ok(());
            }
            _ => {}
        }
        // rename(2) over an existing non-directory replaces it atomically.
        fs::rename(&src, &dst).map_err(Self::err("cannot move into place", &dst))?;
        self.stats.updated += 1;
        Ok(())
    }

    /// Deletes root/rel without touching mountpoints or anything below them.
    fn delete(&mut self, rel: &Path) -> Result<(), ReleaseError> {
        if self.is_mount(rel) {
            self.stats.skipped_mounts += 1;
            return Ok(());
        }
        let path = self.root.join(rel);
        let meta = fs::symlink_metadata(&path).map_err(Self::err("cannot stat", &path))?;
        if !meta.is_dir() {
            fs::remove_file(&path).map_err(Self::err("cannot delete", &path))?;
        } else if self.holds_mount(rel) {
            for e in fs::read_dir(&path).map_err(Self::err("cannot read", &path))? {
                let e = e.map_err(Self::err("cannot read", &path))?;
                self.delete(&rel.join(e.file_name()))?;
            }
            return Ok(()); // the directory itself stays: it leads to a mountpoint
        } else {
            teardown::remove_tree(&path)?;
        }
        self.stats.deleted += 1;
        Ok(())
    }
}

fn copy_dir_attrs(src: &Metadata, dst: &Path) -> Result<(), ReleaseError> {
    let dst_meta = fs::symlink_metadata(dst).map_err(ReleaseError::io("cannot stat", dst))?;
    if dst_meta.uid() != src.uid() || dst_meta.gid() != src.gid() {
        std::os::unix::fs::lchown(dst, Some(src.uid()), Some(src.gid()))
            .map_err(ReleaseError::io("cannot chown", dst))?;
    }
    if dst_meta.mode() & 0o7777 != src.mode() & 0o7777 {
        fs::set_permissions(dst, fs::Permissions::from_mode(src.mode() & 0o7777))
            .map_err(ReleaseError::io("cannot chmod", dst))?;
    }
    Ok(())
}

/// Unpacks `input` and merges it into `layout.root` in place.
pub fn deploy<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    opts: &UnpackOptions,
) -> Result<(UnpackStats, SyncStats), ReleaseError> {
    layout
        .ensure(false)
        .map_err(ReleaseError::io("cannot create", &layout.root))?;
    let _lock = RootLock::acquire(layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    let root = layout
        .root
        .canonicalize()
        .map_err(ReleaseError::io("cannot resolve", &layout.root))?;
    let staging = layout.staging_dir().join("rsync");
    if fs::symlink_metadata(&staging).is_ok() {
        teardown::remove_tree(&staging)?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(ReleaseError::io("cannot create", &staging))?;
    let unpacked = match artifact::unpack(input, &staging, opts) {
        Ok(s) => s,
        Err(e) => {
            teardown::remove_tree(&staging)?;
            return Err(ReleaseError::Unpack(e));
        }
    };
    let table = mountinfo::read().map_err(|e| ReleaseError::Io {
        what: "cannot read the mount table for",
        path: root.clone(),
        source: std::io::Error::other(e),
    })?;
    let mounts = mountinfo::mounts_at_or_below(&table, &root)
        .into_iter()
        .filter_map(|m| m.strip_prefix(&root).ok().map(Path::to_path_buf))
        .filter(|m| !m.as_os_str().is_empty())
        .collect();
    let mut syncer = Syncer {
        root: &root,
        staging: &staging,
        mounts,
        stats: SyncStats::default(),
    };
    let result = syncer.sync_dir(Path::new(""));
    let stats = syncer.stats;
    teardown::remove_tree(&staging)?;
    result?;
    tracing::info!(root = %root.display(), updated = stats.updated, deleted = stats.deleted, "rsync deploy done");
    Ok((unpacked, stats))
}
