//! Symlink-safe paths inside the root.
//!
//! A rootfs comes from an image and may be hostile: `root/proc -> /etc` would make a naive
//! `mount("proc", root + "/proc")` land on the host. Every target inside the root is therefore
//! reached one component at a time with `openat(O_PATH | O_NOFOLLOW)`, creating what is missing,
//! and a symlink anywhere on the way is refused. The result is an `O_PATH` descriptor; mounts
//! use it through `/proc/self/fd/N`, which names exactly that inode and is never re-resolved.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

use crate::beneath::open_component;

use super::JailError;

/// What the last component must be (and is created as, when missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Opens a directory the caller named (following its symlinks: `DIR/current` is fine) as `O_PATH`.
pub fn open_root(root: &Path) -> Result<OwnedFd, JailError> {
    openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| JailError::Root {
        root: root.to_path_buf(),
        reason: match e {
            Errno::ENOENT => "it does not exist".to_string(),
            Errno::ENOTDIR => "it is not a directory".to_string(),
            e => format!("cannot open it: {}", super::SysErr::from(e)),
        },
    })
}

/// The `/proc/self/fd/N` name of a descriptor, for syscalls that only take paths (mount).
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn is_symlink_at(dir: BorrowedFd<'_>, name: &Path) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
        .unwrap_or(false)
}

/// Opens `rel` (relative, normalized: see [`super::spec::jail_relative`]) beneath `root_fd`
/// without following any symlink. With `create`, missing directories are made (mode 0755)
/// and a missing last component is created as `kind` (an empty 0644 file or a directory).
/// The last component must be of type `kind`.
pub fn open_beneath(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    rel: &Path,
    kind: Kind,
    create: bool,
) -> Result<OwnedFd, JailError> {
    let comps: Vec<&Path> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(Path::new(n)),
            _ => Err(unsafe_path(
                root,
                rel,
                &c.as_os_str().to_string_lossy(),
                "is not a plain name",
            )),
        })
        .collect::<Result<_, _>>()?;
    if comps.is_empty() {
        return Err(unsafe_path(root, rel, "", "is empty"));
    }
    let mut cur: Option<OwnedFd> = None;
    for (i, name) in comps.iter().enumerate() {
        let dir = cur.as_ref().map_or(root_fd, |f| f.as_fd());
        let last = i + 1 == comps.len();
        let want_dir = !last || kind == Kind::Dir;
        let so_far = comps[..=i].iter().collect::<PathBuf>();
        let next = open_component(dir, name, want_dir, create)
            .map_err(|e| component_error(dir, root, rel, &so_far, name, want_dir, e))?;
        if last {
            let st = fstat(&next).map_err(|e| setup_err(root, &so_far, "fstat", e))?;
            let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if fmt == SFlag::S_IFLNK {
                return Err(unsafe_path(
                    root,
                    rel,
                    &name.to_string_lossy(),
                    "is a symlink",
                ));
            }
            if kind == Kind::File && fmt == SFlag::S_IFDIR {
                return Err(unsafe_path(
                    root,
                    rel,
                    &name.to_string_lossy(),
                    "is a directory, but a file is needed",
                ));
            }
        }
        cur = Some(next);
    }
    Ok(cur.expect("at least one component"))
}

#[allow(clippy::too_many_arguments)]
fn component_error(
    dir: BorrowedFd<'_>,
    root: &Path,
    rel: &Path,
    so_far: &Path,
    name: &Path,
    want_dir: bool,
    e: Errno,
) -> JailError {
    let comp = name.to_string_lossy();
    if matches!(e, Errno::ENOTDIR | Errno::ELOOP) && is_symlink_at(dir, name) {
        return unsafe_path(root, rel, &comp, "is a symlink");
    }
    if e == Errno::ENOTDIR && want_dir {
        return unsafe_path(root, rel, &comp, "is not a directory");
    }
    setup_err(root, so_far, "open", e)
}

fn unsafe_path(root: &Path, rel: &Path, component: &str, reason: &str) -> JailError {
    JailError::UnsafePath {
        root: root.to_path_buf(),
        path: Path::new("/").join(rel),
        component: component.to_string(),
        reason: reason.to_string(),
    }
}

fn setup_err(root: &Path, rel: &Path, op: &str, e: Errno) -> JailError {
    JailError::PathSetup {
        path: root.join(rel),
        op: op.to_string(),
        err: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/file"), "x").unwrap();
        symlink(outside.path(), root.path().join("escape")).unwrap();
        symlink("b", root.path().join("a/rel")).unwrap();
        (root, outside)
    }

    #[test]
    fn creates_missing_dirs_and_files() {
        let (root, _o) = setup();
        let fd = open_root(root.path()).unwrap();
        open_beneath(fd.as_fd(), root.path(), Path::new("x/y/z"), Kind::Dir, true).unwrap();
        assert!(root.path().join("x/y/z").is_dir());
        open_beneath(
            fd.as_fd(),
            root.path(),
            Path::new("a/new.conf"),
            Kind::File,
            true,
        )
        .unwrap();
        assert!(root.path().join("a/new.conf").is_file());
        open_beneath(fd.as_fd(), root.path(), Path::new("a/b"), Kind::Dir, false).unwrap();
        let e =
            open_beneath(fd.as_fd(), root.path(), Path::new("nope"), Kind::Dir, false).unwrap_err();
        assert!(matches!(e, JailError::PathSetup { .. }), "{e}");
    }

    #[test]
    fn refuses_symlinks_anywhere() {
        let (root, outside) = setup();
        let fd = open_root(root.path()).unwrap();
        for (p, kind) in [
            ("escape", Kind::Dir),
            ("escape/sub", Kind::Dir),
            ("escape", Kind::File),
            ("a/rel", Kind::Dir),
            ("a/rel/x", Kind::File),
        ] {
            let e = open_beneath(fd.as_fd(), root.path(), Path::new(p), kind, true).unwrap_err();
            match &e {
                JailError::UnsafePath { reason, .. } => assert_eq!(reason, "is a symlink", "{p}"),
                other => panic!("{p}: unexpected {other}"),
            }
            assert!(e.to_string().contains("symlink"));
        }
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "nothing created outside"
        );
    }

    #[test]
    fn type_mismatch_is_reported() {
        let (root, _o) = setup();
        let fd = open_root(root.path()).unwrap();
        let e = open_beneath(
            fd.as_fd(),
            root.path(),
            Path::new("a/file/x"),
            Kind::Dir,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e =
            open_beneath(fd.as_fd(), root.path(), Path::new("a/b"), Kind::File, true).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = open_root(&root.path().join("a/file")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = open_root(&root.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
