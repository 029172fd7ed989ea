//! The jail's `/dev`: a small tmpfs with only the devices a program expects.
//!
//! `null` (1:3), `zero` (1:5), `full` (1:7), `random` (1:8), `urandom` (1:9) and `tty` (5:0),
//! mode 0666 (chmod after mknod: the umask would otherwise narrow it); a private devpts
//! instance on `/dev/pts` with `/dev/ptmx -> pts/ptmx`; a 1777 tmpfs on `/dev/shm`; and the
//! `fd`, `stdin`, `stdout`, `stderr` links into `/proc/self/fd`. No host device is reachable.
//! (droot created `/dev/zero` as 1:3, i.e. a second `/dev/null`.)
//!
//! With a user namespace ([`super::userns`]) the nodes are still made with `mknod`, by host
//! root, before the jail enters its namespace (a process in a user namespace could not, and
//! a node on a mount made from one would not open). Everything here is then given to the
//! jail's root (host `base`), as it is root's without a namespace, and devpts gives new ptys
//! the jail's group 5 (`tty`) rather than the host's, which the jail could not map.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, makedev, mkdirat, mknodat};
use nix::unistd::{FchownatFlags, Gid, Uid, fchownat, symlinkat};

use super::JailError;
use super::paths::{Kind, fd_path, open_beneath};
use crate::id_range::IdRange;

/// The character devices created: name, major, minor.
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Mounts and fills `root/dev`; with `userns`, owned by the jail's root.
pub fn mount_dev(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    userns: Option<IdRange>,
) -> Result<(), JailError> {
    let rel = Path::new("dev");
    let target = open_beneath(root_fd, root, rel, Kind::Dir, true)?;
    let owned = |opts: &str| match userns {
        Some(r) => format!("{opts},uid={0},gid={0}", r.base()),
        None => opts.to_string(),
    };
    mount(
        Some("tmpfs"),
        &fd_path(target.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some(owned("mode=0755,size=65536k").as_str()),
    )
    .map_err(|e| mount_err("dev (tmpfs)", &root.join("dev"), e))?;
    // Our own fresh tmpfs from here on: nothing in it can be a hostile link.
    let dev = open_beneath(root_fd, root, rel, Kind::Dir, false)?;
    let devp = root.join("dev");
    for (name, major, minor) in DEVICES {
        let path = devp.join(name);
        let dev_err = |e: Errno| JailError::Device {
            path: path.clone(),
            err: e.into(),
        };
        let mode = Mode::from_bits_truncate(0o666);
        mknodat(
            dev.as_fd(),
            name,
            SFlag::S_IFCHR,
            mode,
            makedev(major, minor),
        )
        .map_err(dev_err)?;
        fchmodat(dev.as_fd(), name, mode, FchmodatFlags::FollowSymlink).map_err(dev_err)?;
        give(dev.as_fd(), name, userns).map_err(dev_err)?;
    }

    let pts = make_dir(dev.as_fd(), &devp, "pts", 0o755, userns)?;
    let tty_gid = userns.map_or(TTY_GID, |r| r.base() + TTY_GID);
    mount(
        Some("devpts"),
        &fd_path(pts.as_fd()),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(format!("newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}").as_str()),
    )
    .map_err(|e| mount_err("devpts", &devp.join("pts"), e))?;

    let shm = make_dir(dev.as_fd(), &devp, "shm", 0o1777, userns)?;
    mount(
        Some("shm"),
        &fd_path(shm.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(owned("mode=1777,size=65536k").as_str()),
    )
    .map_err(|e| mount_err("shm (tmpfs)", &devp.join("shm"), e))?;

    for (name, to) in LINKS {
        let err = |e: Errno| JailError::Device {
            path: devp.join(name),
            err: e.into(),
        };
        symlinkat(to, dev.as_fd(), name).map_err(err)?;
        give(dev.as_fd(), name, userns).map_err(err)?;
    }
    tracing::debug!(target = %devp.display(), "populated /dev");
    Ok(())
}

/// The group of `/dev/pts/N` (`tty`), in the jail's numbering.
const TTY_GID: u32 = 5;

/// Gives `name` (not followed) to the jail's root when there is a user namespace.
fn give(dir: BorrowedFd<'_>, name: &str, userns: Option<IdRange>) -> Result<(), Errno> {
    let Some(r) = userns else { return Ok(()) };
    let id = Some(r.base());
    fchownat(
        dir,
        name,
        id.map(Uid::from_raw),
        id.map(Gid::from_raw),
        FchownatFlags::AT_SYMLINK_NOFOLLOW,
    )
}

fn make_dir(
    dev: BorrowedFd<'_>,
    devp: &Path,
    name: &str,
    mode: u32,
    userns: Option<IdRange>,
) -> Result<std::os::fd::OwnedFd, JailError> {
    let mode = Mode::from_bits_truncate(mode);
    let err = |e: Errno| JailError::PathSetup {
        path: devp.join(name),
        op: "mkdir".into(),
        err: e.into(),
    };
    mkdirat(dev, name, mode).map_err(err)?;
    fchmodat(dev, name, mode, FchmodatFlags::FollowSymlink).map_err(err)?;
    give(dev, name, userns).map_err(err)?;
    open_beneath(dev, devp, Path::new(name), Kind::Dir, false)
}

fn mount_err(what: &str, target: &Path, e: Errno) -> JailError {
    JailError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        err: e.into(),
    }
}
