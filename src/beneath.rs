//! Filesystem operations relative to a directory descriptor, never following a symlink.
//!
//! Trees that an archive or a running jail controls are never walked by name from `/`: a
//! component swapped for a symlink between a check and a use would redirect the use onto the
//! host. Instead a directory is opened once and every later operation is relative to that
//! descriptor: multi-component paths go through `openat2(2)` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (so `..`, absolute paths and symlinks anywhere on
//! the way are refused by the kernel), single names through the `*at` calls with
//! `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`, and attributes are set with `fchmod`/`fchown`/
//! `futimens` on descriptors of the very inode that was checked.
//!
//! Used by the unpacker's tree writer, rsync mode and the jail's mount-target walk.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Whether a walk may cross into another mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounts {
    /// Refuse (`EXDEV`): for trees where a mountpoint must never be entered (rsync mode).
    Refuse,
    /// Allow: for the jail, which opens targets below the mounts it has just made.
    Cross,
}

/// Opens `rel` beneath `dir` with `openat2`, refusing `..`, absolute paths and symlinks at
/// every step (`ELOOP`), and mount crossings with [`Mounts::Refuse`] (`EXDEV`). An empty
/// `rel` opens `dir` itself. `O_CLOEXEC` and `O_NOFOLLOW` are always added.
pub fn open(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    mounts: Mounts,
) -> Result<OwnedFd, Errno> {
    let mut resolve = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if mounts == Mounts::Refuse {
        resolve |= ResolveFlag::RESOLVE_NO_XDEV;
    }
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve);
    loop {
        match openat2(dir, rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Opens a directory beneath `dir` for reading and for `fchmod`/`fchown`/`futimens`.
/// `O_NONBLOCK` so that a FIFO swapped in can never hang the caller.
pub fn open_dir(dir: BorrowedFd<'_>, rel: &Path, mounts: Mounts) -> Result<OwnedFd, Errno> {
    open(
        dir,
        rel,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
        mounts,
    )
}

/// Opens a directory the operator named (its symlinks followed: they are the operator's).
pub fn open_named_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The id of the mount a descriptor is on (`statx` `STATX_MNT_ID`): rename(2) works only
/// within one mount, even between two bind mounts of one filesystem.
pub fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    use std::os::fd::AsRawFd;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx fills the buffer we own; an empty path with AT_EMPTY_PATH names `fd`.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    Errno::result(rc)?;
    // SAFETY: statx succeeded, so the buffer is initialised.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(stx.stx_mnt_id)
}

/// `lstat` of one name in `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &Path) -> Result<FileStat, Errno> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// The file type bits of a stat.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Opens or creates one name in `dir` without following a symlink there, as `O_PATH`.
/// With `create`, a missing directory is made (0755, whatever the umask) and a missing file is
/// created empty (0644). Used by the jail to reach mount targets one component at a time.
pub fn open_component(
    dir: BorrowedFd<'_>,
    name: &Path,
    want_dir: bool,
    create: bool,
) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if want_dir {
        flags |= OFlag::O_DIRECTORY;
    }
    match openat(dir, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) if create => {
            if want_dir {
                match mkdir_mode(dir, name, 0o755) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            } else {
                let f = openat(
                    dir,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                );
                match f {
                    Ok(f) => nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(0o644))?,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            openat(dir, name, flags, Mode::empty())
        }
        other => other,
    }
}

/// `mkdirat`, then the exact `mode` set on the new directory itself (the umask is ignored).
pub fn mkdir_mode(dir: BorrowedFd<'_>, name: &Path, mode: u32) -> Result<(), Errno> {
    mkdirat(dir, name, Mode::from_bits_truncate(mode & 0o777))?;
    let fd = open_dir(dir, name, Mounts::Refuse)?;
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
}

/// Sets owner (first: chown clears set-id bits), mode and mtime through a descriptor.
pub fn set_attrs(
    fd: BorrowedFd<'_>,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    mtime: Option<SystemTime>,
) -> Result<(), Errno> {
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into()))?;
    }
    if let Some(mode) = mode {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))?;
    }
    if let Some(t) = mtime {
        let ts = timespec(t);
        nix::sys::stat::futimens(fd, &ts, &ts)?;
    }
    Ok(())
}

fn timespec(t: SystemTime) -> nix::sys::time::TimeSpec {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    nix::sys::time::TimeSpec::from_duration(d)
}

/// The names in a directory (without `.` and `..`), read through a descriptor.
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    let fd = open(
        dir,
        Path::new("."),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mounts::Cross,
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from(std::ffi::OsStr::from_bytes(name)));
        }
    }
    Ok(out)
}

/// Removes `name` in `dir`: a non-directory is unlinked (a symlink itself, never its target);
/// a directory is emptied through descriptors, never crossing into a mount (`EXDEV`) nor
/// following a symlink, then removed. A tree swapped under it fails with an error and leaves
/// everything outside `dir` alone.
///
/// Iterative, holding two descriptors at most: each directory is reopened from `dir` by its
/// relative path (`openat2` checks every component again), so neither the stack nor the
/// descriptor limit bounds the depth; a path over `PATH_MAX` fails with `ENAMETOOLONG`.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
    let st = lstat_at(dir, name)?;
    if kind(&st) != SFlag::S_IFDIR {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
    }
    // (path relative to `dir`, times emptied): a directory is listed, its files unlinked and
    // its subdirectories pushed; once they are gone it is removed.
    let mut stack: Vec<(PathBuf, u32)> = vec![(name.to_path_buf(), 0)];
    while let Some((top, emptied)) = stack.pop() {
        if emptied > 0 {
            let parent = top.parent().unwrap_or(Path::new(""));
            let pfd = open_dir(dir, parent, Mounts::Refuse)?;
            let last = top.file_name().map_or(Path::new(""), Path::new);
            match unlinkat(pfd.as_fd(), last, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                // Something was added meanwhile (a live jail): empty it again, a few times.
                Err(Errno::ENOTEMPTY) if emptied < 3 => {}
                Err(e) => return Err(e),
            }
        }
        let fd = open_dir(dir, &top, Mounts::Refuse)?;
        stack.push((top.clone(), emptied + 1));
        for child in list(fd.as_fd())? {
            let c = Path::new(&child);
            match lstat_at(fd.as_fd(), c) {
                Ok(st) if kind(&st) == SFlag::S_IFDIR => stack.push((top.join(c), 0)),
                Ok(_) => match unlinkat(fd.as_fd(), c, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                },
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Whether two open regular files have the same bytes (both read from the start).
pub fn same_content(a: &mut File, b: &mut File) -> io::Result<bool> {
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = read_full(a, &mut ba)?;
        let m = read_full(b, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end: how much was read.
pub(crate) fn read_full<R: Read + ?Sized>(f: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_refuses_symlinks_dotdot_and_absolute() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink(outside.path(), t.path().join("a/link")).unwrap();
        symlink("b", t.path().join("a/rel")).unwrap();
        let root = open_named_dir(t.path()).unwrap();
        open_dir(root.as_fd(), Path::new("a/b"), Mounts::Refuse).unwrap();
        for (p, want) in [
            // A symlink as the last component of a directory open: O_DIRECTORY says ENOTDIR.
            ("a/link", Errno::ENOTDIR),
            ("a/rel", Errno::ENOTDIR),
            ("a/rel/x", Errno::ELOOP),
            ("a/link/x", Errno::ELOOP),
            ("../x", Errno::EXDEV),
            ("/etc", Errno::EXDEV),
        ] {
            assert_eq!(
                open_dir(root.as_fd(), Path::new(p), Mounts::Refuse).unwrap_err(),
                want,
                "{p}"
            );
        }
    }

    #[test]
    fn remove_tree_at_never_follows_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        std::fs::create_dir_all(t.path().join("d/e")).unwrap();
        std::fs::write(t.path().join("d/e/f"), b"x").unwrap();
        symlink(outside.path(), t.path().join("d/link")).unwrap();
        symlink(outside.path(), t.path().join("top")).unwrap();
        let root = open_named_dir(t.path()).unwrap();
        remove_tree_at(root.as_fd(), Path::new("d")).unwrap();
        remove_tree_at(root.as_fd(), Path::new("top")).unwrap();
        assert!(!t.path().join("d").exists() && !t.path().join("top").exists());
        assert_eq!(std::fs::read(outside.path().join("keep")).unwrap(), b"k");
    }

    #[test]
    fn remove_tree_at_handles_trees_deeper_than_the_descriptor_limit() {
        let t = tempfile::tempdir().unwrap();
        let root = open_named_dir(t.path()).unwrap();
        let mut cur = root.try_clone().unwrap();
        for _ in 0..1100 {
            mkdir_mode(cur.as_fd(), Path::new("d"), 0o755).unwrap();
            let f = openat(
                cur.as_fd(),
                "f",
                OFlag::O_CREAT | OFlag::O_WRONLY,
                Mode::empty(),
            );
            drop(f.unwrap());
            cur = open_dir(cur.as_fd(), Path::new("d"), Mounts::Refuse).unwrap();
        }
        drop(cur);
        remove_tree_at(root.as_fd(), Path::new("d")).unwrap();
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the top file is left");
    }

    #[test]
    fn mount_ids_tell_mounts_apart() {
        let t = tempfile::tempdir().unwrap();
        let a = open_named_dir(t.path()).unwrap();
        let b = open_named_dir(t.path()).unwrap();
        let proc = open_named_dir(Path::new("/proc")).unwrap();
        assert_eq!(mount_id(a.as_fd()).unwrap(), mount_id(b.as_fd()).unwrap());
        assert_ne!(
            mount_id(a.as_fd()).unwrap(),
            mount_id(proc.as_fd()).unwrap()
        );
    }

    #[test]
    fn mkdir_mode_ignores_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = open_named_dir(t.path()).unwrap();
        // The umask (022 or 077) would clear these bits on a plain mkdir.
        mkdir_mode(root.as_fd(), Path::new("x"), 0o777).unwrap();
        let m = std::fs::metadata(t.path().join("x")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o777);
    }

    #[test]
    fn content_comparison() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        std::fs::write(&a, vec![1u8; 200_000]).unwrap();
        std::fs::write(&b, vec![1u8; 200_000]).unwrap();
        let mut other = vec![1u8; 200_000];
        other[150_000] = 2;
        std::fs::write(&c, other).unwrap();
        let o = |p: &Path| File::open(p).unwrap();
        assert!(same_content(&mut o(&a), &mut o(&b)).unwrap());
        assert!(!same_content(&mut o(&a), &mut o(&c)).unwrap());
    }
}
