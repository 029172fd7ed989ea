//! The hardened unpacker: every entry is checked before anything is written for it.
//!
//! Refused (the whole unpack fails, naming the entry): `..` components; hardlinks whose
//! target is outside the root, missing, or reached through a symlink; any entry whose parent
//! is a symlink or a non-directory (it would be written through it); device nodes and FIFOs
//! unless allowed; totals over the byte or entry limit. Setuid/setgid bits are stripped and
//! ownership is not restored unless `same_owner`. Symlinks may point anywhere, absolute
//! targets included: they are only ever resolved inside the jail, never followed here.
//!
//! The destination must be a fresh directory owned by the caller; on error its contents are
//! undefined and the caller removes it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::entry_path::{self, EntryPathError};
use super::format::{self, Compression, FormatError};
use super::pipeline::Prefetch;
use super::sparse_file::write_sparse;
use super::tar::{Archive, Entry, Kind, TarError};

/// Limits and policy for one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Keep uid/gid and setuid/setgid bits.
    pub same_owner: bool,
    /// Allow character/block devices and FIFOs.
    pub allow_devices: bool,
    /// Maximum total size of file contents.
    pub max_bytes: u64,
    /// Maximum number of entries.
    pub max_entries: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            same_owner: false,
            allow_devices: false,
            max_bytes: 64 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub compression: Compression,
    pub entries: u64,
    pub bytes: u64,
}

/// Why a single entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("{0}")]
    Path(#[from] EntryPathError),
    #[error("hardlink target {0:?} is outside the root")]
    HardlinkOutside(String),
    #[error("hardlink target {0:?} does not exist earlier in the archive")]
    HardlinkMissing(String),
    #[error("would be written through the symlink {0:?}")]
    ThroughSymlink(String),
    #[error("parent {0:?} is not a directory")]
    ParentNotDirectory(String),
    #[error("would replace the non-empty directory at this path")]
    ReplacesDirectory,
    #[error("has owner {0}:{1}, beyond the 32-bit ids Linux has (GNU tar refuses it too)")]
    Owner(u64, u64),
    #[error("is a {0}; device nodes and FIFOs are refused unless --allow-devices")]
    Device(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("archive entry {entry:?} {problem}")]
    Entry {
        entry: String,
        problem: EntryProblem,
    },
    #[error("archive exceeds the size limit of {limit} bytes (raise it with --max-bytes)")]
    TooLarge { limit: u64 },
    #[error("archive exceeds the limit of {limit} entries (raise it with --max-entries)")]
    TooManyEntries { limit: u64 },
    #[error("cannot read archive (truncated or corrupt?)")]
    Read(#[source] io::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

struct DirAttrs {
    rel: Option<PathBuf>,
    mode: u32,
    mtime: Option<SystemTime>,
    owner: Option<(u32, u32)>,
}

/// Unpacks a tar, tar.gz or tar.zst stream into `dest` (an existing, empty directory).
pub fn unpack<R: Read + Send + 'static>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let (compression, reader) = format::detect(input)?;
    let reader = Prefetch::spawn(reader).map_err(UnpackError::Read)?;
    let mut archive = Archive::new(reader);
    let mut unpacker = Unpacker {
        dest,
        opts,
        real_dirs: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0; 1 << 18],
        umask: current_umask(),
        stats: UnpackStats {
            compression,
            entries: 0,
            bytes: 0,
        },
    };
    while let Some(entry) = archive.next_entry()? {
        unpacker.entry(&entry, &mut archive)?;
    }
    unpacker.finish()
}

struct Unpacker<'a> {
    dest: &'a Path,
    opts: &'a UnpackOptions,
    /// Relative paths known to be real directories created or checked by us.
    real_dirs: HashSet<PathBuf>,
    dirs: Vec<DirAttrs>,
    buf: Vec<u8>,
    umask: u32,
    stats: UnpackStats,
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

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl Unpacker<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &Entry,
        archive: &mut Archive<R>,
    ) -> Result<(), UnpackError> {
        let raw_path = Path::new(OsStr::from_bytes(&entry.path));
        let name = entry.shown();
        let refuse = |problem: EntryProblem| UnpackError::Entry {
            entry: name.clone(),
            problem,
        };
        let kind = entry.kind;
        self.stats.entries += 1;
        if self.stats.entries > self.opts.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        // Extension headers count too; a sparse file counts at its real size.
        let size = entry.size.saturating_add(entry.ext_bytes);
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        if self.stats.bytes > self.opts.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.opts.max_bytes,
            });
        }
        let mut mode = entry.mode & 0o7777;
        if !self.opts.same_owner {
            mode &= !0o6000;
        }
        let owner = if self.opts.same_owner {
            match (u32::try_from(entry.uid), u32::try_from(entry.gid)) {
                (Ok(uid), Ok(gid)) => Some((uid, gid)),
                _ => return Err(refuse(EntryProblem::Owner(entry.uid, entry.gid))),
            }
        } else {
            None
        };
        let mtime = if entry.mtime >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(entry.mtime.unsigned_abs()))
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(entry.mtime.unsigned_abs()))
        };
        let rel = entry_path::sanitize(raw_path).map_err(|e| refuse(e.into()))?;

        let Some(rel) = rel else {
            // The archive's own root: only its attributes matter.
            if kind == Kind::Dir {
                self.dirs.push(DirAttrs {
                    rel: None,
                    mode,
                    mtime,
                    owner,
                });
            }
            return Ok(());
        };
        self.check_parents(&rel).map_err(&refuse)?;
        let full = self.dest.join(&rel);

        match kind {
            Kind::Dir => {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(refuse(EntryProblem::ThroughSymlink(name.clone())));
                    }
                    Ok(_) => {
                        fs::remove_file(&full).map_err(write_err(&full))?;
                        fs::create_dir(&full).map_err(write_err(&full))?;
                    }
                    Err(_) => fs::create_dir(&full).map_err(write_err(&full))?,
                }
                self.real_dirs.insert(rel.clone());
                self.dirs.push(DirAttrs {
                    rel: Some(rel),
                    mode,
                    mtime,
                    owner,
                });
            }
            Kind::File => {
                let open = || {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode & 0o777)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(&full)
                };
                // Optimistic create: only a path that already exists costs an lstat.
                let mut file = match open() {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.clear_path(&rel, &full).map_err(&refuse)?;
                        open()
                    }
                    other => other,
                }
                .map_err(write_err(&full))?;
                let written = match &entry.sparse {
                    Some(map) => {
                        write_sparse(&file, archive.data(), map, entry.size, &mut self.buf)
                    }
                    None => copy(&mut archive.data(), &mut file, &mut self.buf).map(drop),
                };
                written.map_err(|e| match e {
                    CopyError::Read(e) => UnpackError::Read(e),
                    CopyError::Write(e) => write_err(&full)(e),
                })?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                        .map_err(write_err(&full))?;
                }
                // The open mode went through the umask; fix it up only when that changed it
                // (or chown cleared set-id bits).
                if mode & !self.umask != mode || owner.is_some() {
                    file.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(write_err(&full))?;
                }
                if let Some(t) = mtime {
                    file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
                        .map_err(write_err(&full))?;
                }
            }
            Kind::Symlink => {
                let target = Path::new(OsStr::from_bytes(&entry.link));
                if let Err(e) = symlink(target, &full) {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(write_err(&full)(e));
                    }
                    self.clear_path(&rel, &full).map_err(&refuse)?;
                    symlink(target, &full).map_err(write_err(&full))?;
                }
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                        .map_err(write_err(&full))?;
                }
            }
            Kind::HardLink => {
                let target = Path::new(OsStr::from_bytes(&entry.link));
                let shown = target.to_string_lossy().into_owned();
                let target_rel = match entry_path::sanitize(target) {
                    Ok(Some(t)) => t,
                    _ => return Err(refuse(EntryProblem::HardlinkOutside(shown))),
                };
                self.check_parents(&target_rel).map_err(&refuse)?;
                let target_full = self.dest.join(&target_rel);
                match fs::symlink_metadata(&target_full) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(refuse(EntryProblem::HardlinkMissing(shown))),
                }
                if target_rel == rel {
                    return Ok(());
                }
                self.clear_path(&rel, &full).map_err(&refuse)?;
                fs::hard_link(&target_full, &full).map_err(write_err(&full))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let what = match kind {
                    Kind::Char => "character device",
                    Kind::Block => "block device",
                    _ => "FIFO",
                };
                if !self.opts.allow_devices {
                    return Err(refuse(EntryProblem::Device(what)));
                }
                self.clear_path(&rel, &full).map_err(&refuse)?;
                let sflag = match kind {
                    Kind::Char => nix::sys::stat::SFlag::S_IFCHR,
                    Kind::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let (major, minor) = (entry.dev_major, entry.dev_minor);
                nix::sys::stat::mknod(
                    &full,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                )
                .map_err(|e| write_err(&full)(e.into()))?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(write_err(&full))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                        .map_err(write_err(&full))?;
                }
            }
        }
        Ok(())
    }

    /// Ensures every ancestor of `rel` is a real directory, creating missing ones; refuses
    /// symlinks and non-directories in the way.
    fn check_parents(&mut self, rel: &Path) -> Result<(), EntryProblem> {
        for anc in entry_path::ancestors(rel) {
            if self.real_dirs.contains(anc) {
                continue;
            }
            let full = self.dest.join(anc);
            let shown = || anc.to_string_lossy().into_owned();
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(EntryProblem::ThroughSymlink(shown()));
                }
                Ok(_) => return Err(EntryProblem::ParentNotDirectory(shown())),
                Err(_) => {
                    // Implicit parent: created 0755, like tar does.
                    fs::create_dir(&full)
                        .and_then(|()| {
                            fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        })
                        .map_err(|_| EntryProblem::ParentNotDirectory(shown()))?;
                }
            }
            self.real_dirs.insert(anc.to_path_buf());
        }
        Ok(())
    }

    /// Removes whatever is at `full` so a new non-directory entry can take its place; a
    /// later entry replaces an earlier one, as with tar. Never follows a symlink there.
    fn clear_path(&mut self, rel: &Path, full: &Path) -> Result<(), EntryProblem> {
        match fs::symlink_metadata(full) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => {
                fs::remove_dir(full).map_err(|_| EntryProblem::ReplacesDirectory)?;
                self.real_dirs.remove(rel);
                Ok(())
            }
            Ok(_) => fs::remove_file(full).map_err(|_| EntryProblem::ReplacesDirectory),
        }
    }

    fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        // Directory attributes last (files created inside change mtimes), deepest first.
        self.dirs.sort_by_key(|d| {
            std::cmp::Reverse(d.rel.as_ref().map_or(0, |r| r.components().count()))
        });
        for d in &self.dirs {
            let full = d
                .rel
                .as_ref()
                .map_or(self.dest.to_path_buf(), |r| self.dest.join(r));
            if d.rel.is_some() {
                if let Some((uid, gid)) = d.owner {
                    std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                        .map_err(write_err(&full))?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(d.mode))
                    .map_err(write_err(&full))?;
            }
            if let Some(t) = d.mtime {
                let f = File::open(&full).map_err(write_err(&full))?;
                f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
                    .map_err(write_err(&full))?;
            }
        }
        // One syncfs makes the whole tree durable before the caller publishes it.
        let dir = File::open(self.dest).map_err(write_err(self.dest))?;
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(write_err(self.dest)(io::Error::last_os_error()));
        }
        Ok(self.stats)
    }

    /// The root entry's mode, if the archive had one (applied by the caller on publish).
    #[allow(dead_code)]
    fn root_mode(&self) -> Option<u32> {
        self.dirs.iter().find(|d| d.rel.is_none()).map(|d| d.mode)
    }
}

pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(from: &mut impl Read, to: &mut File, buf: &mut [u8]) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}
