//! Why an artifact could not be fetched. Each names the URL; nothing was deployed.
//!
//! No variant carries bytes of the artifact: errors end up in outcomes that the whole fleet
//! sees, and the artifact may be any file a signed URL names.

use crate::cancel::Reason;

/// Why an artifact could not be fetched. Each names the URL; nothing was deployed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad artifact URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "no AWS credentials to reach {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
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
    #[error(
        "{url}: more than {limit} bytes follow the end of the archive; an artifact is one \
         archive with nothing after it"
    )]
    TrailingBytes { url: String, limit: u64 },
    #[error("{url}: fetch stopped: {reason}; nothing was deployed")]
    Cancelled { url: String, reason: Reason },
    #[error(
        "{url}: file:// artifacts are read only from the directories listed in \
         [deploy] file_roots ({roots}); put the artifact there or list its directory"
    )]
    OutsideFileRoots { url: String, roots: String },
    #[error(
        "{url}: leaves its file root through a symlink, a '..' or a mount point; name the \
         file by its real path inside the root"
    )]
    EscapesFileRoot { url: String },
    #[error("{url}: not a regular file (a device, FIFO or socket may never end or never answer)")]
    NotRegularFile { url: String },
}

impl FetchError {
    /// Whether trying again later may succeed: the store could not be reached, or answered
    /// that it cannot serve now (500, 502-504, 429). Refusals, missing objects and bad bytes
    /// are final.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::HttpStatus { status, .. } => matches!(status, 429 | 500 | 502..=504),
            _ => false,
        }
    }
}
