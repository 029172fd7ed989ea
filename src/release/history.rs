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

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One deployed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: String,
    /// Seconds since the epoch when it was deployed (0 when unknown).
    pub deployed_at: u64,
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
        });
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

    /// The release deployed just before `current`, in deploy order.
    pub fn deployed_before(&self, current: &str) -> Option<&str> {
        let i = self.position(current)?;
        i.checked_sub(1).map(|p| self.releases[p].version.as_str())
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
    /// deployed before it.
    pub fn previous(&self, current: &str) -> Option<&str> {
        self.undo
            .iter()
            .rev()
            .find(|v| v.as_str() != current && self.contains(v))
            .map(String::as_str)
            .or_else(|| self.deployed_before(current))
    }

    /// Pops the undo stack down past `target`, for a rollback to it.
    pub fn pop_until(&mut self, target: &str) {
        if let Some(i) = self.undo.iter().rposition(|v| v == target) {
            self.undo.truncate(i);
        }
    }

    /// Releases pruning removes: all but the `keep` newest, never `current` nor the one
    /// before it (so a rollback always has somewhere to go).
    pub fn prunable(&self, current: Option<&str>, keep: usize) -> Vec<String> {
        let protected: Vec<&str> = current
            .into_iter()
            .chain(current.and_then(|c| self.previous(c)))
            .collect();
        let n = self.releases.len();
        self.releases
            .iter()
            .take(n.saturating_sub(keep))
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
