//! Our streaming tar reader, for every archive droot-fleet reads (deploy, export).
//!
//! Reads what GNU tar reads, the way GNU tar reads it: v7, ustar, star, GNU and old GNU
//! headers with unsigned or signed checksums and octal or base-256 numbers; PAX `x`/`g` and
//! Solaris `X` records; GNU `L`/`K` long names; GNU sparse files (old `S`, PAX 0.0, 0.1 and
//! 1.0). Names and link targets stay bytes. Anything else (multi-volume continuations, old
//! `N` name records, unknown entry types, star sparse files) is refused with an error that
//! names the entry and the feature — it never extracts differently from GNU tar silently.
//!
//! Guarantees for hostile input: the reader never reads more than one block ahead of the
//! caller, holds at most [`Limits::max_extension`] bytes of extension data per entry (checked
//! from the header before any of it is read), reports those bytes per entry so callers can
//! count them against their own limits, and hands out only checked sparse maps.
//!
//! Split by concept: [`header`] (one block), [`ext`] (PAX records, long names), [`sparse`]
//! (maps), [`entry`] (an entry's kind and metadata), [`reader`] (the entry iterator).

pub mod entry;
pub mod ext;
pub mod header;
pub mod reader;
pub mod sparse;

pub use entry::{Entry, Kind};
pub use reader::{Archive, Contents, Data};
pub use sparse::Segment;

use std::io;

/// Default cap on extension data (PAX, `X`, `L`/`K`, sparse maps) before one entry.
pub const MAX_EXTENSION: u64 = 1 << 20;

/// Limits on what one archive may make the reader hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest total of extension data read for one entry.
    pub max_extension: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_extension: MAX_EXTENSION,
        }
    }
}

/// Why an archive could not be read. Each message names the entry where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("cannot read archive")]
    Io(#[source] io::Error),
    #[error("archive is truncated or corrupt: it ends inside {0}")]
    Truncated(String),
    #[error("tar header at byte {at} has a bad checksum: the archive is corrupt or not a tar")]
    Checksum { at: u64 },
    #[error("archive entry {entry:?} has a bad {field} field (corrupt archive?)")]
    BadField { entry: String, field: &'static str },
    #[error(
        "archive entry {entry:?} has {what} of {size} bytes, over the limit of {limit} bytes \
         for extension headers (a hostile or broken archive)"
    )]
    ExtensionTooLarge {
        entry: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("archive entry {entry:?} has a malformed {what}: {problem}")]
    BadExtension {
        entry: String,
        what: &'static str,
        problem: String,
    },
    #[error("archive entry {entry:?} has a bad sparse map: {problem}")]
    BadSparse { entry: String, problem: String },
    #[error("archive entry {entry:?} uses {feature}, which droot-fleet does not support")]
    Unsupported { entry: String, feature: String },
}

impl TarError {
    /// As an `io::Error`, for callers whose errors carry one.
    pub fn into_io(self) -> io::Error {
        match self {
            TarError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Bytes shown to a person (names need not be UTF-8).
pub(crate) fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests;
