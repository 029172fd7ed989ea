//! The hardened unpacker: every entry is checked before anything is written for it.
//!
//! Refused (the whole unpack fails, naming the entry): `..` components; hardlinks whose
//! target is outside the root, missing, or reached through a symlink; any entry whose parent
//! is a symlink or a non-directory (it would be written through it); device nodes and FIFOs
//! outside `dev/` unless allowed (under `dev/` they are skipped and counted: `run` mounts its own
//! `/dev` there); totals over the byte or entry limit; a compressed stream that expands
//! beyond the ratio limit ([`guard`](super::guard)). A cancelled unpack stops at its next
//! read. Setuid/setgid bits are stripped and ownership is not restored unless `same_owner`;
//! with `id_shift` (a store whose jails run in a user namespace) every owner is moved into
//! the namespace's host range. Symlinks may point anywhere, absolute targets included: they
//! are only ever resolved inside the jail, never followed here.
//!
//! The destination must be a fresh directory owned by the caller; on error its contents are
//! undefined and the caller removes it. Everything is written through [`TreeWriter`], which
//! works from descriptors beneath the destination and never follows a symlink.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::entry_path::{self, EntryPathError};
use super::format::{self, Compression, FormatError};
use super::guard::{Counted, DEFAULT_MAX_RATIO, Expanding, RATIO_FLOOR, Stop, Trip};
use super::pipeline::Prefetch;
use super::sparse_file::write_sparse;
use super::tar::{Archive, Entry, Kind, TarError};
use super::tree::{Attrs, Special, TreeError, TreeWriter, shown};
use crate::cancel::{Cancel, Reason};
use crate::id_range::IdRange;

/// Limits and policy for one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Keep uid/gid and setuid/setgid bits.
    pub same_owner: bool,
    /// Create character/block devices and FIFOs; without it those under `dev/` are skipped
    /// and any others refused.
    pub allow_devices: bool,
    /// Maximum disk the release may take, as counted by [`disk_charge`]: file contents
    /// (sparse files at their full size, extension headers included) in whole blocks, and
    /// at least one block per entry.
    pub max_bytes: u64,
    /// Maximum number of entries.
    pub max_entries: u64,
    /// Largest expansion ratio of a compressed archive past [`RATIO_FLOOR`]; 0: no limit.
    pub max_ratio: u64,
    /// Stops the unpack at its next read when tripped.
    pub cancel: Cancel,
    /// Owners shifted into a user namespace's host range: every entry belongs to the jail's
    /// root (host `base`), or with `same_owner` to host `base + uid` and `base + gid`
    /// (an owner beyond the range's 65536 ids is refused).
    pub id_shift: Option<IdRange>,
}

/// Default byte limit of an unpack: 8 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// Default entry limit of an unpack.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;

/// The filesystem block an entry's disk use is counted in.
pub const BLOCK: u64 = 4096;

/// What an entry of `size` bytes (contents and extension headers) counts against
/// `max_bytes`: whole blocks, at least one. An entry takes disk its size does not show (a
/// directory's block, a link target past the inode, the inode itself): 20,000 empty
/// directories and symlinks, a tar of nothing but headers, once took 160 MB under a limit
/// of 16 MiB.
pub fn disk_charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            same_owner: false,
            allow_devices: false,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_ratio: DEFAULT_MAX_RATIO,
            cancel: Cancel::default(),
            id_shift: None,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub compression: Compression,
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes and FIFOs under `dev/` skipped (`run` masks them), without `allow_devices`.
    pub skipped_devices: u64,
    /// The mode of the archive's root entry (`./`), if it had one; applied on publish.
    pub root_mode: Option<u32>,
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
    #[error(
        "has owner {0}:{1}, beyond the 65536 ids a jail's user namespace maps (its store \
         runs jails in one)"
    )]
    OwnerOutsideRange(u64, u64),
    #[error(
        "is a {0}; device nodes and FIFOs outside /dev are refused: take it out of the image and \
         export again with `droot-fleet export`, or pass --allow-devices to create it"
    )]
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
    #[error(
        "archive exceeds the size limit of {limit} bytes (file contents in whole 4 KiB blocks, at \
         least one per entry, sparse files at their full size); raise the byte limit of this \
         deploy if the release really is that big"
    )]
    TooLarge { limit: u64 },
    #[error(
        "archive exceeds the limit of {limit} entries; raise the entry limit of this deploy if \
         the release really has that many"
    )]
    TooManyEntries { limit: u64 },
    #[error(
        "archive expands more than {limit}:1 ({out} bytes out of {raw} compressed, past the \
         first {floor} bytes): a decompression bomb, or a release that compresses unusually \
         well; raise the expansion-ratio limit of this deploy if it is the latter",
        floor = RATIO_FLOOR
    )]
    Expansion { out: u64, raw: u64, limit: u64 },
    #[error("unpack stopped: {0}")]
    Cancelled(Reason),
    #[error("cannot read archive (truncated or corrupt?)")]
    Read(#[source] io::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks a tar, tar.gz or tar.zst stream into `dest` (an existing, empty directory).
pub fn unpack<R: Read + Send + 'static>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let trip = Trip::default();
    unpack_guarded(input, dest, opts, &trip).map_err(|e| match trip.get() {
        Some(Stop::Expansion { out, raw, limit }) => UnpackError::Expansion { out, raw, limit },
        Some(Stop::Cancelled(r)) => UnpackError::Cancelled(r),
        None => match opts.cancel.reason() {
            Some(r) => UnpackError::Cancelled(r),
            None => e,
        },
    })
}

fn unpack_guarded<R: Read + Send + 'static>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
    trip: &Trip,
) -> Result<UnpackStats, UnpackError> {
    let raw = Arc::new(AtomicU64::new(0));
    let input = Counted::new(input, raw.clone(), opts.cancel.clone(), trip.clone());
    let format::Detected {
        compression,
        reader,
        parallel,
    } = format::detect_layout(input)?;
    let ratio = if compression == Compression::None {
        0
    } else {
        opts.max_ratio
    };
    let reader = Expanding::new(reader, raw, ratio, opts.cancel.clone(), trip.clone());
    // One decoder runs on a thread of its own, so inflating never waits for file writes;
    // the parallel layouts are decoded on threads of their own already.
    let reader: Box<dyn Read + Send> = match parallel {
        true => Box::new(reader),
        false => Box::new(Prefetch::spawn(Box::new(reader)).map_err(UnpackError::Read)?),
    };
    let mut archive = Archive::new(reader);
    let mut unpacker = Unpacker {
        tree: TreeWriter::open(dest).map_err(write_err(dest))?,
        opts,
        buf: vec![0; 1 << 18],
        charged: 0,
        stats: UnpackStats {
            compression,
            entries: 0,
            bytes: 0,
            skipped_devices: 0,
            root_mode: None,
        },
    };
    while let Some(entry) = archive.next_entry()? {
        if let Some(r) = opts.cancel.reason() {
            return Err(UnpackError::Cancelled(r));
        }
        unpacker.entry(&entry, &mut archive)?;
    }
    unpacker.finish()
}

struct Unpacker<'a> {
    tree: TreeWriter,
    opts: &'a UnpackOptions,
    buf: Vec<u8>,
    /// What the entries so far count against `max_bytes` ([`disk_charge`]).
    charged: u64,
    stats: UnpackStats,
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The entry's path as the archive gives it (before any check).
fn raw_path(entry: &Entry) -> &Path {
    Path::new(OsStr::from_bytes(&entry.path))
}

/// The entry is refused for `problem`; the error names it.
fn refused(entry: &Entry, problem: EntryProblem) -> UnpackError {
    UnpackError::Entry {
        entry: shown(raw_path(entry)),
        problem,
    }
}

/// A [`TreeWriter`] error for this entry: a refusal names the entry.
fn tree_err(entry: &Entry, e: TreeError) -> UnpackError {
    match e {
        TreeError::Refused(problem) => refused(entry, problem),
        TreeError::Io { path, source } => UnpackError::Write { path, source },
    }
}

impl Unpacker<'_> {
    /// Checks one entry (limits, owner, path) and writes it.
    fn entry<R: Read>(
        &mut self,
        entry: &Entry,
        archive: &mut Archive<R>,
    ) -> Result<(), UnpackError> {
        self.count(entry)?;
        let attrs = self.attrs(entry)?;
        let rel = entry_path::sanitize(raw_path(entry)).map_err(|e| refused(entry, e.into()))?;
        let Some(rel) = rel else {
            // The archive's own root: only its attributes matter.
            if entry.kind == Kind::Dir {
                self.tree.root_attrs(attrs);
            }
            return Ok(());
        };
        let tree = |e| tree_err(entry, e);
        match entry.kind {
            Kind::Dir => self.tree.create_dir(&rel, attrs).map_err(tree)?,
            Kind::File => self.file(entry, archive, &rel, attrs)?,
            Kind::Symlink => {
                let target = Path::new(OsStr::from_bytes(&entry.link));
                self.tree.symlink(&rel, target, attrs.owner).map_err(tree)?;
            }
            Kind::HardLink => self.hardlink(entry, &rel)?,
            Kind::Char | Kind::Block | Kind::Fifo => self.special(entry, &rel, attrs)?,
        }
        Ok(())
    }

    /// Counts the entry and its bytes against the limits.
    fn count(&mut self, entry: &Entry) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > self.opts.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        // Extension headers count too; a sparse file counts at its real size.
        let size = entry.size.saturating_add(entry.ext_bytes);
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        self.charged = self.charged.saturating_add(disk_charge(size));
        if self.charged > self.opts.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.opts.max_bytes,
            });
        }
        Ok(())
    }

    /// The mode (setuid/setgid stripped unless `same_owner`), owner and mtime to apply.
    fn attrs(&self, entry: &Entry) -> Result<Attrs, UnpackError> {
        let mut mode = entry.mode & 0o7777;
        if !self.opts.same_owner {
            mode &= !0o6000;
        }
        let owner = match (self.opts.same_owner, self.opts.id_shift) {
            (false, None) => None,
            (false, Some(r)) => Some((r.base(), r.base())),
            (true, shift) => {
                let (Ok(uid), Ok(gid)) = (u32::try_from(entry.uid), u32::try_from(entry.gid))
                else {
                    return Err(refused(entry, EntryProblem::Owner(entry.uid, entry.gid)));
                };
                match shift {
                    None => Some((uid, gid)),
                    Some(r) => match (r.to_host(uid), r.to_host(gid)) {
                        (Some(u), Some(g)) => Some((u, g)),
                        _ => {
                            let (u, g) = (entry.uid, entry.gid);
                            return Err(refused(entry, EntryProblem::OwnerOutsideRange(u, g)));
                        }
                    },
                }
            }
        };
        let mtime = if entry.mtime >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(entry.mtime.unsigned_abs()))
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(entry.mtime.unsigned_abs()))
        };
        Ok(Attrs { mode, owner, mtime })
    }

    /// A regular file: its data (sparse or not), then its attributes.
    fn file<R: Read>(
        &mut self,
        entry: &Entry,
        archive: &mut Archive<R>,
        rel: &Path,
        attrs: Attrs,
    ) -> Result<(), UnpackError> {
        let mut file = self
            .tree
            .create_file(rel, attrs.mode)
            .map_err(|e| tree_err(entry, e))?;
        let written = match &entry.sparse {
            Some(map) => write_sparse(&file, archive.data(), map, entry.size, &mut self.buf),
            None => copy(&mut archive.data(), &mut file, &mut self.buf).map(drop),
        };
        written.map_err(|e| match e {
            CopyError::Read(e) => UnpackError::Read(e),
            CopyError::Write(source) => UnpackError::Write {
                path: rel.to_path_buf(),
                source,
            },
        })?;
        self.tree
            .finish_file(rel, &file, attrs)
            .map_err(|e| tree_err(entry, e))
    }

    /// A hardlink: its target must be inside the root (and, see [`TreeWriter::hardlink`],
    /// exist earlier in the archive, not through a symlink).
    fn hardlink(&mut self, entry: &Entry, rel: &Path) -> Result<(), UnpackError> {
        let target = Path::new(OsStr::from_bytes(&entry.link));
        let shown_target = shown(target);
        let target_rel = match entry_path::sanitize(target) {
            Ok(Some(t)) => t,
            Ok(None) | Err(EntryPathError::ParentDir) => {
                return Err(refused(entry, EntryProblem::HardlinkOutside(shown_target)));
            }
            Err(e) => return Err(refused(entry, e.into())),
        };
        self.tree
            .hardlink(rel, &target_rel)
            .map_err(|e| tree_err(entry, e))
    }

    /// A device node or FIFO: created with `allow_devices`; else skipped under `dev/`
    /// and refused anywhere else.
    fn special(&mut self, entry: &Entry, rel: &Path, attrs: Attrs) -> Result<(), UnpackError> {
        let (what, special) = match entry.kind {
            Kind::Char => ("character device", Special::Char),
            Kind::Block => ("block device", Special::Block),
            _ => ("FIFO", Special::Fifo),
        };
        if !self.opts.allow_devices {
            // `run` mounts its own /dev over the release's: nodes there are never used.
            if rel.starts_with("dev") && rel.components().count() > 1 {
                self.tree
                    .check_parent(rel)
                    .map_err(|e| tree_err(entry, e))?;
                tracing::debug!(entry = %entry.shown(), "device node under /dev skipped");
                self.stats.skipped_devices += 1;
                return Ok(());
            }
            return Err(refused(entry, EntryProblem::Device(what)));
        }
        self.tree
            .mknod(rel, special, (entry.dev_major, entry.dev_minor), attrs)
            .map_err(|e| tree_err(entry, e))
    }

    fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        self.stats.root_mode = self.tree.finish().map_err(|e| match e {
            TreeError::Refused(problem) => UnpackError::Entry {
                entry: ".".into(),
                problem,
            },
            TreeError::Io { path, source } => UnpackError::Write { path, source },
        })?;
        Ok(self.stats)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_counts_at_least_one_block_and_contents_in_whole_blocks() {
        assert_eq!(
            disk_charge(0),
            BLOCK,
            "a directory, a symlink, an empty file"
        );
        assert_eq!(disk_charge(1), BLOCK);
        assert_eq!(disk_charge(BLOCK), BLOCK);
        assert_eq!(disk_charge(BLOCK + 1), 2 * BLOCK);
        assert_eq!(disk_charge(u64::MAX), u64::MAX, "saturates");
    }
}
