//! `--cp`: copy the host's `/etc/hosts`, `/etc/resolv.conf`, `/etc/passwd` and `/etc/group`
//! into the root.
//!
//! Host files are read following the host's symlinks (resolv.conf often points into /run).
//! The jail side is never written through a symlink: the content goes to a fresh temporary
//! file (`O_CREAT | O_EXCL | O_NOFOLLOW`) in the jail's etc, reached with
//! [`super::paths::open_beneath`] (so an `etc` that is a symlink is refused), and is renamed
//! over the destination. A rootfs with `etc/passwd -> /etc/shadow` gets its link replaced by
//! a regular file; the host's shadow is never touched.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{UnlinkatFlags, fchown, unlinkat};

use super::JailError;
use super::paths::{Kind, open_beneath};

/// The files `--cp` copies, relative to etc.
pub const FILES: [&str; 4] = ["hosts", "resolv.conf", "passwd", "group"];

/// Copies [`FILES`] from `host_etc` (normally `/etc`) into `root/etc`, owned by `owner`
/// (the jail's root in a user namespace; else the caller, host root). A file missing on the
/// host is skipped with a warning.
pub fn copy_host_files(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    host_etc: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), JailError> {
    let etc = open_beneath(root_fd, root, Path::new("etc"), Kind::Dir, true)?;
    for name in FILES {
        let host = host_etc.join(name);
        let copy_err = |reason: String| JailError::Copy {
            file: host.clone(),
            reason,
        };
        let content = match std::fs::read(&host) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %host.display(), "--cp: host file missing, not copied");
                continue;
            }
            Err(e) => return Err(copy_err(format!("cannot read it: {e}"))),
        };
        let mode = std::fs::metadata(&host)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        replace_file(etc.as_fd(), name, &content, mode, owner)
            .map_err(|e| copy_err(format!("cannot write {}/etc/{name}: {e}", root.display())))?;
        tracing::debug!(
            file = name,
            bytes = content.len(),
            "copied host file into the root"
        );
    }
    Ok(())
}

/// Writes `content` to `dir/name` by creating a temporary file and renaming it over `name`.
fn replace_file(
    dir: BorrowedFd<'_>,
    name: &str,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), Errno> {
    let tmp = format!(".{name}.droot-fleet-{}", std::process::id());
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let perm = Mode::from_bits_truncate(0o600);
    let fd = match openat(dir, tmp.as_str(), flags, perm) {
        Err(Errno::EEXIST) => {
            unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir)?;
            openat(dir, tmp.as_str(), flags, perm)?
        }
        other => other?,
    };
    let mut file = std::fs::File::from(fd);
    let written = file
        .write_all(content)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| match owner {
            Some((u, g)) => fchown(&file, Some(u.into()), Some(g.into())),
            None => Ok(()),
        })
        .and_then(|()| fchmod(&file, Mode::from_bits_truncate(mode)));
    let renamed = written.and_then(|()| renameat(dir, tmp.as_str(), dir, name));
    if renamed.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::paths::open_root;
    use std::os::unix::fs::symlink;

    fn host_etc() -> tempfile::TempDir {
        let h = tempfile::tempdir().unwrap();
        std::fs::write(h.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(h.path().join("real-resolv"), "nameserver 10.0.0.1\n").unwrap();
        symlink(h.path().join("real-resolv"), h.path().join("resolv.conf")).unwrap();
        std::fs::write(h.path().join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        // no group file: skipped
        h
    }

    #[test]
    fn copies_following_host_links_but_replaces_jail_links() {
        let host = host_etc();
        let root = tempfile::tempdir().unwrap();
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(victim.path(), "secret").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        symlink(victim.path(), root.path().join("etc/passwd")).unwrap();
        let fd = open_root(root.path()).unwrap();
        copy_host_files(fd.as_fd(), root.path(), host.path(), None).unwrap();
        let etc = root.path().join("etc");
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        assert!(!etc.join("resolv.conf").is_symlink());
        assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "secret");
        assert!(!etc.join("passwd").is_symlink());
        assert_eq!(
            std::fs::read_to_string(etc.join("passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert!(!etc.join("group").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn refuses_a_symlinked_etc() {
        let host = host_etc();
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("etc")).unwrap();
        let fd = open_root(root.path()).unwrap();
        let e = copy_host_files(fd.as_fd(), root.path(), host.path(), None).unwrap_err();
        assert!(matches!(e, JailError::UnsafePath { .. }), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
