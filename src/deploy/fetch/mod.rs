//! The artifact fetcher: `s3://bucket/key`, `https://` (and `http://`), `file://`, streamed
//! straight into the unpacker and sha256-checked before anything is published.
//!
//! One file per scheme ([`s3`], [`http`], [`file`](mod@file)); [`stream`] bridges the async bodies to
//! the sync unpacker and hashes. Guarantees of [`deploy`]: no temp file of the artifact is
//! written; the digest is computed over the whole object (read to EOF); when an expected
//! digest is given and differs, nothing is published — `current` is unchanged and the
//! staging directory is removed.

pub mod file;
pub mod http;
pub mod s3;
pub mod stream;

use std::io::Read;
use std::path::PathBuf;

use crate::artifact::UnpackOptions;
use crate::release::{self, Deployed, Layout, ReleaseError};

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
}

/// Why an artifact could not be fetched. Each names the URL; nothing was deployed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad artifact URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "no AWS credentials to fetch {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or AWS_PROFILE, or run with an instance role ({detail})"
    )]
    NoCredentials { url: String, detail: String },
    #[error(
        "{url}: no such key {key:?} in bucket {bucket:?}; check the version and that the \
         artifact was uploaded"
    )]
    NoSuchKey {
        url: String,
        bucket: String,
        key: String,
    },
    #[error("{url}: no such bucket {bucket:?}; check the URL and the endpoint/region")]
    NoSuchBucket { url: String, bucket: String },
    #[error(
        "{url}: access denied ({detail}); check the access key and secret, and that the key \
         may read this bucket"
    )]
    AccessDenied { url: String, detail: String },
    #[error("{url}: not found (HTTP 404)")]
    HttpNotFound { url: String },
    #[error("{url}: the server answered HTTP {status}; expected 200")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: cannot reach {endpoint} ({detail}); check the endpoint and the network")]
    Unreachable {
        url: String,
        endpoint: String,
        detail: String,
    },
    #[error("{url}: no such file")]
    NoSuchFile { url: String },
    #[error("{url}: cannot read: {source}")]
    File {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {detail}")]
    Other { url: String, detail: String },
    #[error(
        "{url}: sha256 mismatch: expected {expected}, got {actual} ({bytes} bytes); the \
         artifact differs from the one the digest was taken of"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("{url}: the transfer failed after the unpack: {source}")]
    Drain {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens `url` as a byte stream; returns once the object is known to exist.
pub fn open(url: &str, opts: &FetchOptions) -> Result<Box<dyn Read + Send>, FetchError> {
    match Source::parse(url)? {
        Source::S3 { bucket, key } => s3::open(url, bucket, key, opts.clone()),
        Source::Http(u) => http::open(u),
        Source::File(path) => file::open(url, &path),
    }
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

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploy refused, current is unchanged and no release was created")]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// Fetches `url` and deploys it as a new release, checking `expected` before publishing.
pub fn deploy(
    layout: &Layout,
    url: &str,
    expected: Option<[u8; 32]>,
    version: Option<&str>,
    keep: usize,
    unpack: &UnpackOptions,
    opts: &FetchOptions,
) -> Result<Fetched, DeployError> {
    let source = open(url, opts)?;
    let (reader, digest) = stream::hashing(source);
    let mut seen = None;
    let verify = |_: &crate::artifact::UnpackStats| -> Result<(), release::VerifyFailed> {
        let (actual, bytes) = digest.finish().map_err(|source| FetchError::Drain {
            url: url.to_string(),
            source,
        })?;
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
    let deployed = match release::deploy_verified(layout, reader, version, keep, unpack, verify) {
        Ok(d) => d,
        // A corrupt archive with a digest given: the mismatch is the cause to report.
        Err(ReleaseError::Unpack(e)) if expected.is_some() => {
            return Err(mismatch_or(url, expected, &digest, ReleaseError::Unpack(e)));
        }
        Err(e) => return Err(e.into()),
    };
    let (sha256, bytes) = seen.unwrap_or_default();
    tracing::info!(url, sha256 = %hex::encode(sha256), bytes, release = %deployed.version, "fetched and deployed");
    Ok(Fetched {
        deployed,
        sha256,
        bytes,
    })
}

/// The digest mismatch behind a failed unpack, if there is one; else `err`.
fn mismatch_or(
    url: &str,
    expected: Option<[u8; 32]>,
    digest: &stream::DigestHandle,
    err: ReleaseError,
) -> DeployError {
    match (expected, digest.finish()) {
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
