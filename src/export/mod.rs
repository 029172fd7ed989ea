//! `export`: turn a container image into one flat rootfs tar that `deploy` and `run` understand.
//!
//! Three sources, one output format:
//! - [`Source::Engine`]: ask a Docker engine (Engine API over its unix socket, `DOCKER_HOST`
//!   honoured) to export a never-started container created from the image. The engine has
//!   already flattened the layers, so the stream is re-written entry by entry; see [`docker`].
//! - [`Source::Archive`]: flatten a `docker save` or OCI image-layout tarball without any
//!   engine. Layers are applied in order with overlay whiteout semantics in two streaming
//!   passes (headers first, then the winning entries), so nothing is extracted to disk and
//!   nothing big is held in memory; see [`archive`], [`layout`] and [`whiteout`].
//! - [`Source::Directory`]: a rootfs directory as it is on disk, read beneath its root
//!   without following a symlink; see [`directory`].
//!
//! For an image, its `Config.Env` becomes `/.drootenv` (rendered by
//! [`crate::drootenv::render`]), replacing any such file shipped in the image, and every path
//! in the output is relative (`bin/sh`, `.drootenv`), as droot produced. Device nodes and FIFOs
//! under `/dev/` are left out and counted ([`ExportSummary::skipped_devices`]): the jail's
//! `/dev` is its own, and `deploy` would refuse them. Entry paths that are
//! absolute or contain `..` are refused: a flattened rootfs is later unpacked as root, and a
//! tar that points outside its root is an attack, not an image.
//!
//! The work runs on a small tokio runtime that also listens for SIGINT/SIGTERM/SIGHUP, so an
//! interrupted export still removes its helper container and reports [`ExportError::Interrupted`]
//! instead of dying half-way (the caller then discards its partial output).

pub mod archive;
pub mod digests;
pub mod directory;
pub mod docker;
pub mod layout;
pub mod rootfs_tar;
pub mod whiteout;

use std::io::Write;
use std::path::PathBuf;

pub use rootfs_tar::{Compression, DEFAULT_MAX_BYTES, OutputOptions};

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An image (name or id) in the Docker engine at `DOCKER_HOST`.
    Engine { image: String },
    /// A `docker save` or OCI image-layout tarball; `image_ref` picks one of several images.
    Archive {
        path: PathBuf,
        image_ref: Option<String>,
    },
    /// A rootfs directory, written as it is (see [`directory`]).
    Directory { path: PathBuf },
}

/// What an export produced, for logs and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The image that was exported, as named by the user or the archive.
    pub image: String,
    /// Entries written to the output tar, `.drootenv` included.
    pub entries: u64,
    /// Device nodes and FIFOs under `/dev/` left out (`run` gives the jail its own `/dev`).
    pub skipped_devices: u64,
}

/// Everything that can go wrong in an export; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no Docker engine at {host}: is dockerd running? set DOCKER_HOST to its socket")]
    NoEngine {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("DOCKER_HOST={host} is not usable: use unix:///path/to/docker.sock")]
    BadDockerHost {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {0} not found in the engine: build or load it first (docker build / docker load), \
         or check the name with `docker images`"
    )]
    ImageNotFound(String),
    #[error("the Docker engine failed to {action}")]
    Engine {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "could not remove helper container {name}; remove it by hand with `docker rm -f {name}`"
    )]
    Cleanup {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("interrupted by {0}; the helper container was removed and no output was kept")]
    Interrupted(&'static str),
    #[error("image {image} has an environment that /.drootenv cannot carry")]
    BadEnv {
        image: String,
        #[source]
        source: crate::drootenv::DrootenvError,
    },
    #[error("cannot read {path} in the rootfs directory")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    OpenArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is {kind}-compressed: decompress it first (--from-archive needs a plain, seekable \
         tar, e.g. `gunzip -k` or `zstd -d`)"
    )]
    CompressedArchive { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is not a tar archive: pass the output of `docker save` or an OCI image layout tar"
    )]
    NotATar {
        path: PathBuf,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error(
        "{path} holds neither manifest.json (docker save) nor index.json + oci-layout (OCI image \
         layout): is it an image archive? `docker save IMAGE -o FILE` makes one"
    )]
    MissingManifest { path: PathBuf },
    #[error(
        "{path} lacks {name}, which its manifest refers to: the archive is truncated or was \
         saved incompletely; save it again"
    )]
    MissingBlob { path: PathBuf, name: String },
    #[error("{name} in {path} is not valid {what}: the archive is corrupt or of an unknown kind")]
    BadJson {
        path: PathBuf,
        name: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {problem}")]
    BadLayout { path: PathBuf, problem: String },
    #[error(
        "{name} in {path} has digest {actual}, but the image's manifest says {expected}: the archive is corrupt or was altered after the image was built; nothing was written"
    )]
    Digest {
        path: PathBuf,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{path} holds several images ({}): pick one with --image-ref", .refs.join(", "))]
    SeveralImages { path: PathBuf, refs: Vec<String> },
    #[error("{path} has no image {wanted}; it holds: {}", .refs.join(", "))]
    ImageRefNotFound {
        path: PathBuf,
        wanted: String,
        refs: Vec<String>,
    },
    #[error(
        "no manifest for {wanted} in {path} (it has: {}); save the image for this platform",
        .available.join(", ")
    )]
    NoPlatform {
        path: PathBuf,
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "layer {name} in {path} has media type {media_type}, which is not a tar layer \
         droot-fleet can apply (tar, tar+gzip, tar+zstd)"
    )]
    UnsupportedMediaType {
        path: PathBuf,
        name: String,
        media_type: String,
    },
    #[error("cannot read layer {layer} ({name}) of {path}: the layer is corrupt or truncated")]
    Layer {
        path: PathBuf,
        layer: usize,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{origin} has entry {entry:?}, an absolute path or one with '..': refusing to build a \
         rootfs that could write outside its root"
    )]
    UnsafePath { origin: String, entry: String },
    #[error(
        "{origin} has hardlink {entry:?} to {target:?}, which is not an earlier entry of the \
         same tar: the image is malformed"
    )]
    HardlinkTarget {
        origin: String,
        entry: String,
        target: String,
    },
    #[error("cannot read the container export stream of {image}")]
    ExportStream {
        image: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the output tar (disk full, or the reader of stdout went away?)")]
    Output(#[source] std::io::Error),
    #[error(
        "the image's files add up to more than {limit} bytes (sparse files at their full \
         size: the output holds them whole); no output was kept. Raise the export's byte \
         limit if the image really is that big"
    )]
    TooLarge { limit: u64 },
    #[error("cannot start the export runtime")]
    Runtime(#[source] std::io::Error),
}

/// Exports `source` as a rootfs tar into `out`, compressed and limited as asked, and hands
/// `out` back (flushed, compression finished) so the caller can sync and rename it.
pub fn export<W: Write + Send + 'static>(
    source: &Source,
    out: W,
    output: OutputOptions,
) -> Result<(ExportSummary, W), ExportError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(ExportError::Runtime)?;
    let result = runtime.block_on(async {
        let mut signals = Signals::install().map_err(ExportError::Runtime)?;
        match source {
            Source::Engine { image } => {
                docker::export_image(image, out, output, &mut signals).await
            }
            Source::Archive { path, image_ref } => {
                let (path, image_ref) = (path.clone(), image_ref.clone());
                let work = tokio::task::spawn_blocking(move || {
                    archive::flatten(&path, image_ref.as_deref(), out, output)
                });
                interruptible(work, &mut signals).await
            }
            Source::Directory { path } => {
                let path = path.clone();
                let work =
                    tokio::task::spawn_blocking(move || directory::flatten_dir(&path, out, output));
                interruptible(work, &mut signals).await
            }
        }
    });
    // A worker still blocked on a write (e.g. to a stdout nobody reads) must not keep us alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// The blocking flatten's result, or [`ExportError::Interrupted`] on the first signal.
async fn interruptible<T>(
    work: tokio::task::JoinHandle<Result<T, ExportError>>,
    signals: &mut Signals,
) -> Result<T, ExportError> {
    tokio::select! {
        joined = work => joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        name = signals.recv() => Err(ExportError::Interrupted(name)),
    }
}

/// The `/.drootenv` text for an image's `Env`.
///
/// An image with no `Env` at all (`FROM scratch`, a plain `docker import`) gets an empty file
/// and a warning: `run` then falls back to a default `PATH`. Entries without `=` are dropped: in a Docker config they mean "unset this variable",
/// and a file that only sets variables expresses that by leaving them out.
pub(crate) fn drootenv_text(image: &str, env: Option<Vec<String>>) -> Result<String, ExportError> {
    let env = env.unwrap_or_else(|| {
        tracing::warn!(
            image,
            "image config has no Env; writing an empty /.drootenv"
        );
        Vec::new()
    });
    let (set, unset): (Vec<String>, Vec<String>) = env.into_iter().partition(|e| e.contains('='));
    if !unset.is_empty() {
        tracing::debug!(
            image,
            ?unset,
            "Env entries without '=' left out of /.drootenv"
        );
    }
    crate::drootenv::render(&set).map_err(|source| ExportError::BadEnv {
        image: image.to_string(),
        source,
    })
}

/// SIGINT, SIGTERM and SIGHUP, caught for the duration of an export.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the first of the signals and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// A tar entry path made safe and relative: `./a//b/` → `a/b`, the root → empty.
///
/// Absolute paths and `..` components are refused ([`UnsafeEntryPath`]).
pub(crate) fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, UnsafeEntryPath> {
    if raw.first() == Some(&b'/') {
        return Err(UnsafeEntryPath);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(UnsafeEntryPath),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Marker error of [`normalize_path`]; callers add where the path came from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnsafeEntryPath;

/// Lossy display form of a byte path, for messages.
pub(crate) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The Go/OCI name of this machine's CPU architecture (`amd64`, `arm64`, ...).
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_dots_and_slashes() {
        assert_eq!(normalize_path(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize_path(b"bin/sh").unwrap(), b"bin/sh");
        assert_eq!(normalize_path(b"./").unwrap(), b"");
        assert_eq!(normalize_path(b".").unwrap(), b"");
        assert_eq!(normalize_path(b"a/./b").unwrap(), b"a/b");
    }

    #[test]
    fn drootenv_text_drops_unsets_and_allows_no_env() {
        let env = vec!["A=1".to_string(), "UNSET".into(), "B=x=y".into()];
        assert_eq!(drootenv_text("i", Some(env)).unwrap(), "A=1\nB=x=y\n");
        assert_eq!(drootenv_text("i", Some(vec![])).unwrap(), "");
        assert_eq!(drootenv_text("i", None).unwrap(), "");
        let err = drootenv_text("i", Some(vec!["A=1\n2".into()])).unwrap_err();
        assert!(matches!(err, ExportError::BadEnv { .. }), "{err}");
    }

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize_path(b"/etc/passwd"), Err(UnsafeEntryPath));
        assert_eq!(normalize_path(b"../x"), Err(UnsafeEntryPath));
        assert_eq!(normalize_path(b"a/../../x"), Err(UnsafeEntryPath));
        assert_eq!(normalize_path(b"a/.."), Err(UnsafeEntryPath));
        // A name that merely starts with dots is fine.
        assert_eq!(normalize_path(b"a/..b").unwrap(), b"a/..b");
    }
}
