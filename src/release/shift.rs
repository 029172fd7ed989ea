//! Shifting a tree's owners into a user namespace's host range, in place.
//!
//! For releases unpacked before their store turned user namespaces on: the jail's id N
//! (host N, without a namespace) becomes host `base + N`. An owner already in the range is
//! kept, so a shift is idempotent: a hardlink seen twice, or a shift cut short and run
//! again, changes nothing twice. An owner beyond the 65536 ids (only a jail's root without a
//! namespace could have made one) becomes the range's `nobody` (`base + 65534`).
//!
//! The walk works from descriptors ([`crate::beneath`]): no symlink is followed, no mount
//! is entered (one is skipped), and owners are changed with `fchownat(AT_SYMLINK_NOFOLLOW)`.
//! `chown` clears a file's set-id bits; they are put back, since in the range they give
//! nothing on the host. The top directory is changed last: a tree whose top is in the range
//! is entirely in it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{FchownatFlags, Gid, Uid, fchownat};

use crate::beneath::{self, Mounts, kind, lstat_at};
use crate::id_range::IdRange;

/// The jail's `nobody`.
const NOBODY: u32 = 65534;

/// The host id `id` becomes in `to`.
pub fn shifted(id: u32, to: IdRange) -> u32 {
    if to.contains(id) {
        return id;
    }
    to.to_host(id)
        .unwrap_or_else(|| to.to_host(NOBODY).expect("in range"))
}

/// Shifts `name` in `parent` and everything below it into `to`; returns how many entries
/// changed owner.
pub fn shift_tree(parent: BorrowedFd<'_>, name: &Path, to: IdRange) -> Result<u64, Errno> {
    let mut changed = 0;
    let mut stack: Vec<PathBuf> = vec![name.to_path_buf()];
    while let Some(dir_rel) = stack.pop() {
        let dir = match beneath::open_dir(parent, &dir_rel, Mounts::Refuse) {
            Ok(fd) => fd,
            // A mountpoint (or something swapped in meanwhile): left alone.
            Err(Errno::EXDEV | Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        for child in beneath::list(dir.as_fd())? {
            let c = Path::new(&child);
            let st = match lstat_at(dir.as_fd(), c) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if kind(&st) == SFlag::S_IFDIR {
                stack.push(dir_rel.join(c));
            }
            changed += u64::from(shift_one(dir.as_fd(), c, &st, to)?);
        }
    }
    let top = lstat_at(parent, name)?;
    changed += u64::from(shift_one(parent, name, &top, to)?);
    Ok(changed)
}

/// Gives `name` (lstat `st`) its shifted owner; whether it changed.
fn shift_one(dir: BorrowedFd<'_>, name: &Path, st: &FileStat, to: IdRange) -> Result<bool, Errno> {
    let (uid, gid) = (shifted(st.st_uid, to), shifted(st.st_gid, to));
    if (uid, gid) == (st.st_uid, st.st_gid) {
        return Ok(false);
    }
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        FchownatFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if kind(st) == SFlag::S_IFREG && st.st_mode & 0o6000 != 0 {
        let fd = beneath::open(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mounts::Refuse,
        )?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_move_into_the_range_once() {
        let r = IdRange::new(131072).unwrap();
        assert_eq!(shifted(0, r), 131072);
        assert_eq!(shifted(1000, r), 132072);
        assert_eq!(shifted(132072, r), 132072, "already shifted");
        assert_eq!(
            shifted(70000, r),
            131072 + 65534,
            "beyond the range: nobody"
        );
        assert_eq!(shifted(u32::MAX - 1, r), 131072 + 65534);
    }
}
