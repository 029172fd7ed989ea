//! The sha256 a publisher stored with an artifact, so a deploy can be pinned without the
//! operator copying digests around.
//!
//! `publish` computes the digest while it streams and stores it where a reader finds it
//! with one request: on S3 as object metadata (`x-amz-meta-sha256`), for `file://` in a
//! sidecar `NAME.sha256` beside the artifact, in `sha256sum` format (so `sha256sum -c`
//! checks it by hand). The digest only pins the event: every node still hashes the whole
//! artifact as it unpacks and activates nothing that differs, so a store that lies about
//! the digest can make a deploy fail, never make a node run other bytes.

use std::io::Read;
use std::path::Path;

use super::{FetchError, FetchOptions, Source, s3};

/// The S3 user-metadata key of the digest (sent as `x-amz-meta-sha256`).
pub const METADATA_KEY: &str = "sha256";

/// Appended to a `file://` artifact's path for its digest sidecar.
pub const SIDECAR_SUFFIX: &str = ".sha256";

/// Largest sidecar read: one line of `sha256sum` output with a long name.
const MAX_SIDECAR: u64 = 4096;

/// The digest published with the artifact at `url`: `Ok(None)` when the artifact exists
/// but carries none. An artifact that does not exist is an error.
pub async fn published(url: &str, opts: &FetchOptions) -> Result<Option<[u8; 32]>, FetchError> {
    match Source::parse(url)? {
        Source::S3 { bucket, key } => {
            let s3 = s3::connect(url, opts).await?;
            let Some(meta) = s3::head(url, &bucket, &key, &s3).await? else {
                return Err(FetchError::NoSuchKey {
                    url: url.into(),
                    bucket,
                    key,
                });
            };
            match meta.get(METADATA_KEY) {
                None => Ok(None),
                Some(text) => parse(text).map(Some).map_err(|reason| FetchError::Other {
                    url: url.into(),
                    detail: format!("its {METADATA_KEY} metadata is not a digest: {reason}"),
                }),
            }
        }
        Source::File(path) => sidecar(url, &path),
        Source::Http(_) => Err(FetchError::NoPublishedDigest { url: url.into() }),
    }
}

/// The sha256 of the chunk index `publish` stored beside the S3 artifact at `url` whose
/// digest is `sha256` ([`crate::fanout::index`]), for the event to pin: `Ok(None)` when
/// there is none (a small artifact, another scheme, an older publish) or the one there
/// belongs to another artifact.
pub async fn published_index(
    url: &str,
    sha256: &[u8; 32],
    opts: &FetchOptions,
) -> Result<Option<[u8; 32]>, FetchError> {
    use crate::fanout::index::{ChunkIndex, SUFFIX};
    let Source::S3 { bucket, key } = Source::parse(url)? else {
        return Ok(None);
    };
    let s3 = s3::connect(url, opts).await?;
    let index_key = format!("{key}{SUFFIX}");
    if s3::head(url, &bucket, &index_key, &s3).await?.is_none() {
        return Ok(None);
    }
    let object = s3::Object {
        s3: &s3,
        url,
        bucket: &bucket,
        key: &key,
    };
    let bytes = object
        .index_bytes()
        .await
        .map_err(|detail| FetchError::Other {
            url: format!("{url}{SUFFIX}"),
            detail,
        })?;
    let index = ChunkIndex::decode(&bytes).map_err(|e| FetchError::Other {
        url: format!("{url}{SUFFIX}"),
        detail: e.to_string(),
    })?;
    Ok((&index.artifact == sha256).then(|| index.digest()))
}

/// The sidecar path of a `file://` artifact.
pub fn sidecar_path(artifact: &Path) -> std::path::PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(SIDECAR_SUFFIX);
    name.into()
}

/// The sidecar's text: `HEX  NAME\n`, as `sha256sum` prints it.
pub fn sidecar_text(sha256: &[u8; 32], name: &str) -> String {
    format!("{}  {name}\n", hex::encode(sha256))
}

fn sidecar(url: &str, artifact: &Path) -> Result<Option<[u8; 32]>, FetchError> {
    if !artifact.is_file() {
        return Err(FetchError::NoSuchFile { url: url.into() });
    }
    let path = sidecar_path(artifact);
    let file = match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other,
    };
    let mut text = String::new();
    file.and_then(|f| f.take(MAX_SIDECAR).read_to_string(&mut text))
        .map_err(|source| FetchError::File {
            url: format!("file://{}", path.display()),
            source,
        })?;
    let first = text.split_whitespace().next().unwrap_or("");
    parse(first).map(Some).map_err(|reason| FetchError::Other {
        url: url.into(),
        detail: format!("its sidecar {} holds no digest: {reason}", path.display()),
    })
}

fn parse(text: &str) -> Result<[u8; 32], String> {
    super::parse_sha256(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published_blocking(url: &str) -> Result<Option<[u8; 32]>, FetchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(published(url, &FetchOptions::default()))
    }

    /// A sidecar written by `sidecar_text` reads back; a missing one is "no digest"; a
    /// missing artifact and a garbled sidecar are errors naming the problem.
    #[test]
    fn file_sidecars_round_trip_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("v1.tar");
        let url = format!("file://{}", art.display());
        assert!(matches!(
            published_blocking(&url),
            Err(FetchError::NoSuchFile { .. })
        ));
        std::fs::write(&art, b"tar").unwrap();
        assert_eq!(published_blocking(&url).unwrap(), None);
        std::fs::write(sidecar_path(&art), sidecar_text(&[7; 32], "v1.tar")).unwrap();
        assert_eq!(published_blocking(&url).unwrap(), Some([7; 32]));
        std::fs::write(sidecar_path(&art), "nonsense  v1.tar\n").unwrap();
        let err = published_blocking(&url).unwrap_err().to_string();
        assert!(err.contains("holds no digest"), "{err}");
    }

    #[test]
    fn https_urls_carry_no_published_digest() {
        let err = published_blocking("https://example.invalid/a.tar").unwrap_err();
        assert!(matches!(err, FetchError::NoPublishedDigest { .. }), "{err}");
    }
}
