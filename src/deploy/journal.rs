//! The deploy journal: each node's record of how every deploy of an app ended, newest last,
//! for `droot-fleet history`.
//!
//! Where: `.droot-fleet/deploys.jsonl` in the app's release store, beside `releases.json`
//! ([`crate::release::history`], which keeps the order of the releases on disk and what a
//! rollback goes back to; this keeps what happened, also for releases long pruned). One
//! JSON [`Entry`] per line, appended (and fsynced) when an outcome is reported.
//!
//! Bounds: the newest `keep` entries are kept in memory; the file is rewritten atomically
//! ([`crate::atomic_file`]) to those once it holds more than twice as many lines, so it
//! never holds more than `2 * keep + 1` lines of at most [`MAX_LINE`] bytes. Reading takes
//! at most that many bytes from the file's end.
//!
//! Damage: a crash mid-append leaves a torn last line. It is skipped when read, and the next
//! append starts on a new line, so no other entry is lost. A line that is not an entry (a
//! corrupt or hostile file, an overlong line, a version that is no release name) is skipped
//! and counted, never trusted; a path that is not a regular file is an error.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::phases::PhaseTimes;
use super::status::Result as Outcome;
use crate::release::layout::validate_version;

/// The journal's file name in the store's state directory.
pub const FILE: &str = "deploys.jsonl";
/// How many entries a journal keeps by default.
pub const KEEP: usize = 100;
/// Longest line read back; longer ones are skipped.
pub const MAX_LINE: usize = 4096;
/// Longest error text an entry keeps (the executor's outcome bound).
pub const MAX_ERROR: usize = super::executor::MAX_ERROR;
/// Longest event id or signer id kept.
const MAX_ID: usize = 64;

/// Whether an activation brought a new release or went back to one deployed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deploy,
    Rollback,
}

impl Kind {
    /// A deploy of `to` is a rollback when `to` is what a rollback goes back to, or a
    /// release on disk that was deployed before `current` (`releases`: deploy order).
    pub fn of(
        to: &str,
        current: Option<&str>,
        previous: Option<&str>,
        releases: &[String],
    ) -> Kind {
        let at = |v: &str| releases.iter().position(|r| r == v);
        let earlier = match (at(to), current.and_then(at)) {
            (Some(t), Some(c)) => t < c,
            _ => false,
        };
        match previous == Some(to) || earlier {
            true => Kind::Rollback,
            false => Kind::Deploy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
        }
    }
}

/// How one deploy of an app ended on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Hex id of the deploy event.
    pub event_id: String,
    /// Id of the key that signed it ([`crate::keytext::key_id`]); `None` when unknown or
    /// unsigned (`--dev`).
    #[serde(default)]
    pub signer: Option<String>,
    /// What was current before.
    #[serde(default)]
    pub from: Option<String>,
    /// The version deployed.
    pub to: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub error: Option<String>,
    /// Milliseconds per phase that ran.
    #[serde(default)]
    pub phases_ms: PhaseTimes,
    /// Unix seconds when it ended.
    pub at: u64,
}

impl Entry {
    /// The entry as kept: error cut to `max_error` bytes; `None` when a field is not what
    /// this node writes (a version that is no release name, an overlong id).
    pub fn checked(mut self, max_error: usize) -> Option<Entry> {
        let id_ok = |s: &str| s.len() <= MAX_ID && !s.chars().any(char::is_control);
        let ok = validate_version(&self.to).is_ok()
            && self
                .from
                .as_deref()
                .is_none_or(|f| validate_version(f).is_ok())
            && id_ok(&self.event_id)
            && self.signer.as_deref().is_none_or(id_ok);
        self.error = self.error.map(|e| super::executor::truncate(e, max_error));
        ok.then_some(self)
    }
}

/// Why the journal could not be read or written. The deploy itself is never affected.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot read the deploy journal {path}: {source}; its history is not shown until it is \
         readable (or removed)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the deploy journal {path}: {source}; this outcome is missing from the \
         history (the deploy itself is unaffected)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the deploy journal {0} is not a regular file; remove it to start a new history")]
    NotAFile(PathBuf),
}

/// One app's journal: its file and the newest entries.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    keep: usize,
    /// Oldest first, at most `keep`.
    entries: VecDeque<Entry>,
    /// Lines in the file (torn and skipped ones included), for when to compact.
    lines: usize,
}

/// Entries of a journal's text, oldest first, and how many lines were skipped (torn,
/// overlong, not an entry).
pub fn parse(text: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut skipped = 0;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let entry = (line.len() <= MAX_LINE)
            .then(|| serde_json::from_slice::<Entry>(line).ok())
            .flatten()
            .and_then(|e| e.checked(MAX_ERROR));
        match entry {
            Some(e) => entries.push(e),
            None => skipped += 1,
        }
    }
    (entries, skipped)
}

/// Opens `path` for reading or appending without following a symlink and without blocking
/// on a FIFO; `Ok(None)` when it does not exist and `create` is false.
fn open(path: &Path, create: bool) -> std::io::Result<Option<std::fs::File>> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    if create {
        o.append(true).create(true).mode(0o600);
    }
    match o.open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
        Err(e) => Err(e),
    }
}

impl Journal {
    /// Reads the journal at `path` (none yet: empty), keeping the newest `keep` (at least 1)
    /// entries; also returns how many lines were skipped.
    pub fn open(path: &Path, keep: usize) -> Result<(Journal, usize), JournalError> {
        let keep = keep.max(1);
        let read_err = |source| JournalError::Read {
            path: path.to_owned(),
            source,
        };
        let mut j = Journal {
            path: path.to_owned(),
            keep,
            entries: VecDeque::new(),
            lines: 0,
        };
        let Some(mut f) = open(path, false).map_err(read_err)? else {
            return Ok((j, 0));
        };
        let len = f.metadata().map_err(read_err)?;
        if !len.is_file() {
            return Err(JournalError::NotAFile(path.to_owned()));
        }
        let max = j.max_bytes();
        let start = len.len().saturating_sub(max as u64);
        f.seek(SeekFrom::Start(start)).map_err(read_err)?;
        let mut text = Vec::new();
        f.take(max as u64)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        if start > 0 {
            // Read from the middle of a line: drop it; the file is over its bound.
            let first = text
                .iter()
                .position(|b| *b == b'\n')
                .map_or(text.len(), |i| i + 1);
            text.drain(..first);
            j.lines = 2 * keep + 1;
        }
        let (entries, skipped) = parse(&text);
        j.lines = j.lines.max(entries.len() + skipped);
        let excess = entries.len().saturating_sub(keep);
        j.entries = entries.into_iter().skip(excess).collect();
        Ok((j, skipped))
    }

    /// The most a file within the bound holds.
    fn max_bytes(&self) -> usize {
        (2 * self.keep + 1) * (MAX_LINE + 1)
    }

    /// The entries kept, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.entries.iter()
    }

    /// Appends `e` (durably) and compacts the file once it is over its bound. An entry
    /// whose fields are not what this node writes is not appended.
    pub fn append(&mut self, e: Entry) -> Result<(), JournalError> {
        let Some(e) = e.checked(MAX_ERROR) else {
            return Ok(());
        };
        let write_err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&e).map_err(|x| write_err(x.into()))?;
        line.push(b'\n');
        let f = open(&self.path, true)
            .map_err(write_err)?
            .ok_or_else(|| write_err(std::io::ErrorKind::NotFound.into()))?;
        let meta = f.metadata().map_err(write_err)?;
        if !meta.is_file() {
            return Err(JournalError::NotAFile(self.path.clone()));
        }
        // A torn last line (a crash mid-append) must not swallow this entry.
        let mut last = [b'\n'];
        if meta.len() > 0 {
            f.read_exact_at(&mut last, meta.len() - 1)
                .map_err(write_err)?;
        }
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
        (&f).write_all(&line).map_err(write_err)?;
        f.sync_data().map_err(write_err)?;
        self.lines += 1;
        self.entries.push_back(e);
        while self.entries.len() > self.keep {
            self.entries.pop_front();
        }
        if self.lines > 2 * self.keep {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file to the entries kept.
    fn compact(&mut self) -> Result<(), JournalError> {
        let mut text = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut text, e).map_err(|x| JournalError::Write {
                path: self.path.clone(),
                source: x.into(),
            })?;
            text.push(b'\n');
        }
        crate::atomic_file::write_atomic(&self.path, &text, 0o600).map_err(|source| {
            JournalError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        self.lines = self.entries.len();
        Ok(())
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
