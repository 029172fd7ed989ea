//! The artifact fetcher: `s3://bucket/key`, `https://` (and `http://`), `file://`, streamed
//! straight into the unpacker and sha256-checked before anything is published.
//!
//! One file per scheme ([`s3`], [`http`], [`file`](mod@file)); [`stream`] bridges the async bodies to
//! the sync unpacker and hashes. Guarantees of [`deploy`]: no temp file of the artifact is
//! written; the digest is computed over the whole object (read to EOF); when an expected
//! digest is given and differs, nothing is published — `current` is unchanged and the
//! staging directory is removed.
//!
//! Every fetch ends: at most [`MAX_TRAILING`] bytes may follow the end of the archive (they
//! are read, for the digest, but no further), a length the server announced must be the
//! length that arrives, and the unpack options' cancellation token stops the transfer and
//! the unpack at their next read, wherever they block (a blocked network read is woken).
//! `file://` paths are confined to [`FileRoots`] when the caller asks for it (the agent does).

pub mod digest;
pub mod error;
pub mod file;
pub mod http;
pub mod peers;
#[cfg(test)]
mod peers_tests;
mod ranges;
pub mod s3;
pub mod stream;

use std::io::Read;
use std::path::PathBuf;

pub use error::FetchError;

use crate::artifact::UnpackOptions;
use crate::cancel::{Cancel, CancellableRead};
use crate::release::{self, Deployed, Layout, ReleaseError, Staged};

/// Most bytes read after the unpack has finished, to complete the digest: 1 MiB. (The
/// unpacker's read-ahead, up to about 10 MiB, may already have taken some trailing bytes.)
pub const MAX_TRAILING: u64 = 1 << 20;

/// Where `file://` artifacts may be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRoots {
    /// Any path (the operator's own `droot-fleet deploy file:///...`).
    Any,
    /// Only regular files beneath these directories, reached without a symlink, a `..` or a
    /// mount point (the agent: a signed URL must not read host files).
    Only(Vec<PathBuf>),
}

impl Default for FileRoots {
    /// None at all: `file://` is refused until roots are configured.
    fn default() -> Self {
        FileRoots::Only(Vec::new())
    }
}

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    S3 { bucket: String, key: String },
    Http(String),
    File(PathBuf),
}

impl Source {
    /// Parses an artifact URL.
    pub fn parse(url: &str) -> Result<Source, FetchError> {
        let bad = |reason: &str| FetchError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
            if bucket.is_empty() || key.is_empty() {
                return Err(bad("expected s3://BUCKET/KEY"));
            }
            return Ok(Source::S3 {
                bucket: bucket.into(),
                key: key.into(),
            });
        }
        if url.starts_with("https://") || url.starts_with("http://") {
            url.parse::<hyper::Uri>().map_err(|e| bad(&e.to_string()))?;
            return Ok(Source::Http(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad("expected file:///ABSOLUTE/PATH"));
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        Err(bad(
            "supported schemes are s3://, https://, http:// and file://",
        ))
    }
}

/// Settings for `s3://` (the rest of the configuration comes from the standard AWS chain:
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, instance roles).
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// S3 endpoint (an S3-compatible store); overrides `AWS_ENDPOINT_URL`.
    pub s3_endpoint: Option<String>,
    /// Region; default from the AWS chain, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Path-style addressing; default on when an endpoint is set (S3-compatible stores).
    pub s3_path_style: Option<bool>,
    /// Where `file://` may read; default nowhere.
    pub file_roots: FileRoots,
    /// Peers that may hold the artifact's pieces (the agent, for a deploy event that pins a
    /// chunk index); `None`: the store alone.
    pub peers: Option<peers::Peers>,
}

/// Opens `url` as a byte stream; returns once the object is known to exist. The stream
/// fails at its next read once `cancel` trips.
pub fn open(
    url: &str,
    opts: &FetchOptions,
    cancel: &Cancel,
) -> Result<Box<dyn Read + Send>, FetchError> {
    let source = match Source::parse(url)? {
        Source::S3 { bucket, key } => s3::open(url, bucket, key, opts.clone(), cancel),
        Source::Http(u) => http::open(u, opts, cancel),
        Source::File(path) => file::open(url, &path, &opts.file_roots),
    }?;
    Ok(Box::new(CancellableRead::new(source, cancel.clone())))
}

/// Parses a sha256 given as 64 hex digits.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| format!("sha256 {text:?}: expected 64 hex digits"))?;
    Ok(out)
}

/// A deploy from a URL.
#[derive(Debug)]
pub struct Fetched {
    pub deployed: Deployed,
    pub sha256: [u8; 32],
    pub bytes: u64,
}

/// A release fetched from a URL and staged, not yet current.
#[derive(Debug)]
pub struct FetchedStage {
    pub staged: Staged,
    pub sha256: [u8; 32],
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploy refused, current is unchanged and no release was created")]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

impl DeployError {
    /// Whether the fetch may succeed if tried again later: the store unreachable or busy
    /// ([`FetchError::is_transient`]), or the body cut off mid-transfer ([`stream::cut_off`]),
    /// wherever in the readers the cut surfaced.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeployError::Fetch(f) if f.is_transient()) || self.is_cut_off()
    }

    /// Whether the body was cut off mid-transfer ([`stream::cut_off`]), wherever in the
    /// readers the cut surfaced.
    pub fn is_cut_off(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            let io = e.downcast_ref::<std::io::Error>();
            if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionAborted) {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// Fetches `url` and stages it as the release `version` (`current` untouched), checking
/// `expected` before publishing. The fleet's activation switches to it later. `opened` is
/// set to when the object was open and its bytes began to stream into the unpacker (also
/// when the rest then fails), for the executor's phase durations.
pub fn stage(
    layout: &Layout,
    url: &str,
    expected: Option<[u8; 32]>,
    version: Option<&str>,
    unpack: &UnpackOptions,
    opts: &FetchOptions,
    opened: &mut Option<std::time::Instant>,
) -> Result<FetchedStage, DeployError> {
    let publish =
        |reader, verify: Verify<'_>| release::stage(layout, reader, version, unpack, verify);
    let (staged, sha256, bytes) = fetch_into(url, expected, unpack, opts, opened, publish)?;
    tracing::info!(url, sha256 = %hex::encode(sha256), bytes, release = %staged.version, "fetched and staged");
    Ok(FetchedStage {
        staged,
        sha256,
        bytes,
    })
}

/// Fetches `url` and deploys it as a new release (staged, then `current` switched to it,
/// then pruned to `keep`, under one lock), checking `expected` before publishing.
pub fn deploy(
    layout: &Layout,
    url: &str,
    expected: Option<[u8; 32]>,
    version: Option<&str>,
    keep: usize,
    unpack: &UnpackOptions,
    opts: &FetchOptions,
) -> Result<Fetched, DeployError> {
    let (deployed, sha256, bytes) =
        fetch_into(url, expected, unpack, opts, &mut None, |reader, verify| {
            release::deploy_verified(layout, reader, version, keep, unpack, verify)
        })?;
    tracing::info!(url, sha256 = %hex::encode(sha256), bytes, release = %deployed.version, "fetched and deployed");
    Ok(Fetched {
        deployed,
        sha256,
        bytes,
    })
}

/// The digest check a publisher runs after the unpack and before publishing.
type Verify<'a> =
    &'a mut dyn FnMut(&crate::artifact::UnpackStats) -> Result<(), release::VerifyFailed>;

/// Opens `url` and hands its bytes to `publish` with the digest check; returns what it
/// made, the object's digest and length. A cancelled fetch is reported as such.
fn fetch_into<T>(
    url: &str,
    expected: Option<[u8; 32]>,
    unpack: &UnpackOptions,
    opts: &FetchOptions,
    opened: &mut Option<std::time::Instant>,
    publish: impl FnOnce(Box<dyn Read + Send>, Verify<'_>) -> Result<T, ReleaseError>,
) -> Result<(T, [u8; 32], u64), DeployError> {
    let cancel = &unpack.cancel;
    let r = open(url, opts, cancel)
        .map_err(DeployError::from)
        .and_then(|source| {
            *opened = Some(std::time::Instant::now());
            fetch_checked(url, expected, source, publish)
        });
    match (r, cancel.reason()) {
        (Err(_), Some(reason)) => Err(FetchError::Cancelled {
            url: url.to_string(),
            reason,
        }
        .into()),
        (r, _) => r,
    }
}

fn fetch_checked<T>(
    url: &str,
    expected: Option<[u8; 32]>,
    source: Box<dyn Read + Send>,
    publish: impl FnOnce(Box<dyn Read + Send>, Verify<'_>) -> Result<T, ReleaseError>,
) -> Result<(T, [u8; 32], u64), DeployError> {
    let (reader, digest) = stream::hashing(source);
    let mut seen = None;
    let mut verify = |_: &crate::artifact::UnpackStats| -> Result<(), release::VerifyFailed> {
        let (actual, bytes) = finish(url, &digest)?;
        seen = Some((actual, bytes));
        match expected {
            Some(want) if want != actual => Err(FetchError::DigestMismatch {
                url: url.to_string(),
                expected: hex::encode(want),
                actual: hex::encode(actual),
                bytes,
            }
            .into()),
            _ => Ok(()),
        }
    };
    let made = match publish(Box::new(reader), &mut verify) {
        Ok(made) => made,
        // A corrupt archive with a digest given: the mismatch is the cause to report.
        Err(ReleaseError::Unpack(e)) if expected.is_some() => {
            return Err(mismatch_or(url, expected, &digest, ReleaseError::Unpack(e)));
        }
        Err(e) => return Err(e.into()),
    };
    let (sha256, bytes) = seen.unwrap_or_default();
    Ok((made, sha256, bytes))
}

/// Reads what follows the archive (at most [`MAX_TRAILING`] bytes) and returns the digest
/// and length of the whole object.
fn finish(url: &str, digest: &stream::DigestHandle) -> Result<([u8; 32], u64), FetchError> {
    digest.finish(MAX_TRAILING).map_err(|e| match e {
        stream::Finish::Trailing => FetchError::TrailingBytes {
            url: url.to_string(),
            limit: MAX_TRAILING,
        },
        stream::Finish::Read(source) => FetchError::Drain {
            url: url.to_string(),
            source,
        },
    })
}

/// The digest mismatch behind a failed unpack, if there is one; else `err`.
fn mismatch_or(
    url: &str,
    expected: Option<[u8; 32]>,
    digest: &stream::DigestHandle,
    err: ReleaseError,
) -> DeployError {
    match (expected, digest.finish(MAX_TRAILING)) {
        (Some(want), Ok((actual, bytes))) if want != actual => FetchError::DigestMismatch {
            url: url.to_string(),
            expected: hex::encode(want),
            actual: hex::encode(actual),
            bytes,
        }
        .into(),
        _ => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Source::parse("s3://b/web/v1.tar.gz").unwrap(),
            Source::S3 {
                bucket: "b".into(),
                key: "web/v1.tar.gz".into()
            }
        );
        assert_eq!(
            Source::parse("file:///srv/a.tar").unwrap(),
            Source::File("/srv/a.tar".into())
        );
        assert!(matches!(
            Source::parse("http://127.0.0.1:8080/a").unwrap(),
            Source::Http(_)
        ));
        for bad in [
            "s3://b",
            "s3:///k",
            "s3://b/",
            "ftp://x/y",
            "file://rel/x",
            "/abs",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(FetchError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn sha256_parses() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_sha256(&hex64).unwrap(), [0xab; 32]);
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
