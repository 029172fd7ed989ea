//! A store whose jails run in a user namespace: its range, and releases owned by it.
//!
//! # The range
//! Each store that turns user namespaces on holds one [`IdRange`] (65536 host ids at a base,
//! see [`crate::id_range`]): its jails' root is host `base`, their id N host `base + N`. The
//! base is either given (`[apps.NAME] userns_base`, `deploy --userns-base`) or picked from a
//! band no host user or other tool uses ([`super::id_registry`]), and then:
//! - recorded in the store, in `.droot-fleet/userns.json` (rsync mode: the state directory
//!   beside the root), out of every jail's sight. It is what the store *is*: every later
//!   deploy unpacks shifted into it, with or without the flag, and `run --userns` on a release
//!   of the store maps it without being told the base;
//! - registered host-wide, so no other store gets it ([`super::id_registry`]);
//! - never changed silently: asking for another base, or for no user namespace, on a store
//!   that records one is refused (its files belong to the recorded range).
//!
//! # Shifted owners, not an idmapped mount
//! A release is unpacked with its owners already in the range (the jail's root owns what
//! host root owned in the image), rather than unpacked as host root and shown shifted through
//! an idmapped mount (`mount_setattr(MOUNT_ATTR_IDMAP)`). The on-disk owner is what a host
//! user meets through `DIR/current`: with an idmapped mount, a file the jail creates or makes
//! setuid would be host root's on disk, and the attack this guards against would work again
//! as soon as the store were reachable. Shifted, it is `base`'s: nothing. Shifting also needs
//! no kernel or filesystem support beyond chown.
//!
//! # Releases from before
//! A release unpacked before the store turned user namespaces on is owned by host ids below
//! 65536. [`shift_releases`] moves it into the range in place ([`super::shift`]), once: a
//! release whose top directory is owned by an id of the range is done (the top is shifted
//! last). The agent does it before starting an app's jails; `deploy --userns` when it turns
//! the store over. A jail's root can only give ids of its own range, so no jail can make its
//! release look done, or undone.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::id_registry::{HostIds, REGISTRY_DIR, Registry};
use super::layout::{Layout, RootLock, in_place_state_dir};
use crate::id_range::IdRange;

/// The record's file name, in the store's state directory.
pub const RECORD: &str = "userns.json";

/// Why a store's user namespace range cannot be set up. Nothing was shifted unless said.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "the store {root} runs its jails in user namespace range {recorded} (recorded in \
         {record}); its files belong to it. Ask for that base (or give none to use it), or \
         remove the store to start over"
    )]
    Recorded {
        root: PathBuf,
        recorded: String,
        record: PathBuf,
    },
    #[error(
        "the store {root} runs its jails in user namespace range {recorded} (recorded in \
         {record}), so its jails cannot run without one: its files belong to that range. \
         Turn user namespaces on for it, or remove the store to start over"
    )]
    Required {
        root: PathBuf,
        recorded: String,
        record: PathBuf,
    },
    #[error(
        "user namespace range {range} is already held by the store recorded in {holder} \
         (registry entry {entry}); pick another base"
    )]
    Taken {
        range: String,
        holder: PathBuf,
        entry: PathBuf,
    },
    #[error("user namespace range {range} holds ids the host uses: {what}; pick another base")]
    HostIds { range: String, what: String },
    #[error("no free user namespace range is left in the automatic band; give a base")]
    Exhausted,
    #[error(
        "the user namespace record {path} is unreadable ({reason}); remove it only with the store"
    )]
    BadRecord { path: PathBuf, reason: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Record {
    base: u32,
}

/// The record file of a store.
pub fn record_path(layout: &Layout) -> PathBuf {
    layout.tool_dir().join(RECORD)
}

/// Reads a record file; `None` when there is none.
pub fn read_record(path: &Path) -> Result<Option<IdRange>, UsernsError> {
    let bad = |reason: String| UsernsError::BadRecord {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let rec: Record = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    IdRange::new(u64::from(rec.base))
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Writes a record file atomically (0600).
pub fn write_record(path: &Path, range: IdRange) -> Result<(), UsernsError> {
    let bytes = serde_json::to_vec(&Record { base: range.base() }).expect("serializable");
    crate::atomic_file::write_atomic(path, &bytes, 0o600).map_err(|source| UsernsError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// The range a store records, if any.
pub fn recorded(layout: &Layout) -> Result<Option<IdRange>, UsernsError> {
    read_record(&record_path(layout))
}

/// The range recorded by the store a jail root belongs to: `DIR/releases/V` (or
/// `DIR/current`) of a symlink-mode store, or the root of an rsync-mode one.
pub fn recorded_for_root(root: &Path) -> Result<Option<IdRange>, UsernsError> {
    let canonical = root.canonicalize().map_err(|source| UsernsError::Io {
        what: "cannot resolve",
        path: root.to_path_buf(),
        source,
    })?;
    let releases = canonical.parent();
    if let Some(store) = releases
        .filter(|r| r.file_name().is_some_and(|n| n == "releases"))
        .and_then(Path::parent)
    {
        let layout = Layout::new(store);
        if layout.tool_dir().is_dir() {
            return recorded(&layout);
        }
    }
    match in_place_state_dir(&canonical) {
        Some(state) if state.is_dir() => read_record(&state.join(RECORD)),
        _ => Ok(None),
    }
}

/// Turns the store's user namespace on: `requested` (or, with `None`, the recorded range, or
/// a free one) is claimed host-wide and recorded in the store. Returns the range. Shifts
/// nothing: see [`shift_releases`].
pub fn enable(layout: &Layout, requested: Option<IdRange>) -> Result<IdRange, UsernsError> {
    layout
        .ensure(!layout.is_in_place())
        .map_err(|source| UsernsError::Io {
            what: "cannot create",
            path: layout.root.clone(),
            source,
        })?;
    let _lock = lock(layout)?;
    // The registry names the record by its canonical path, whatever name reached the store.
    let tool_dir = layout.tool_dir();
    let record = tool_dir
        .canonicalize()
        .map_err(io_err("cannot resolve", &tool_dir))?
        .join(RECORD);
    let current = read_record(&record)?;
    if let (Some(have), Some(want)) = (current, requested)
        && have != want
    {
        return Err(UsernsError::Recorded {
            root: layout.root.clone(),
            recorded: have.to_string(),
            record,
        });
    }
    let registry = Registry::lock(Path::new(REGISTRY_DIR))?;
    let host = HostIds::read();
    let range = match current.or(requested) {
        Some(r) => {
            registry.claim(r, &record, &host)?;
            r
        }
        None => registry.allocate(&record, &host)?,
    };
    if current.is_none() {
        write_record(&record, range)?;
        tracing::info!(root = %layout.root.display(), range = %range, "store runs its jails in a user namespace");
    }
    Ok(range)
}

/// Refuses a store that records a range, for jails that would run without one.
pub fn refuse_if_recorded(layout: &Layout) -> Result<(), UsernsError> {
    let record = record_path(layout);
    match read_record(&record)? {
        None => Ok(()),
        Some(r) => Err(UsernsError::Required {
            root: layout.root.clone(),
            recorded: r.to_string(),
            record,
        }),
    }
}

/// Shifts into `range` every release of the store not already in it (rsync mode: the root);
/// returns their names. No jail may run on them meanwhile (a jail without a user namespace
/// would lose its files; one with it does not start on a release outside its range).
pub fn shift_releases(layout: &Layout, range: IdRange) -> Result<Vec<String>, UsernsError> {
    let _lock = lock(layout)?;
    let (dir, names) = if layout.is_in_place() {
        let parent = layout.root.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = layout.root.file_name().unwrap_or_default().to_os_string();
        (parent, vec![name])
    } else {
        let dir = layout.releases();
        let names = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("cannot read", &dir)(e)),
        };
        (dir, names)
    };
    let dir_fd = crate::beneath::open_named_dir(&dir).map_err(io_err("cannot open", &dir))?;
    let mut shifted = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let st = crate::beneath::lstat_at(dir_fd.as_fd(), Path::new(&name))
            .map_err(|e| io_err("cannot stat", &path)(e.into()))?;
        if crate::beneath::kind(&st) != nix::sys::stat::SFlag::S_IFDIR || range.contains(st.st_uid)
        {
            continue;
        }
        let n = super::shift::shift_tree(dir_fd.as_fd(), Path::new(&name), range)
            .map_err(|e| io_err("cannot shift the owners of", &path)(e.into()))?;
        tracing::info!(release = %path.display(), range = %range, entries = n, "release shifted into the user namespace range");
        shifted.push(name.to_string_lossy().into_owned());
    }
    Ok(shifted)
}

/// For `rm` of the (canonical) store root `root`: its record and range, read before the
/// removal, to give back with [`forget`] after it.
pub fn claim_of(root: &Path) -> Option<(PathBuf, IdRange)> {
    let record = Layout::new(root).tool_dir().join(RECORD);
    let range = read_record(&record).ok().flatten()?;
    Some((record, range))
}

/// After `rm` of a store: gives its range back to the registry.
pub fn forget(record: &Path, range: IdRange) -> Result<(), UsernsError> {
    Registry::lock(Path::new(REGISTRY_DIR))?.forget(range, record)
}

fn lock(layout: &Layout) -> Result<RootLock, UsernsError> {
    RootLock::acquire(layout).map_err(io_err("cannot lock", &layout.root))
}

pub(crate) fn io_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> UsernsError + use<> {
    let path = path.to_path_buf();
    move |source| UsernsError::Io { what, path, source }
}
