//! What the data-dir state file holds ([`PersistedState`]): what a restarted agent
//! needs to rejoin and to never deliver an event twice. A plain serde type, so the
//! machine builds it (an [`super::Effect::Snapshot`]) without touching the disk;
//! writing it atomically and reading it back is [`crate::agent::snapshot`]'s.
//!
//! It holds the [`CoreSnapshot`] (identity with its bump, Lamport clocks, event log
//! ids + recent events, query dedupe), the members last known, the [`LeftBook`] (so a
//! force-left member is still `left` after a restart), the owed handlers and the key
//! operations applied. Fields added later default when absent, so older files load.

use serde::{Deserialize, Serialize};

use crate::agent::members::LeftBook;
use crate::agent::pending::PendingRecord;
use crate::gossip::{CoreSnapshot, NodeId};

/// Everything persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedState {
    pub core: CoreSnapshot,
    /// Members (other than us) known alive when saved: rejoin targets.
    #[serde(default)]
    pub members: Vec<NodeId>,
    /// Who left or was force-left (absent in files from older versions).
    #[serde(default)]
    pub left: LeftBook,
    /// Events whose handlers could not be started yet (absent in older files).
    #[serde(default)]
    pub pending: Vec<PendingRecord>,
    /// Cluster key operations applied, so that a replay stays one across a restart
    /// ([`crate::agent::key_auth`]; absent in older files).
    #[serde(default)]
    pub key_operations: crate::deploy::signed::SeenSnapshot,
}

/// A state with a member and a left record, for tests of this type and of its file.
#[cfg(test)]
pub(crate) fn sample() -> PersistedState {
    use crate::gossip::{CoreConfig, GossipCore, Tags};
    let id = NodeId::new("n1", "127.0.0.1:1".parse().unwrap(), 3).unwrap();
    let core = GossipCore::new(
        id.clone(),
        Tags::new(),
        CoreConfig::default(),
        std::time::Duration::ZERO,
    );
    let mut left = LeftBook::default();
    left.record(&NodeId::new("gone", "127.0.0.1:2".parse().unwrap(), 1).unwrap());
    PersistedState {
        key_operations: Default::default(),
        core: core.snapshot(),
        members: vec![id],
        left,
        pending: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files written before the left book existed still load.
    #[test]
    fn older_files_still_load() {
        let state = sample();
        let mut old: serde_json::Value = serde_json::to_value(&state).unwrap();
        old.as_object_mut().unwrap().remove("left");
        let old: PersistedState = serde_json::from_value(old).unwrap();
        assert_eq!(old.left, LeftBook::default());
        assert_eq!(old.core, state.core);
    }
}
