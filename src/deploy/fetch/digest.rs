//! The sha256 a publisher stored with an artifact, so a deploy can be pinned without the
//! operator copying digests around.
//!
//! `publish` computes the digest while it streams and stores it where a reader finds it
//! with one request: on S3 as object metadata (`x-amz-meta-sha256`), for `file://` in a
//! sidecar `NAME.sha256` beside the artifact, in `sha256sum` format (so `sha256sum -c`
//! checks it by hand). A directory `publish` wrote, served over `https://` as it is, has
//! the same sidecar at `URL.sha256`; over plain `http://` none is read (anyone on the path
//! could change it). The digest pins the event: every node hashes the whole artifact as it
//! unpacks and activates nothing that differs, so all nodes run the bytes pinned. The
//! store's word is taken once, when the CLI reads it: a store not trusted then can pin its
//! own bytes, and the operator gives the digest `publish` printed instead.

use std::io::Read;
use std::path::Path;

use super::{FetchError, FetchOptions, Source, http, s3};

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
        Source::Http(_) if !url.starts_with("https://") => Err(FetchError::Other {
            url: url.into(),
            detail: "a digest read over plain http:// is whatever anyone on the path says; \
                     give the digest with the deploy, or serve the artifact over https://"
                .into(),
        }),
        Source::Http(_) => {
            // The artifact first: a digest left beside an artifact that is gone pins
            // nothing any node can fetch.
            if !http::exists(url).await? {
                return Err(FetchError::HttpNotFound { url: url.into() });
            }
            let sidecar = http::beside_url(url, SIDECAR_SUFFIX);
            let bytes = http::small_object(&sidecar, MAX_SIDECAR as usize).await?;
            (bytes.map(|b| sidecar_digest(url, &String::from_utf8_lossy(&b), &sidecar))).transpose()
        }
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
    use crate::fanout::index::{ChunkIndex, MAX_ENCODED, SUFFIX};
    let bytes = match Source::parse(url)? {
        Source::S3 { bucket, key } => {
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
            let bytes = object.index_bytes().await;
            bytes.map_err(|detail| FetchError::Other {
                url: format!("{url}{SUFFIX}"),
                detail,
            })?
        }
        // Over plain http:// too: the index must name the digest the event pins, and every
        // piece must match it.
        Source::Http(_) => {
            let index_url = http::beside_url(url, SUFFIX);
            match http::small_object(&index_url, MAX_ENCODED).await? {
                Some(bytes) => bytes.to_vec(),
                None => return Ok(None),
            }
        }
        // Read where it is, never taken from peers.
        Source::File(_) => return Ok(None),
    };
    let index = ChunkIndex::decode(&bytes).map_err(|e| FetchError::Other {
        url: format!("{url}{SUFFIX}"),
        detail: e.to_string(),
    })?;
    Ok((&index.artifact == sha256).then(|| index.digest()))
}

/// The sidecar path of a `file://` artifact.
pub fn sidecar_path(artifact: &Path) -> std::path::PathBuf {
    beside(artifact, SIDECAR_SUFFIX)
}

/// `NAME{suffix}` beside the artifact at `path`.
pub fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
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
    sidecar_digest(url, &text, &path.display().to_string()).map(Some)
}

/// The digest a sidecar's text (`HEX  NAME`) names.
fn sidecar_digest(url: &str, text: &str, sidecar: &str) -> Result<[u8; 32], FetchError> {
    let first = text.split_whitespace().next().unwrap_or("");
    parse(first).map_err(|reason| FetchError::Other {
        url: url.into(),
        detail: format!("its sidecar {sidecar} holds no digest: {reason}"),
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
            .enable_all()
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

    /// Over https the digest is read from the sidecar `URL.sha256`; a server that cannot
    /// be reached is an error naming the sidecar, not "no digest". Over plain http none is
    /// read at all.
    #[test]
    fn http_sidecars_only_over_tls() {
        // The artifact is asked for first; its sidecar sits beside it, query kept.
        let err = published_blocking("https://127.0.0.1:1/a.tar?v=2").unwrap_err();
        assert!(err.to_string().contains("a.tar?v=2"), "{err}");
        assert_eq!(
            http::beside_url("https://h/a.tar?v=2#f", SIDECAR_SUFFIX),
            "https://h/a.tar.sha256?v=2#f"
        );
        let err = published_blocking("http://127.0.0.1:1/a.tar").unwrap_err();
        assert!(err.to_string().contains("plain http://"), "{err}");
    }
}
