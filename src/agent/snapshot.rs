//! The data-dir state file and the events journal on disk: what a restarted agent
//! needs to rejoin and to never deliver an event twice.
//!
//! `<data-dir>/state.json` holds a [`PersistedState`] (what is in it:
//! [`crate::agent::sansio::persisted`]). It is replaced with write-to-temp + fsync +
//! rename(2), so the file on disk is always a complete old or a complete new state,
//! never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::pending::JournalLine;
use super::sansio::persisted::PersistedState;

/// File name inside the data dir.
pub const STATE_FILE: &str = "state.json";
/// Events delivered since the state file was written.
pub const JOURNAL_FILE: &str = "events.journal";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid agent state file ({source}); move it away to start with a \
         fresh state (events already handled may then be handled again)"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source} (the previous state file is unchanged)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Path of the state file.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// Loads the state, `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<PersistedState>, SnapshotError> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SnapshotError::Parse { path, source })
}

/// Saves the state atomically.
pub fn save(data_dir: &Path, state: &PersistedState) -> Result<(), SnapshotError> {
    let path = path(data_dir);
    let bytes = serde_json::to_vec(state).map_err(|e| SnapshotError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::atomic_file::write_atomic(&path, &bytes, 0o600)
        .map_err(|source| SnapshotError::Write { path, source })?;
    // The state now covers everything journaled.
    let journal = data_dir.join(JOURNAL_FILE);
    match std::fs::remove_file(&journal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SnapshotError::Write {
            path: journal,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Appends lines to the journal and makes them durable.
pub fn journal_append(data_dir: &Path, lines: &[JournalLine]) -> Result<(), SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(JOURNAL_FILE);
    let err = |source| SnapshotError::Write {
        path: path.clone(),
        source,
    };
    let mut buf = Vec::new();
    for line in lines {
        let json = line.to_json().map_err(|e| err(std::io::Error::other(e)))?;
        buf.extend_from_slice(&json);
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(&buf).map_err(err)?;
    f.sync_data().map_err(err)
}

/// Lines journaled since the last snapshot, oldest first.
pub fn journal_read(data_dir: &Path) -> Result<Vec<JournalLine>, SnapshotError> {
    let path = data_dir.join(JOURNAL_FILE);
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SnapshotError::Read { path, source }),
    };
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        match JournalLine::from_json(line) {
            Ok(l) => out.push(l),
            // Only the last line can be torn by a crash mid-append.
            Err(_) if i + 1 == lines.len() => break,
            Err(source) => return Err(SnapshotError::Parse { path, source }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::members::LeftBook;
    use crate::gossip::{CoreConfig, GossipCore, NodeId, Tags, UserEvent};
    use std::time::Duration;

    #[test]
    fn journal_appends_replays_and_is_truncated_by_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(journal_read(dir.path()).unwrap().is_empty());
        let ev = |n: u128| UserEvent::new(crate::gossip::EventId(n), "o", 1, "e", vec![1]).unwrap();
        let (a, b) = (JournalLine::Delivered(ev(1)), JournalLine::Delivered(ev(2)));
        journal_append(dir.path(), std::slice::from_ref(&a)).unwrap();
        journal_append(dir.path(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            journal_read(dir.path()).unwrap(),
            vec![a.clone(), b.clone()]
        );
        // A torn last line is ignored; a torn middle line is an error.
        let j = dir.path().join(JOURNAL_FILE);
        let mut text = std::fs::read(&j).unwrap();
        text.extend_from_slice(b"{\"id\":");
        std::fs::write(&j, &text).unwrap();
        assert_eq!(journal_read(dir.path()).unwrap().len(), 2);
        std::fs::write(&j, b"{oops\n{}\n").unwrap();
        assert!(matches!(
            journal_read(dir.path()),
            Err(SnapshotError::Parse { .. })
        ));
        // A snapshot covers the journal and removes it.
        let id = NodeId::new("n1", "127.0.0.1:1".parse().unwrap(), 3).unwrap();
        let core = GossipCore::new(id, Tags::new(), CoreConfig::default(), Duration::ZERO);
        let state = PersistedState {
            key_operations: Default::default(),
            core: core.snapshot(),
            members: vec![],
            left: LeftBook::default(),
            pending: vec![],
        };
        save(dir.path(), &state).unwrap();
        assert!(!j.exists());
    }

    #[test]
    fn roundtrip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = crate::agent::sansio::persisted::sample();
        save(dir.path(), &state).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.core, state.core);
        assert_eq!(back.members, state.members);
        assert_eq!(back.left, state.left);
        std::fs::write(path(dir.path()), b"{").unwrap();
        assert!(matches!(load(dir.path()), Err(SnapshotError::Parse { .. })));
    }
}
