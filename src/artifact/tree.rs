//! The unpacker's write side: a writer owning a descriptor of the staging directory.
//!
//! Every write and every attribute change goes through a descriptor opened beneath the
//! staging root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`crate::beneath`]):
//! `mkdirat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `symlinkat`, `linkat`, `mknodat`,
//! `unlinkat`, then `fchown`/`fchmod`/`futimens` on the inode itself. No path is ever
//! resolved by name from `/`, so an archive that swaps a directory for a symlink (`a/` then
//! `a -> /victim`) cannot make any write or attribute change land outside the root.
//!
//! Directory attributes are applied last (files created inside change mtimes), deepest first,
//! and only to the very directory the entry created: a path that was replaced since loses its
//! saved attributes. Directories are opened `O_NONBLOCK | O_DIRECTORY`, so a FIFO in their
//! place can never hang the unpack.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, mknodat};
use nix::unistd::{FchownatFlags, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::unpack::EntryProblem;
use crate::beneath::{self, Mounts};

/// Mode, owner and mtime an entry asks for.
#[derive(Debug, Clone, Copy)]
pub struct Attrs {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub mtime: Option<SystemTime>,
}

/// A refusal of the entry, or a failed write.
#[derive(Debug)]
pub enum TreeError {
    Refused(EntryProblem),
    Io { path: PathBuf, source: io::Error },
}

impl From<EntryProblem> for TreeError {
    fn from(p: EntryProblem) -> Self {
        TreeError::Refused(p)
    }
}

/// The special file kinds [`TreeWriter::mknod`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Char,
    Block,
    Fifo,
}

struct SavedDir {
    rel: PathBuf,
    id: (u64, u64),
    attrs: Attrs,
}

/// Writes a tree beneath one directory, through descriptors only.
pub struct TreeWriter {
    root: OwnedFd,
    root_path: PathBuf,
    dirs: Vec<SavedDir>,
    root_attrs: Option<Attrs>,
    /// The last parent directory opened (archives list siblings together). Safe to reuse:
    /// nothing here renames a directory, and removing one drops the cache.
    last_parent: Option<(PathBuf, Rc<OwnedFd>)>,
    umask: u32,
}

/// Shortens a path for an error message (a 10,000-level path must not make a 20 KB error).
pub fn shown(p: &Path) -> String {
    const MAX: usize = 120;
    let s = p.to_string_lossy();
    if s.len() <= MAX {
        return s.into_owned();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &s[..cut], s.len())
}

/// Sets the owner of `name` in `dir` (when one is given) without following a symlink there.
fn chown_nofollow(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    owner: Option<(u32, u32)>,
) -> Result<(), Errno> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    fchownat(
        dir,
        name,
        Some(uid.into()),
        Some(gid.into()),
        FchownatFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// The process umask (read by setting it and putting it back).
fn current_umask() -> u32 {
    // SAFETY: umask only swaps the process's mask; it is restored at once.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m as u32
    }
}

fn name_of(rel: &Path) -> &OsStr {
    rel.file_name()
        .expect("sanitised entry paths end in a name")
}

impl TreeWriter {
    /// Opens `dest`, an existing directory owned by the caller.
    pub fn open(dest: &Path) -> io::Result<TreeWriter> {
        Ok(TreeWriter {
            root: beneath::open_named_dir(dest)?,
            root_path: dest.to_path_buf(),
            dirs: Vec::new(),
            root_attrs: None,
            last_parent: None,
            umask: current_umask(),
        })
    }

    fn io_err(&self, rel: &Path) -> impl FnOnce(Errno) -> TreeError + use<> {
        let path = self.root_path.join(rel);
        move |e| TreeError::Io {
            path,
            source: e.into(),
        }
    }

    /// The archive's own root entry: its mtime is set at [`finish`](Self::finish), its mode
    /// returned for the caller to apply when it publishes the tree.
    pub fn root_attrs(&mut self, attrs: Attrs) {
        self.root_attrs = Some(attrs);
    }

    /// Opens the parent directory of `rel`, creating missing ancestors (0755, like tar) when
    /// `create`; a symlink or non-directory on the way is refused, naming it.
    fn parent(&mut self, rel: &Path, create: bool) -> Result<Rc<OwnedFd>, TreeError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some((p, fd)) = &self.last_parent
            && p == parent
        {
            return Ok(fd.clone());
        }
        let fd = Rc::new(self.open_parent(parent, create)?);
        self.last_parent = Some((parent.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Checks that an entry at `rel` could be written (its ancestors are real directories,
    /// created when missing) without writing it: for entries that are skipped on purpose,
    /// so that skipping never hides a path that would have been refused.
    pub fn check_parent(&mut self, rel: &Path) -> Result<(), TreeError> {
        self.parent(rel, true).map(drop)
    }

    fn open_parent(&self, parent: &Path, create: bool) -> Result<OwnedFd, TreeError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match beneath::open(self.root.as_fd(), parent, flags, Mounts::Refuse) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {}
            Err(e) => return Err(self.io_err(parent)(e)),
        }
        // Slow path: one component at a time, to create what is missing or name the culprit.
        let mut cur = beneath::open(self.root.as_fd(), Path::new(""), flags, Mounts::Refuse)
            .map_err(self.io_err(Path::new("")))?;
        let mut so_far = PathBuf::new();
        for comp in parent.iter() {
            so_far.push(comp);
            let name = Path::new(comp);
            match beneath::lstat_at(cur.as_fd(), name) {
                Ok(st) if beneath::kind(&st) == SFlag::S_IFDIR => {}
                Ok(st) if beneath::kind(&st) == SFlag::S_IFLNK => {
                    return Err(EntryProblem::ThroughSymlink(shown(&so_far)).into());
                }
                Ok(_) => return Err(EntryProblem::ParentNotDirectory(shown(&so_far)).into()),
                Err(Errno::ENOENT) if create => {
                    beneath::mkdir_mode(cur.as_fd(), name, 0o755).map_err(self.io_err(&so_far))?
                }
                Err(Errno::ENOENT) => {
                    return Err(EntryProblem::ParentNotDirectory(shown(&so_far)).into());
                }
                Err(e) => return Err(self.io_err(&so_far)(e)),
            }
            cur = beneath::open(cur.as_fd(), name, flags, Mounts::Refuse)
                .map_err(self.io_err(&so_far))?;
        }
        Ok(cur)
    }

    /// Removes whatever is at `name` so a new entry can take its place (a later entry
    /// replaces an earlier one, as with tar); a non-empty directory is refused.
    fn clear(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> Result<(), TreeError> {
        let name = name_of(rel);
        match beneath::lstat_at(dir, Path::new(name)) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io_err(rel)(e)),
            Ok(st) if beneath::kind(&st) == SFlag::S_IFDIR => {
                self.last_parent = None;
                unlinkat(dir, name, UnlinkatFlags::RemoveDir)
                    .map_err(|_| EntryProblem::ReplacesDirectory.into())
            }
            Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(self.io_err(rel)),
        }
    }

    /// A directory entry: made (or kept, if one is there), attributes saved for `finish`.
    pub fn create_dir(&mut self, rel: &Path, attrs: Attrs) -> Result<(), TreeError> {
        let dir = self.parent(rel, true)?;
        let name = Path::new(name_of(rel));
        match beneath::lstat_at(dir.as_fd(), name) {
            Ok(st) if beneath::kind(&st) == SFlag::S_IFDIR => {}
            Ok(st) if beneath::kind(&st) == SFlag::S_IFLNK => {
                return Err(EntryProblem::ThroughSymlink(shown(rel)).into());
            }
            Ok(_) => {
                self.clear(dir.as_fd(), rel)?;
                beneath::mkdir_mode(dir.as_fd(), name, 0o755).map_err(self.io_err(rel))?;
            }
            Err(Errno::ENOENT) => {
                beneath::mkdir_mode(dir.as_fd(), name, 0o755).map_err(self.io_err(rel))?
            }
            Err(e) => return Err(self.io_err(rel)(e)),
        }
        let st = beneath::lstat_at(dir.as_fd(), name).map_err(self.io_err(rel))?;
        self.dirs.push(SavedDir {
            rel: rel.to_path_buf(),
            id: (st.st_dev, st.st_ino),
            attrs,
        });
        Ok(())
    }

    /// Creates a regular file (replacing a non-directory there) and returns it for writing;
    /// call [`finish_file`](Self::finish_file) after the data.
    pub fn create_file(&mut self, rel: &Path, mode: u32) -> Result<File, TreeError> {
        let dir = self.parent(rel, true)?;
        let name = name_of(rel);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(mode & 0o777);
        let fd = match openat(dir.as_fd(), name, flags, mode) {
            Err(Errno::EEXIST) => {
                self.clear(dir.as_fd(), rel)?;
                openat(dir.as_fd(), name, flags, mode)
            }
            other => other,
        }
        .map_err(self.io_err(rel))?;
        Ok(File::from(fd))
    }

    /// Sets a written file's owner, exact mode (the umask ignored) and mtime. The chmod is
    /// skipped when the create mode already was exact (no umask bits, no set-id, no chown).
    pub fn finish_file(&self, rel: &Path, file: &File, attrs: Attrs) -> Result<(), TreeError> {
        let exact = attrs.mode & !self.umask & 0o777 == attrs.mode && attrs.owner.is_none();
        let mode = (!exact).then_some(attrs.mode);
        beneath::set_attrs(file.as_fd(), mode, attrs.owner, attrs.mtime).map_err(self.io_err(rel))
    }

    /// A symlink; its target is stored, never followed.
    pub fn symlink(
        &mut self,
        rel: &Path,
        target: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), TreeError> {
        let dir = self.parent(rel, true)?;
        let name = name_of(rel);
        if let Err(e) = symlinkat(target, dir.as_fd(), name) {
            if e != Errno::EEXIST {
                return Err(self.io_err(rel)(e));
            }
            self.clear(dir.as_fd(), rel)?;
            symlinkat(target, dir.as_fd(), name).map_err(self.io_err(rel))?;
        }
        chown_nofollow(dir.as_fd(), name, owner).map_err(self.io_err(rel))?;
        Ok(())
    }

    /// A hardlink to an earlier non-directory entry `target` (both sanitised, relative).
    pub fn hardlink(&mut self, rel: &Path, target: &Path) -> Result<(), TreeError> {
        let missing = || EntryProblem::HardlinkMissing(shown(target));
        let tdir = match self.parent(target, false) {
            Err(TreeError::Refused(EntryProblem::ParentNotDirectory(_))) => {
                return Err(missing().into());
            }
            other => other?,
        };
        let tname = name_of(target);
        match beneath::lstat_at(tdir.as_fd(), Path::new(tname)) {
            Ok(st) if beneath::kind(&st) != SFlag::S_IFDIR => {}
            _ => return Err(missing().into()),
        }
        if target == rel {
            return Ok(());
        }
        let dir = self.parent(rel, true)?;
        self.clear(dir.as_fd(), rel)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
        linkat(
            tdir.as_fd(),
            tname,
            dir.as_fd(),
            name_of(rel),
            AtFlags::empty(),
        )
        .map_err(self.io_err(rel))
    }

    /// A device node or FIFO, with its exact mode and (optionally) owner.
    pub fn mknod(
        &mut self,
        rel: &Path,
        kind: Special,
        dev: (u32, u32),
        attrs: Attrs,
    ) -> Result<(), TreeError> {
        let dir = self.parent(rel, true)?;
        let name = name_of(rel);
        self.clear(dir.as_fd(), rel)?;
        let sflag = match kind {
            Special::Char => SFlag::S_IFCHR,
            Special::Block => SFlag::S_IFBLK,
            Special::Fifo => SFlag::S_IFIFO,
        };
        let devno = nix::sys::stat::makedev(u64::from(dev.0), u64::from(dev.1));
        let mode = Mode::from_bits_truncate(attrs.mode);
        mknodat(dir.as_fd(), name, sflag, mode, devno).map_err(self.io_err(rel))?;
        chown_nofollow(dir.as_fd(), name, attrs.owner).map_err(self.io_err(rel))?;
        // NoFollowSymlink: the C library goes through an O_PATH descriptor of this very node.
        fchmodat(dir.as_fd(), name, mode, FchmodatFlags::NoFollowSymlink).map_err(self.io_err(rel))
    }

    /// Applies saved directory attributes (deepest first, only where the entry's own
    /// directory is still in place), makes the tree durable with one `syncfs`, and returns
    /// the root entry's mode, if the archive had one.
    pub fn finish(mut self) -> Result<Option<u32>, TreeError> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for d in &self.dirs {
            let fd = match beneath::open_dir(self.root.as_fd(), &d.rel, Mounts::Refuse) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {
                    tracing::debug!(path = %shown(&d.rel), "directory replaced; its attributes dropped");
                    continue;
                }
                Err(e) => return Err(self.io_err(&d.rel)(e)),
            };
            let st = nix::sys::stat::fstat(&fd).map_err(self.io_err(&d.rel))?;
            if (st.st_dev, st.st_ino) != d.id {
                tracing::debug!(path = %shown(&d.rel), "directory replaced; its attributes dropped");
                continue;
            }
            let a = d.attrs;
            beneath::set_attrs(fd.as_fd(), Some(a.mode), a.owner, a.mtime)
                .map_err(self.io_err(&d.rel))?;
        }
        let root_mode = self.root_attrs.map(|a| a.mode);
        if let Some(t) = self.root_attrs.and_then(|a| a.mtime) {
            beneath::set_attrs(self.root.as_fd(), None, None, Some(t))
                .map_err(self.io_err(Path::new("")))?;
        }
        // One syncfs makes the whole tree durable before the caller publishes it.
        if unsafe { libc::syncfs(self.root.as_raw_fd()) } != 0 {
            return Err(self.io_err(Path::new(""))(Errno::last()));
        }
        Ok(root_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode,
            owner: None,
            mtime: Some(SystemTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_replaced_directory_loses_its_attributes() {
        let t = tempfile::tempdir().unwrap();
        let (dest, victim) = (t.path().join("dest"), t.path().join("victim"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        let mut w = TreeWriter::open(&dest).unwrap();
        w.create_dir(Path::new("a"), attrs(0o777)).unwrap();
        w.symlink(Path::new("a"), &victim, None).unwrap();
        w.create_dir(Path::new("b"), attrs(0o750)).unwrap();
        w.finish().unwrap();
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(after.mode(), before.mode());
        assert_eq!(after.mtime(), before.mtime());
        let b = std::fs::metadata(dest.join("b")).unwrap();
        assert_eq!(
            (b.mode() & 0o7777, b.mtime()),
            (0o750, 0),
            "kept dirs get theirs"
        );
    }

    #[test]
    fn writes_through_a_symlinked_parent_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut w = TreeWriter::open(&dest).unwrap();
        w.symlink(Path::new("l"), t.path(), None).unwrap();
        for e in [
            w.create_file(Path::new("l/x"), 0o644).map(drop),
            w.create_dir(Path::new("l/d"), attrs(0o755)),
            w.hardlink(Path::new("h"), Path::new("l/dest")),
        ] {
            match e {
                Err(TreeError::Refused(EntryProblem::ThroughSymlink(p))) => assert_eq!(p, "l"),
                other => panic!("{other:?}"),
            }
        }
        assert!(!t.path().join("x").exists() && !t.path().join("d").exists());
    }
}
