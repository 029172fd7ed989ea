//! Symlink-mode operations: deploy, rollback, list, prune. All of them hold the root lock.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use super::history::{History, Verdict};
use super::layout::{self, Layout, RootLock, fsync_dir, validate_version};
use super::switch::{current_version, switch_current};
use super::{ReleaseError, VerifyFailed};
use crate::artifact::{self, UnpackOptions, UnpackStats};
use crate::teardown;

/// The outcome of a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub version: String,
    pub previous: Option<String>,
    pub stats: UnpackStats,
    pub pruned: Vec<String>,
}

/// One row of `--list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseInfo {
    pub version: String,
    pub deployed_at: u64,
    pub current: bool,
}

/// Names of the directories in `releases/` (symlinks and files there are not releases).
fn on_disk(layout: &Layout) -> Result<Vec<String>, ReleaseError> {
    let dir = layout.releases();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReleaseError::io("cannot read", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(ReleaseError::io("cannot read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if validate_version(&name).is_ok() {
            out.push(name);
        }
    }
    Ok(out)
}

fn load_history(layout: &Layout) -> Result<History, ReleaseError> {
    let h = History::load(&layout.state_file())
        .map_err(ReleaseError::io("cannot read", layout.state_file()))?;
    Ok(h.reconcile(&on_disk(layout)?))
}

fn save_history(layout: &Layout, h: &History) -> Result<(), ReleaseError> {
    h.save(&layout.state_file())
        .map_err(ReleaseError::io("cannot write", layout.state_file()))
}

fn current(layout: &Layout) -> Result<Option<String>, ReleaseError> {
    current_version(layout).map_err(ReleaseError::io("cannot read", layout.current()))
}

/// Takes the root lock, then makes sure the store is out of other users' reach and mounted
/// `nosuid,nodev` ([`super::protect`]).
fn lock_and_protect(layout: &Layout) -> Result<RootLock, ReleaseError> {
    let lock = RootLock::acquire(layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    super::protect::protect(layout)?;
    Ok(lock)
}

/// Removes leftovers of deploys that died mid-unpack. Only called under the lock.
fn clear_staging(layout: &Layout) -> Result<(), ReleaseError> {
    let dir = layout.staging_dir();
    for e in std::fs::read_dir(&dir).map_err(ReleaseError::io("cannot read", &dir))? {
        let path = e.map_err(ReleaseError::io("cannot read", &dir))?.path();
        tracing::info!(path = %path.display(), "removing leftover staging directory");
        remove_entry(&path)?;
    }
    Ok(())
}

/// Removes a release or staging entry: a directory tree (refusing mountpoints below), or
/// just the link itself when it is a symlink.
fn remove_entry(path: &std::path::Path) -> Result<(), ReleaseError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(teardown::remove_tree(path)?),
        Ok(_) => std::fs::remove_file(path).map_err(ReleaseError::io("cannot remove", path)),
        Err(_) => Ok(()),
    }
}

/// Unpacks `input` as a new release and switches `current` to it, then prunes to `keep`.
pub fn deploy<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    version: Option<&str>,
    keep: usize,
    opts: &UnpackOptions,
) -> Result<Deployed, ReleaseError> {
    deploy_verified(layout, input, version, keep, opts, |_| Ok(()))
}

/// [`deploy`], calling `verify` after the unpack and before the release is published: if
/// it refuses (e.g. a digest mismatch), the staging directory is removed and `current` is
/// untouched. [`stage`], [`switch_to`] and [`prune`] under one lock.
pub fn deploy_verified<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    version: Option<&str>,
    keep: usize,
    opts: &UnpackOptions,
    verify: impl FnOnce(&UnpackStats) -> Result<(), VerifyFailed>,
) -> Result<Deployed, ReleaseError> {
    let (_lock, opts) = lock_for_staging(layout, version, opts)?;
    let Staged { version, stats } = stage_locked(layout, input, version, &opts, verify)?;
    let previous = switch_locked(layout, &version)?;
    let pruned = prune_locked(layout, keep)?;
    Ok(Deployed {
        version,
        previous,
        stats,
        pruned,
    })
}

/// A release unpacked and published into `releases/`, not yet current.
#[derive(Debug, Clone)]
pub struct Staged {
    pub version: String,
    pub stats: UnpackStats,
}

/// Unpacks `input` as the new release `version` (or one named by the time), calling
/// `verify` before it is published, and records it in the history; `current` is untouched.
/// A refused `verify` or a failed unpack leaves nothing behind.
pub fn stage<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    version: Option<&str>,
    opts: &UnpackOptions,
    verify: impl FnOnce(&UnpackStats) -> Result<(), VerifyFailed>,
) -> Result<Staged, ReleaseError> {
    let (_lock, opts) = lock_for_staging(layout, version, opts)?;
    stage_locked(layout, input, version, &opts, verify)
}

/// Checks the name, creates the store and locks it; the unpack options the store needs.
fn lock_for_staging(
    layout: &Layout,
    version: Option<&str>,
    opts: &UnpackOptions,
) -> Result<(RootLock, UnpackOptions), ReleaseError> {
    if let Some(v) = version {
        validate_version(v)?;
    }
    layout
        .ensure(true)
        .map_err(ReleaseError::io("cannot create", &layout.root))?;
    let lock = lock_and_protect(layout)?;
    let opts = super::store_unpack_options(layout, opts)?;
    Ok((lock, opts))
}

fn stage_locked<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    version: Option<&str>,
    opts: &UnpackOptions,
    verify: impl FnOnce(&UnpackStats) -> Result<(), VerifyFailed>,
) -> Result<Staged, ReleaseError> {
    clear_staging(layout)?;
    let now = crate::wall::secs();
    let version = release_name(layout, version, now)?;
    let stats = stage_and_publish(layout, input, &version, opts, verify)?;
    let mut history = load_history(layout)?;
    history.push(&version, now);
    save_history(layout, &history)?;
    Ok(Staged { version, stats })
}

/// Switches `current` to the release `version` (a forward switch: what was current goes
/// on the rollback stack). Returns the release that was current before; switching to the
/// current release changes nothing.
pub fn switch_to(layout: &Layout, version: &str) -> Result<Option<String>, ReleaseError> {
    validate_version(version)?;
    layout
        .ensure(false)
        .map_err(ReleaseError::io("cannot create", &layout.root))?;
    let _lock = lock_and_protect(layout)?;
    switch_locked(layout, version)
}

fn switch_locked(layout: &Layout, version: &str) -> Result<Option<String>, ReleaseError> {
    let previous = current(layout)?;
    if previous.as_deref() == Some(version) {
        return Ok(previous);
    }
    let mut history = load_history(layout)?;
    if !history.contains(version) {
        return Err(ReleaseError::NoSuchRelease(version.to_string()));
    }
    history.record_switch(previous.as_deref());
    save_history(layout, &history)?;
    switch_current(layout, version).map_err(ReleaseError::io("cannot switch", layout.current()))?;
    tracing::info!(release = %version, previous = ?previous, "current switched");
    Ok(previous)
}

/// The new release's name: `version`, or the UTC time of `now` (with a `.N` suffix when
/// taken). Refused if a release of that name exists.
fn release_name(layout: &Layout, version: Option<&str>, now: u64) -> Result<String, ReleaseError> {
    let version = match version {
        Some(v) => v.to_string(),
        None => {
            // Two deploys in one second get distinct names.
            let base = layout::timestamp_version(now);
            (0..)
                .map(|i| {
                    if i == 0 {
                        base.clone()
                    } else {
                        format!("{base}.{i}")
                    }
                })
                .find(|v| !layout.release(v).exists())
                .expect("unbounded")
        }
    };
    if std::fs::symlink_metadata(layout.release(&version)).is_ok() {
        return Err(ReleaseError::Exists(version));
    }
    Ok(version)
}

/// Unpacks into a private (0700) staging dir, runs `verify`, then renames it into
/// `releases/`. On any failure the staging dir is removed and nothing is published.
fn stage_and_publish<R: Read + Send + 'static>(
    layout: &Layout,
    input: R,
    version: &str,
    opts: &UnpackOptions,
    verify: impl FnOnce(&UnpackStats) -> Result<(), VerifyFailed>,
) -> Result<UnpackStats, ReleaseError> {
    let staging = layout.staging_dir().join(version);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .and_then(|()| std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700)))
        .map_err(ReleaseError::io("cannot create", &staging))?;
    let stats = match artifact::unpack(input, &staging, opts) {
        Ok(stats) => stats,
        Err(e) => {
            remove_entry(&staging)?;
            return Err(ReleaseError::Unpack(e));
        }
    };
    tracing::debug!(release = %version, entries = stats.entries, bytes = stats.bytes, "unpacked");
    if let Err(e) = verify(&stats) {
        remove_entry(&staging)?;
        return Err(ReleaseError::Verify(e));
    }
    let owner = opts.id_shift.map(|r| (r.base(), r.base()));
    if let Err(e) = publish(layout, &staging, version, stats.root_mode, owner) {
        remove_entry(&staging)?;
        return Err(e);
    }
    Ok(stats)
}

/// Gives the staged release its final owner (the jail's root, in a user namespace store)
/// and mode, and renames it into `releases/`, durably.
fn publish(
    layout: &Layout,
    staging: &std::path::Path,
    version: &str,
    root_mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), ReleaseError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(staging, Some(uid), Some(gid))
            .map_err(ReleaseError::io("cannot chown", staging))?;
    }
    // The staging dir was 0700 so nobody could see a half-written tree; the release
    // gets the archive root entry's mode, or 0755 when it had none.
    let mode = root_mode.unwrap_or(0o755);
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(mode))
        .map_err(ReleaseError::io("cannot chmod", staging))?;
    std::fs::rename(staging, layout.release(version))
        .map_err(ReleaseError::io("cannot publish", layout.release(version)))?;
    fsync_dir(&layout.releases()).map_err(ReleaseError::io("cannot fsync", layout.releases()))
}

/// Switches `current` back to `target`, or to the release deployed before the current one.
/// Returns `(from, to)`.
pub fn rollback(
    layout: &Layout,
    target: Option<&str>,
) -> Result<(Option<String>, String), ReleaseError> {
    if let Some(t) = target {
        validate_version(t)?;
    }
    layout
        .ensure(false)
        .map_err(ReleaseError::io("cannot create", &layout.root))?;
    let _lock = lock_and_protect(layout)?;
    let mut history = load_history(layout)?;
    let from = current(layout)?;
    let to = match target {
        Some(t) if history.contains(t) => t.to_string(),
        Some(t) => return Err(ReleaseError::NoSuchRelease(t.to_string())),
        None => {
            let cur = from
                .as_deref()
                .ok_or_else(|| ReleaseError::NoPrevious("no release is current".into()))?;
            history
                .previous(cur)
                .ok_or_else(|| {
                    ReleaseError::NoPrevious(format!("{cur} is the oldest release kept"))
                })?
                .to_string()
        }
    };
    if target.is_some() {
        history.record_switch(from.as_deref());
    } else {
        history.pop_until(&to);
    }
    save_history(layout, &history)?;
    switch_current(layout, &to).map_err(ReleaseError::io("cannot switch", layout.current()))?;
    tracing::info!(from = ?from, to = %to, "rolled back");
    Ok((from, to))
}

/// Removes `current` when it names `version`; returns whether it did. For the deploy
/// pipeline only, when the one release there is never passed its health check: a root
/// with no `current` starts nothing, where a `current` would be started by the next agent.
pub fn clear_current(layout: &Layout, version: &str) -> Result<bool, ReleaseError> {
    validate_version(version)?;
    if !layout.root.exists() {
        return Ok(false);
    }
    let _lock = RootLock::acquire(layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    if current(layout)?.as_deref() != Some(version) {
        return Ok(false);
    }
    std::fs::remove_file(layout.current())
        .map_err(ReleaseError::io("cannot remove", layout.current()))?;
    fsync_dir(&layout.root).map_err(ReleaseError::io("cannot sync", &layout.root))?;
    tracing::info!(release = %version, "current removed: no release passed its health check");
    Ok(true)
}

/// Releases in deploy order, oldest first, marking the current one.
pub fn list(layout: &Layout) -> Result<Vec<ReleaseInfo>, ReleaseError> {
    let history = load_history(layout)?;
    let cur = current(layout)?;
    Ok(history
        .releases
        .into_iter()
        .map(|r| ReleaseInfo {
            current: cur.as_deref() == Some(r.version.as_str()),
            version: r.version,
            deployed_at: r.deployed_at,
        })
        .collect())
}

/// Records how `version`'s activation went (see [`History::judge`]); a version that is not
/// recorded is left alone. Returns whether it was recorded.
pub fn judge(layout: &Layout, version: &str, verdict: Verdict) -> Result<bool, ReleaseError> {
    validate_version(version)?;
    if !layout.tool_dir().exists() {
        return Ok(false);
    }
    let _lock = RootLock::acquire(layout).map_err(ReleaseError::io("cannot lock", &layout.root))?;
    let mut history = load_history(layout)?;
    if !history.judge(version, verdict) {
        return Ok(false);
    }
    save_history(layout, &history)?;
    tracing::debug!(release = %version, ?verdict, "release judged");
    Ok(true)
}

/// Prunes old releases down to `keep`; returns the versions removed.
pub fn prune(layout: &Layout, keep: usize) -> Result<Vec<String>, ReleaseError> {
    layout
        .ensure(false)
        .map_err(ReleaseError::io("cannot create", &layout.root))?;
    let _lock = lock_and_protect(layout)?;
    prune_locked(layout, keep)
}

fn prune_locked(layout: &Layout, keep: usize) -> Result<Vec<String>, ReleaseError> {
    let mut history = load_history(layout)?;
    let cur = current(layout)?;
    let mut removed = Vec::new();
    for v in history.prunable(cur.as_deref(), keep) {
        match remove_entry(&layout.release(&v)) {
            Ok(()) => {
                history.remove(&v);
                removed.push(v);
            }
            // A release still mounted by a running jail is kept, not an error for the deploy.
            Err(ReleaseError::Teardown(e)) => {
                tracing::warn!(release = %v, error = %e, "not pruned");
            }
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        save_history(layout, &history)?;
    }
    Ok(removed)
}

#[cfg(test)]
#[path = "symlink_mode_tests.rs"]
mod tests;
