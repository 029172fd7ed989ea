//! Deploy order of releases: which one is "previous", and which ones pruning may remove.
//!
//! Release names are free-form (`v9` and `v10` do not sort), so order comes from a small
//! JSON file appended to on each deploy. "Previous" means what was live before, not the
//! next older name: after a rollback from v11 to v9 and a deploy of v12, rolling back
//! returns to v9 (Capistrano would pick v11, the release just rolled away from). The file
//! keeps a stack of releases that were current before each switch; rollback pops it, so
//! repeated rollbacks walk further back, and deploy order is the fallback. Releases found on disk but missing from the file
//! (created by hand, or by an older tool) count as older than every recorded one, by name.
//! The selection rules are pure functions, tested without a filesystem.
//!
//! A release the fleet pipeline activated carries a [`Verdict`]: `failed` once its activation
//! failed after it was switched to (start, health check, crash, or an agent that died before
//! the check passed), `passed` once its health check passed (and then for good). A failed
//! release is never a rollback target, never counts towards `keep`, and is the first to be
//! pruned; the rollback target of `current` is never pruned. Releases without a verdict
//! (deployed by hand) count as good.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a release's activation went, as far as the fleet pipeline knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its health check passed once: a good release from then on.
    Passed,
    /// Its activation failed and it never passed.
    Failed,
}

/// One deployed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: String,
    /// Seconds since the epoch when it was deployed (0 when unknown).
    pub deployed_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl Record {
    fn failed(&self) -> bool {
        self.verdict == Some(Verdict::Failed)
    }
}

/// Releases, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub releases: Vec<Record>,
    /// Releases that were current before each switch, most recent last.
    #[serde(default)]
    pub undo: Vec<String>,
}

/// How many switches the undo stack remembers.
const UNDO_DEPTH: usize = 64;

impl History {
    /// Reconciles the recorded order with the release directories present on disk.
    pub fn reconcile(mut self, on_disk: &[String]) -> History {
        self.releases.retain(|r| on_disk.contains(&r.version));
        let mut unknown: Vec<&String> = on_disk
            .iter()
            .filter(|v| !self.releases.iter().any(|r| &r.version == *v))
            .collect();
        unknown.sort();
        let mut releases: Vec<Record> = unknown
            .into_iter()
            .map(|v| Record {
                version: v.clone(),
                deployed_at: 0,
                verdict: None,
            })
            .collect();
        releases.append(&mut self.releases);
        let mut undo = self.undo;
        undo.retain(|v| on_disk.contains(v));
        History { releases, undo }
    }

    pub fn push(&mut self, version: &str, deployed_at: u64) {
        self.releases.retain(|r| r.version != version);
        self.releases.push(Record {
            version: version.to_string(),
            deployed_at,
            verdict: None,
        });
    }

    /// Records how `version`'s activation went; `Passed` is final. Returns whether the
    /// release is recorded at all.
    pub fn judge(&mut self, version: &str, verdict: Verdict) -> bool {
        let Some(r) = self.releases.iter_mut().find(|r| r.version == version) else {
            return false;
        };
        if r.verdict != Some(Verdict::Passed) {
            r.verdict = Some(verdict);
        }
        true
    }

    /// Whether `version` is recorded as failed.
    pub fn is_failed(&self, version: &str) -> bool {
        self.releases
            .iter()
            .any(|r| r.version == version && r.failed())
    }

    pub fn remove(&mut self, version: &str) {
        self.releases.retain(|r| r.version != version);
        self.undo.retain(|v| v != version);
    }

    pub fn contains(&self, version: &str) -> bool {
        self.releases.iter().any(|r| r.version == version)
    }

    fn position(&self, version: &str) -> Option<usize> {
        self.releases.iter().position(|r| r.version == version)
    }

    /// The last release deployed before `current`, in deploy order, that did not fail.
    pub fn deployed_before(&self, current: &str) -> Option<&str> {
        let i = self.position(current)?;
        self.releases[..i]
            .iter()
            .rev()
            .find(|r| !r.failed())
            .map(|r| r.version.as_str())
    }

    /// Notes that `current` is being switched away from.
    pub fn record_switch(&mut self, from: Option<&str>) {
        if let Some(from) = from {
            self.undo.push(from.to_string());
            let excess = self.undo.len().saturating_sub(UNDO_DEPTH);
            self.undo.drain(..excess);
        }
    }

    /// The default rollback target: what was live before `current`, else the release
    /// deployed before it; never a failed release.
    pub fn previous(&self, current: &str) -> Option<&str> {
        self.undo
            .iter()
            .rev()
            .find(|v| v.as_str() != current && self.contains(v) && !self.is_failed(v))
            .map(String::as_str)
            .or_else(|| self.deployed_before(current))
    }

    /// Pops the undo stack down past `target`, for a rollback to it.
    pub fn pop_until(&mut self, target: &str) {
        if let Some(i) = self.undo.iter().rposition(|v| v == target) {
            self.undo.truncate(i);
        }
    }

    /// Releases pruning removes: every failed release first, then all but the `keep` newest
    /// of the others (failed ones do not count), never `current` nor its rollback target (so
    /// a rollback always has somewhere to go).
    pub fn prunable(&self, current: Option<&str>, keep: usize) -> Vec<String> {
        let protected: Vec<&str> = current
            .into_iter()
            .chain(current.and_then(|c| self.previous(c)))
            .collect();
        let (failed, good): (Vec<&Record>, Vec<&Record>) =
            self.releases.iter().partition(|r| r.failed());
        let excess = good.len().saturating_sub(keep);
        failed
            .into_iter()
            .chain(good.into_iter().take(excess))
            .filter(|r| !protected.contains(&r.version.as_str()))
            .map(|r| r.version.clone())
            .collect()
    }

    /// Loads the file; a missing file is an empty history.
    pub fn load(path: &Path) -> io::Result<History> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupt ({e}); delete it to rebuild the order by name",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the file atomically: temp file, fsync, rename.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // Exact, whatever the umask.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            super::layout::fsync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(vs: &[&str]) -> History {
        let mut h = History::default();
        for (i, v) in vs.iter().enumerate() {
            h.push(v, i as u64 + 1);
        }
        h
    }

    #[test]
    fn deploy_order_is_not_name_order() {
        let h = hist(&["v9", "v10", "v11"]);
        assert_eq!(h.previous("v11"), Some("v10"));
        assert_eq!(h.previous("v10"), Some("v9"));
        assert_eq!(h.previous("v9"), None);
        assert_eq!(h.previous("nope"), None);
    }

    #[test]
    fn previous_is_what_was_live_before() {
        let mut h = hist(&["v9", "v10", "v11"]);
        h.record_switch(Some("v9"));
        h.record_switch(Some("v10"));
        // Operator rolls back from v11 to v9 by name, then deploys v12.
        h.record_switch(Some("v11"));
        h.push("v12", 9);
        h.record_switch(Some("v9"));
        assert_eq!(h.previous("v12"), Some("v9"));
        assert_eq!(h.prunable(Some("v12"), 1), vec!["v10", "v11"]);
        // Rolling back pops: the next rollback walks further back, not forward again.
        h.pop_until("v9");
        assert_eq!(h.previous("v9"), Some("v11"));
        h.pop_until("v11");
        assert_eq!(h.previous("v11"), Some("v10"));
        // Empty stack: deploy order.
        h.undo.clear();
        assert_eq!(h.previous("v11"), Some("v10"));
    }

    #[test]
    fn prune_keeps_newest_current_and_its_predecessor() {
        let h = hist(&["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(h.prunable(Some("g"), 5), vec!["a", "b"]);
        // Rolled back to b: b and a are protected even though they are old.
        assert_eq!(h.prunable(Some("b"), 2), vec!["c", "d", "e"]);
        assert_eq!(h.prunable(Some("g"), 0), vec!["a", "b", "c", "d", "e"]);
        assert!(h.prunable(Some("g"), 10).is_empty());
        assert_eq!(h.prunable(None, 6), vec!["a"]);
    }

    /// Regression (issue 15): after three broken deploys the good rollback targets had been
    /// pruned, because failed releases counted towards `keep`.
    #[test]
    fn failed_releases_never_count_towards_keep_nor_become_rollback_targets() {
        let mut h = hist(&["v1", "v2"]);
        h.record_switch(Some("v1"));
        for bad in ["v3", "v4", "v5"] {
            h.push(bad, 9);
            h.record_switch(Some("v2"));
            // Rolled back to v2: the undo stack is popped down to it.
            h.pop_until("v2");
            assert!(h.judge(bad, Verdict::Failed));
            assert_eq!(h.previous("v2"), Some("v1"), "after {bad}");
            let pruned = h.prunable(Some("v2"), 2);
            assert_eq!(pruned, vec![bad.to_string()], "after {bad}");
            h.remove(bad);
        }
        // While v5 is current (being checked), v4 failed: it is no rollback target, and
        // is pruned before any good release.
        let mut h = hist(&["v1", "v2", "v3", "v4", "v5"]);
        h.judge("v3", Verdict::Passed);
        h.judge("v4", Verdict::Failed);
        h.record_switch(Some("v4"));
        assert_eq!(h.previous("v5"), Some("v3"));
        assert_eq!(h.prunable(Some("v5"), 2), vec!["v4", "v1", "v2"]);
        assert_eq!(h.prunable(Some("v5"), 5), vec!["v4"]);
        // A failed release that is current is not pruned.
        assert!(!h.prunable(Some("v4"), 5).contains(&"v4".to_string()));
        // Passed is final.
        h.judge("v3", Verdict::Failed);
        assert!(!h.is_failed("v3"));
        assert!(!h.judge("nope", Verdict::Failed));
    }

    #[test]
    fn older_files_without_verdicts_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("releases.json");
        std::fs::write(
            &p,
            br#"{"releases":[{"version":"a","deployed_at":1}],"undo":[]}"#,
        )
        .unwrap();
        let h = History::load(&p).unwrap();
        assert_eq!(h.releases[0].verdict, None);
    }

    #[test]
    fn reconcile_drops_missing_and_puts_unknown_first() {
        let h = hist(&["v1", "v2", "v3"]);
        let disk = vec!["v3".to_string(), "manual".to_string(), "v1".to_string()];
        let r = h.reconcile(&disk);
        let names: Vec<_> = r.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(names, vec!["manual", "v1", "v3"]);
        assert_eq!(r.releases[0].deployed_at, 0);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("releases.json");
        assert_eq!(History::load(&p).unwrap(), History::default());
        let h = hist(&["x", "y"]);
        h.save(&p).unwrap();
        assert_eq!(History::load(&p).unwrap(), h);
        std::fs::write(&p, b"{not json").unwrap();
        let err = History::load(&p).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
