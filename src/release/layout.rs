//! Where things live under an application root, and the names allowed for releases.
//!
//! ```text
//! DIR/current -> releases/<version>     switched only by rename(2)
//! DIR/releases/<version>/               one unpacked release each
//! DIR/.droot-fleet/lock                 flock(2) held by deploy, rollback and prune
//! DIR/.droot-fleet/releases.json        deploy order (oldest first), written atomically
//! DIR/.droot-fleet/staging/<version>/   a release being unpacked (0700)
//! ```
//! Everything droot-fleet owns besides `current` and `releases/` sits under `.droot-fleet`.
//! In symlink mode a jail's root is `releases/<version>`, so `.droot-fleet` is out of its sight.
//!
//! In rsync mode the jail's root is `DIR` itself, so the tool's state lives beside it instead,
//! where no jail can reach it: `PARENT/.NAME.droot-fleet/` (lock and staging) for
//! `DIR = PARENT/NAME` ([`Layout::in_place`]).
//!
//! Every directory created here gets an explicit mode whatever the umask: `DIR` 0700 in
//! symlink mode (tightened when an older version made it wider, see [`super::protect`]) and
//! 0755 in rsync mode (it is the jail's `/`; the archive's root entry sets its final mode),
//! `releases/` 0755, the state directory and staging 0700.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The tool's reserved directory name at the top of an application root.
pub const TOOL_DIR: &str = ".droot-fleet";

/// Paths under one application root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    state: PathBuf,
    /// Rsync mode: `root` is itself the jail's `/`.
    in_place: bool,
}

impl Layout {
    /// Symlink mode: state in `DIR/.droot-fleet`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let state = root.join(TOOL_DIR);
        Layout {
            root,
            state,
            in_place: false,
        }
    }
    /// Rsync mode: `root` is live (a jail's `/`), so the state sits beside it, in
    /// `PARENT/.NAME.droot-fleet`. Creates `root` (0755) when missing, and resolves it, so
    /// every name for one root shares one state directory.
    pub fn in_place(root: &Path) -> io::Result<Self> {
        mkdir_p(root, 0o755)?;
        let root = root.canonicalize()?;
        let Some(state) = in_place_state_dir(&root) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rsync mode cannot deploy into /",
            ));
        };
        Ok(Layout {
            root,
            state,
            in_place: true,
        })
    }
    /// Whether this is rsync mode's layout (the root is the jail's `/`).
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }
    pub fn tool_dir(&self) -> PathBuf {
        self.state.clone()
    }
    pub fn state_file(&self) -> PathBuf {
        self.tool_dir().join("releases.json")
    }
    pub fn staging_dir(&self) -> PathBuf {
        self.tool_dir().join("staging")
    }
    /// Creates the root (0700; 0755 in rsync mode), `releases/` (0755) and the state
    /// directory when missing; the state directory and staging are always (re)set to 0700.
    pub fn ensure(&self, with_releases: bool) -> io::Result<()> {
        mkdir_p(&self.root, if self.in_place { 0o755 } else { 0o700 })?;
        for dir in [self.tool_dir(), self.staging_dir()] {
            mkdir_p(&dir, 0o700)?;
            let meta = std::fs::symlink_metadata(&dir)?;
            if !meta.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is not a directory; move it away", dir.display()),
                ));
            }
            if meta.permissions().mode() & 0o7777 != 0o700 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        if with_releases {
            mkdir_p(&self.releases(), 0o755)?;
        }
        Ok(())
    }
}

/// Rsync mode's state directory for the (canonical) root `PARENT/NAME`:
/// `PARENT/.NAME.droot-fleet`; `None` for `/`.
pub fn in_place_state_dir(root: &Path) -> Option<PathBuf> {
    let (parent, name) = (root.parent()?, root.file_name()?);
    let mut state_name = std::ffi::OsString::from(".");
    state_name.push(name);
    state_name.push(TOOL_DIR);
    Some(parent.join(state_name))
}

/// Creates `path` and its missing ancestors, each with exactly `mode` (the umask ignored).
/// Existing directories are left as they are.
pub fn mkdir_p(path: &Path, mode: u32) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        mkdir_p(parent, 0o755)?;
    }
    // Created with `mode` (the umask can only take bits away), then set exactly.
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid release name {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ + -, not starting with '.' or '-'"
)]
pub struct InvalidVersion(pub String);

/// Checks a release name: it becomes a directory name and appears in `current`'s target.
pub fn validate_version(v: &str) -> Result<(), InvalidVersion> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('.')
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidVersion(v.to_string()))
    }
}

/// The last second [`humantime`] formats: 9999-12-31 23:59:59 UTC.
const LAST_FORMATTED_SECS: u64 = 253_402_300_799;

/// Seconds since the epoch as RFC 3339 in UTC (`2026-12-04T21:55:32Z`); `None` after
/// year 9999, which [`humantime`] does not format.
fn rfc3339(secs: u64) -> Option<String> {
    if secs > LAST_FORMATTED_SECS {
        return None;
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// Formats seconds since the epoch as `YYYYMMDDHHMMSS` in UTC (after year 9999: the
/// seconds themselves).
pub fn timestamp_version(secs: u64) -> String {
    match rfc3339(secs) {
        Some(t) => t.chars().filter(char::is_ascii_digit).collect(),
        None => secs.to_string(),
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (after year 9999:
/// `unix time SECS`).
pub fn display_time(secs: u64) -> String {
    match rfc3339(secs) {
        // `2026-12-04T21:55:32Z`: the date, then the time.
        Some(t) => format!("{} {} UTC", &t[..10], &t[11..19]),
        None => format!("unix time {secs}"),
    }
}

/// An exclusive flock(2) on the root's lock file, released on drop.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock, waiting (and saying so) while another deploy holds it.
    pub fn acquire(layout: &Layout) -> io::Result<RootLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(layout.tool_dir().join("lock"))?;
        let fd = file.as_raw_fd();
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            tracing::warn!(root = %layout.root.display(), "another deploy holds the lock; waiting");
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(RootLock { _file: file })
    }
}

/// fsyncs a directory so renames inside it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["v42", "20261129081500", "1.2.3+build-7", "a_b"] {
            assert_eq!(validate_version(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "a b",
            "x\n",
            &"x".repeat(129),
        ] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_utc_civil_time() {
        for (secs, version, shown) in [
            (0, "19700101000000", "1970-01-01 00:00:00 UTC"),
            (1_795_940_100, "20261129081500", "2026-11-29 08:15:00 UTC"),
            // Leap days, the second before one, and 2100 (not a leap year).
            (951_782_400, "20000229000000", "2000-02-29 00:00:00 UTC"),
            (1_709_164_799, "20240228235959", "2024-02-28 23:59:59 UTC"),
            (4_107_542_400, "21000301000000", "2100-03-01 00:00:00 UTC"),
            (253_402_300_799, "99991231235959", "9999-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(timestamp_version(secs), version, "{secs}");
            assert_eq!(display_time(secs), shown, "{secs}");
        }
        // Past what humantime formats (a corrupt history file): no panic.
        assert_eq!(display_time(u64::MAX), format!("unix time {}", u64::MAX));
        assert_eq!(timestamp_version(253_402_300_800), "253402300800");
    }
}
