//! `publish`: export an image (or a rootfs directory) straight into the artifact store,
//! with its sha256 stored beside it, so `event deploy` can pin it without a copied digest.
//!
//! One pass, no temporary copy of the artifact: the export writes into a [`Sink`]'s writer
//! through a hashing, counting tap, and only once the whole artifact is written is it made
//! visible under its name, with its digest ([`Sink::commit`]). Anything else — an export
//! error, a failed upload, a signal — ends in [`Sink::abort`], which removes every byte
//! written (the S3 multipart upload is aborted, the partial file removed): a name either
//! holds a whole published artifact or nothing new.
//!
//! A published version is immutable: a name that already exists is refused before the
//! export starts (and again, where the store can check it, when the artifact is made
//! visible) unless the caller asks to replace it.
//!
//! The archive format is the export's ([`OutputOptions`]); this module only moves bytes, so
//! a later change of format (parallel-decodable codecs, indexes) changes nothing here.

pub mod file;
pub mod s3;
pub mod target;

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::deploy::fetch::{FetchError, FetchOptions};
use crate::export::{self, ExportError, ExportSummary, OutputOptions, Source};
use crate::fanout::index::{CHUNK, IndexBuilder};
pub use target::{Target, expand_template};

/// How to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub output: OutputOptions,
    /// Replace an artifact already published under the name.
    pub replace: bool,
    /// S3 endpoint, region and addressing (the fetcher's settings).
    pub s3: FetchOptions,
    /// Above this size the digest's metadata copy goes in parts; `None`: S3's own limit of
    /// one CopyObject (5 GiB). Smaller only to exercise the path.
    pub copy_limit: Option<u64>,
}

/// What was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub url: String,
    pub sha256: [u8; 32],
    /// Bytes of the artifact as stored (after compression).
    pub bytes: u64,
    pub export: ExportSummary,
}

/// Why nothing was published. In every case no new artifact is visible under the name.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Target(#[from] target::TargetError),
    #[error(
        "{url} already exists: a published version is immutable; publish under a new \
         version, or replace it deliberately"
    )]
    Exists { url: String },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(#[from] FetchError),
    #[error("uploading {url} failed: {detail}; the upload was aborted and nothing was published")]
    Upload { url: String, detail: String },
    #[error(
        "{url}: the artifact passed {limit} bytes, the most one upload can hold at this part \
         size; nothing was published"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("{path}: {action} failed; nothing was published")]
    File {
        path: std::path::PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where the export's bytes go: a writer, and the decision once it is done.
pub trait Sink: Send {
    /// The writer the export writes the artifact into. Taken once.
    fn writer(&mut self) -> Box<dyn Write + Send>;
    /// Makes the whole artifact visible under its name, with `sha256` stored beside it,
    /// and its chunk index ([`crate::fanout::index`], encoded) beside it too when given.
    fn commit(
        self: Box<Self>,
        sha256: &[u8; 32],
        bytes: u64,
        index: Option<&[u8]>,
    ) -> Result<(), PublishError>;
    /// Removes everything written. Safe while the writer is still in use elsewhere (it
    /// then fails at its next write). Returns the sink's own failure, when it had one:
    /// that, not the writer's error, is the cause to report.
    fn abort(self: Box<Self>) -> Option<PublishError>;
}

/// Exports `source` into the artifact store at `url`. `progress` counts the bytes stored.
pub fn publish(
    source: &Source,
    url: &str,
    opts: &PublishOptions,
    progress: &Arc<AtomicU64>,
) -> Result<Published, PublishError> {
    let target = Target::parse(url)?;
    let mut sink = target.open(url, opts)?;
    let tap = Tap {
        inner: sink.writer(),
        hasher: Sha256::new(),
        index: IndexBuilder::default(),
        bytes: progress.clone(),
    };
    progress.store(0, Ordering::Relaxed);
    match export::export(source, tap, opts.output) {
        Ok((summary, tap)) => {
            let (sha256, bytes, index) = match tap.finish() {
                Ok(done) => done,
                Err(e) => return Err(sink.abort().unwrap_or_else(|| write_failed(url, e))),
            };
            sink.commit(&sha256, bytes, index.as_deref())?;
            Ok(Published {
                url: url.to_string(),
                sha256,
                bytes,
                export: summary,
            })
        }
        Err(ExportError::Output(e)) => Err(sink.abort().unwrap_or_else(|| write_failed(url, e))),
        Err(e) => {
            if let Some(cause) = sink.abort() {
                tracing::warn!(error = %cause, "aborting the upload after a failed export");
            }
            Err(e.into())
        }
    }
}

fn write_failed(url: &str, e: io::Error) -> PublishError {
    PublishError::Upload {
        url: url.to_string(),
        detail: e.to_string(),
    }
}

/// The export's output on its way to the sink: hashed, indexed and counted.
struct Tap {
    inner: Box<dyn Write + Send>,
    hasher: Sha256,
    index: IndexBuilder,
    bytes: Arc<AtomicU64>,
}

impl Tap {
    /// Flushes the sink's writer and hands back the digest, the byte count and the
    /// encoded chunk index (only for an artifact of more than one piece: a smaller one is
    /// fetched with one GET).
    fn finish(mut self) -> io::Result<([u8; 32], u64, Option<Vec<u8>>)> {
        self.inner.flush()?;
        drop(self.inner);
        let sha256: [u8; 32] = self.hasher.finalize().into();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let index = (bytes > CHUNK)
            .then(|| self.index.finish(sha256))
            .flatten()
            .map(|i| i.encode());
        Ok((sha256, bytes, index))
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.index.update(&buf[..n]);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
