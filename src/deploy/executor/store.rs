//! The executor's blocking work on an app's release store: whether a version is on disk,
//! switching `current` (forward, or back with the rollback stack popped), and the view of
//! `current`, `previous` and the releases that `status` shows. Callers run these on
//! `spawn_blocking`. Errors come back as short strings: they end up in outcomes that are
//! gossiped, so they name the cause and stay within [`MAX_ERROR`] bytes.

use std::error::Error;

use crate::deploy::fetch::DeployError;
use crate::release::history::History;
use crate::release::layout::validate_version;
use crate::release::switch::current_version;
use crate::release::{self, Layout, ReleaseError};

/// Longest error text an outcome carries.
pub const MAX_ERROR: usize = 400;

/// `current`, what a rollback would go back to, and the releases on disk (deploy order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub current: Option<String>,
    pub previous: Option<String>,
    pub releases: Vec<String>,
}

/// Reads the store's view. A root with nothing deployed yet is an empty view.
pub fn view(layout: &Layout) -> Result<View, String> {
    if !layout.root.exists() {
        return Ok(View::default());
    }
    let current = current_version(layout).map_err(|e| short(&e))?;
    let releases: Vec<String> = release::list(layout)
        .map_err(|e| short(&e))?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let history = History::load(&layout.state_file())
        .map_err(|e| short(&e))?
        .reconcile(&releases);
    let previous = current
        .as_deref()
        .and_then(|c| history.previous(c))
        .map(str::to_string);
    Ok(View {
        current,
        previous,
        releases,
    })
}

/// Whether `releases/<version>` is a directory (not followed if it is a symlink).
pub fn is_present(layout: &Layout, version: &str) -> bool {
    validate_version(version).is_ok()
        && std::fs::symlink_metadata(layout.release(version)).is_ok_and(|m| m.is_dir())
}

/// Points `current` at `version`. When `version` is what a rollback would go back to, the
/// switch is a rollback (the undo stack is popped, so the release switched away from does
/// not become "previous"); otherwise it is recorded as a switch. Already current: nothing.
pub fn switch(layout: &Layout, version: &str) -> Result<(), String> {
    validate_version(version).map_err(|e| short(&e))?;
    let v = view(layout)?;
    if v.current.as_deref() == Some(version) {
        return Ok(());
    }
    if v.previous.as_deref() == Some(version) {
        match release::rollback(layout, None) {
            Ok((_, to)) if to == version => return Ok(()),
            Ok((_, to)) => {
                tracing::warn!(%to, want = %version, "rollback went elsewhere; switching explicitly")
            }
            Err(e) => return Err(short(&e)),
        }
    }
    release::switch_to(layout, version)
        .map(drop)
        .map_err(|e| short(&e))
}

/// An activation under way, recorded in the store's state dir until its outcome: if the
/// agent dies meanwhile, the next executor knows `current` was not verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// The version being activated.
    pub version: String,
    /// What was current before it.
    pub from: Option<String>,
}

fn digests_path(layout: &Layout) -> std::path::PathBuf {
    layout.tool_dir().join("digests.json")
}

/// The sha256 of the artifact each release was unpacked from (hex), as recorded at fetch.
fn digests(layout: &Layout) -> std::collections::BTreeMap<String, String> {
    std::fs::read(digests_path(layout))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records that release `version` came from an artifact with this sha256 (entries of
/// releases no longer on disk are dropped).
pub fn record_digest(layout: &Layout, version: &str, sha256: &[u8; 32]) -> Result<(), String> {
    let mut map = digests(layout);
    map.retain(|v, _| is_present(layout, v));
    map.insert(version.to_owned(), hex::encode(sha256));
    let bytes = serde_json::to_vec(&map).map_err(|e| short(&e))?;
    crate::atomic_file::write_atomic(&digests_path(layout), &bytes, 0o600).map_err(|e| {
        format!(
            "cannot write {}: {}",
            digests_path(layout).display(),
            short(&e)
        )
    })
}

/// Whether release `version` may stand for an artifact with sha256 `want`: `Err` when
/// it is recorded as unpacked from other bytes. A release with no record (deployed by
/// hand) is accepted with a warning.
pub fn check_present_digest(layout: &Layout, version: &str, want: &[u8; 32]) -> Result<(), String> {
    match digests(layout).get(version) {
        Some(have) if *have == hex::encode(want) => Ok(()),
        Some(have) => Err(format!(
            "release {version} on disk was unpacked from an artifact with sha256 {have}, not \
             the {} this deploy asks for; publish these bytes under a new version (or remove \
             the release) and deploy again",
            hex::encode(want)
        )),
        None => {
            tracing::warn!(%version, "release on disk has no recorded artifact digest (deployed by hand?); switching to it without checking --sha256");
            Ok(())
        }
    }
}

fn marker_path(layout: &Layout) -> std::path::PathBuf {
    layout.tool_dir().join("activating.json")
}

/// Records that `m` is under way (creating the root's dirs if needed).
pub fn mark(layout: &Layout, m: &Marker) -> Result<(), String> {
    layout.ensure(true).map_err(|e| short(&e))?;
    let bytes = serde_json::to_vec(m).map_err(|e| short(&e))?;
    crate::atomic_file::write_atomic(&marker_path(layout), &bytes, 0o600).map_err(|e| {
        format!(
            "cannot write {}: {}",
            marker_path(layout).display(),
            short(&e)
        )
    })
}

/// Removes the record of an activation under way (none is fine), durably: the outcome is
/// reported only after, so a crash can never leave "done" beside a record that the next
/// start would undo.
pub fn unmark(layout: &Layout) -> Result<(), String> {
    let failed = |what: &str, e: &std::io::Error| {
        format!(
            "cannot {what} {}: {}",
            marker_path(layout).display(),
            short(e)
        )
    };
    match std::fs::remove_file(marker_path(layout)) {
        Ok(()) => crate::release::layout::fsync_dir(&layout.tool_dir())
            .map_err(|e| failed("sync the removal of", &e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed("remove", &e)),
    }
}

/// Removes `current` if it still names `version` (see [`crate::release::clear_current`]).
pub fn clear_current(layout: &Layout, version: &str) -> Result<(), String> {
    crate::release::clear_current(layout, version)
        .map(drop)
        .map_err(|e| short(&e))
}

/// The activation an earlier executor left unfinished, if any. An unreadable record is
/// logged and treated as none.
pub fn interrupted(layout: &Layout) -> Option<Marker> {
    let bytes = match std::fs::read(marker_path(layout)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %marker_path(layout).display(), error = %e, "cannot read the activation record");
            return None;
        }
    };
    match serde_json::from_slice::<Marker>(&bytes) {
        Ok(m)
            if validate_version(&m.version).is_ok()
                && m.from
                    .as_deref()
                    .is_none_or(|f| validate_version(f).is_ok()) =>
        {
            Some(m)
        }
        _ => {
            tracing::warn!(path = %marker_path(layout).display(), "ignoring a malformed activation record");
            None
        }
    }
}

/// What [`undo_interrupted`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undone {
    /// `current` is back on the release before the cut-off activation; the record is gone.
    RolledBack(Marker),
    /// There was no release before it to go back to: `current` is removed (nothing is
    /// started) and so is the record; the next deploy of that version is a full activation.
    NoPrevious(Marker),
}

/// Puts the store back where it was before an activation an earlier agent left unfinished:
/// its release never passed a health check, so it must not be what the restarted agent
/// runs (a retry of the deploy, if still wanted, activates it again in full).
pub fn undo_interrupted(layout: &Layout) -> Result<Option<Undone>, String> {
    let Some(m) = interrupted(layout) else {
        return Ok(None);
    };
    // It never passed: neither a rollback target nor a release that counts towards `keep`.
    release::judge(layout, &m.version, release::history::Verdict::Failed).map_err(|e| short(&e))?;
    match m.from.as_deref() {
        Some(from) if is_present(layout, from) => {
            switch(layout, from)?;
            unmark(layout)?;
            Ok(Some(Undone::RolledBack(m)))
        }
        _ => {
            clear_current(layout, &m.version)?;
            unmark(layout)?;
            Ok(Some(Undone::NoPrevious(m)))
        }
    }
}

/// The error of a failed fetch, cause first: the fetch error itself rather than the
/// "deploy refused" wrapper around it.
pub fn fetch_error(e: &DeployError) -> String {
    match e {
        DeployError::Fetch(f) => short(f),
        DeployError::Release(ReleaseError::Verify(v)) => short(v.as_ref()),
        DeployError::Release(r) => short(r),
    }
}

/// An error and its sources, joined with `: ` (a source already quoted by its parent is
/// not repeated), cut to [`MAX_ERROR`] bytes.
pub fn short(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    truncate(text, MAX_ERROR)
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut with `...`.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn short_joins_sources_once_and_truncates_on_a_char_boundary() {
        let e = Outer(std::io::Error::other("inner cause"));
        assert_eq!(short(&e), "outer: inner cause");
        let t = truncate("é".repeat(300), 11);
        assert!(t.len() <= 11 && t.ends_with("..."), "{t}");
        assert_eq!(truncate("abc".into(), 3), "abc");
    }

    /// A temp dir for a store at `app`: as root, the deploy mounts the store `nosuid,nodev`
    /// onto itself (`release::protect`), so it is unmounted before the dir is removed.
    struct StoreDir(tempfile::TempDir);

    impl StoreDir {
        fn new() -> Self {
            StoreDir(tempfile::tempdir().unwrap())
        }
        fn layout(&self) -> Layout {
            Layout::new(self.0.path().join("app"))
        }
    }

    impl Drop for StoreDir {
        fn drop(&mut self) {
            let app = self.0.path().join("app");
            let _ = nix::mount::umount2(&app, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_present_release_must_match_the_recorded_artifact_digest() {
        let dir = StoreDir::new();
        let layout = dir.layout();
        deploy_all(&layout, &["v1", "v2"]);
        record_digest(&layout, "v1", &[1; 32]).unwrap();
        assert!(check_present_digest(&layout, "v1", &[1; 32]).is_ok());
        let e = check_present_digest(&layout, "v1", &[2; 32]).unwrap_err();
        assert!(
            e.contains(&hex::encode([1; 32])) && e.contains("new version"),
            "{e}"
        );
        // No record (deployed by hand): accepted.
        assert!(check_present_digest(&layout, "v2", &[2; 32]).is_ok());
    }

    #[test]
    fn switch_goes_forward_and_back_keeping_previous_right() {
        let dir = StoreDir::new();
        let layout = dir.layout();
        assert_eq!(view(&layout).unwrap(), View::default());
        deploy_all(&layout, &["v1", "v2", "v3"]);
        assert!(is_present(&layout, "v1") && !is_present(&layout, "v9"));
        assert!(!is_present(&layout, "../app"));
        // v3 is current, v2 previous: going back to v2 pops, so v1 becomes previous.
        switch(&layout, "v2").unwrap();
        let v = view(&layout).unwrap();
        assert_eq!(
            (v.current.as_deref(), v.previous.as_deref()),
            (Some("v2"), Some("v1"))
        );
        assert_eq!(v.releases, ["v1", "v2", "v3"]);
        // A forward switch to v3 records v2 as previous.
        switch(&layout, "v3").unwrap();
        let v = view(&layout).unwrap();
        assert_eq!(
            (v.current.as_deref(), v.previous.as_deref()),
            (Some("v3"), Some("v2"))
        );
        switch(&layout, "v3").unwrap();
        assert!(switch(&layout, "v9").unwrap_err().contains("v9"));
        assert!(switch(&layout, "../x").is_err());
    }

    #[test]
    fn the_activation_record_round_trips_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("app"));
        assert_eq!(interrupted(&layout), None);
        unmark(&layout).unwrap();
        let m = Marker {
            version: "v3".into(),
            from: Some("v2".into()),
        };
        mark(&layout, &m).unwrap();
        assert_eq!(interrupted(&layout), Some(m));
        unmark(&layout).unwrap();
        assert_eq!(interrupted(&layout), None);
        for bad in [&b"{"[..], br#"{"version":"../x","from":null}"#] {
            std::fs::write(marker_path(&layout), bad).unwrap();
            assert_eq!(interrupted(&layout), None);
        }
    }

    /// Deploys each version (a tar from [`release::marker_tar`]) in turn.
    fn deploy_all(layout: &Layout, versions: &[&str]) {
        for v in versions {
            let tar = release::marker_tar(v);
            release::deploy(layout, tar, Some(v), 5, &Default::default()).unwrap();
        }
    }
}
