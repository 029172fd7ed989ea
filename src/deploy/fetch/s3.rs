//! `s3://bucket/key` with aws-sdk-s3: the standard credential and region chain, an
//! optional endpoint (or `AWS_ENDPOINT_URL`), path-style addressing for S3-compatible
//! stores. One HEAD gives the object's size and version; a small object is streamed
//! chunk by chunk to the unpacker, a larger one fetched as concurrent ranged GETs, each
//! retried on its own ([`super::ranges`]).

use std::collections::HashMap;
use std::io::Read;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::config::{ProvideCredentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use bytes::Bytes;

use super::ranges::{self, Failure, STALL};
use super::{FetchError, FetchOptions};
use super::{peers, stream};
use crate::cancel::Cancel;

pub fn open(
    url: &str,
    bucket: String,
    key: String,
    opts: FetchOptions,
    cancel: &Cancel,
) -> Result<Box<dyn Read + Send>, FetchError> {
    let owned = url.to_string();
    let reader = stream::spawn(url, cancel, move |head, tx| async move {
        let s3 = match connect(&owned, &opts).await {
            Ok(s3) => s3,
            Err(e) => return head.fail(e),
        };
        let object = Object {
            s3: &s3,
            url: &owned,
            bucket: &bucket,
            key: &key,
        };
        // A failed HEAD has no body to name the problem: the GET below names it.
        let (size, etag) = object.size_and_version().await;
        match size {
            Some(size) if size > ranges::RANGE => {
                head.ok(Some(size));
                let index = object.index_bytes();
                match peers::in_front(opts.peers.as_ref(), &object, size, index).await {
                    Some(from) => ranges::send_in_order(&from, size, etag, &tx).await,
                    None => ranges::send_in_order(&object, size, etag, &tx).await,
                }
            }
            _ => {
                let (mut body, length) = match object.get().await {
                    Ok(got) => got,
                    Err(e) => return head.fail(e),
                };
                head.ok(length);
                while let Some(chunk) = body.next().await {
                    let item = chunk.map_err(|e| stream::cut_off(format!("{owned}: {e}")));
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
            }
        }
    })?;
    Ok(Box::new(reader))
}

/// One object of one store.
pub(super) struct Object<'a> {
    pub s3: &'a Connected,
    pub url: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
}

impl Object<'_> {
    /// Its size and version (ETag), by one HEAD request; nothing known when it fails.
    async fn size_and_version(&self) -> (Option<u64>, Option<String>) {
        tracing::debug!(url = self.url, endpoint = ?self.s3.endpoint, "s3 head");
        let (b, k) = (self.bucket, self.key);
        match self.s3.client.head_object().bucket(b).key(k).send().await {
            Ok(out) => {
                let size = out.content_length().and_then(|n| u64::try_from(n).ok());
                (size, out.e_tag().map(str::to_owned))
            }
            Err(_) => (None, None),
        }
    }

    /// The whole object as one stream.
    async fn get(&self) -> Result<(aws_sdk_s3::primitives::ByteStream, Option<u64>), FetchError> {
        tracing::debug!(url = self.url, endpoint = ?self.s3.endpoint, "s3 get");
        let (b, k) = (self.bucket, self.key);
        match self.s3.client.get_object().bucket(b).key(k).send().await {
            Ok(out) => {
                let length = out.content_length().and_then(|n| u64::try_from(n).ok());
                Ok((out.body, length))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// The chunk index beside the object (`KEY.chunks`), at most
    /// [`crate::fanout::index::MAX_ENCODED`] bytes.
    pub(super) async fn index_bytes(&self) -> Result<Vec<u8>, String> {
        use crate::fanout::index::{MAX_ENCODED, SUFFIX};
        let key = format!("{}{SUFFIX}", self.key);
        let url = format!("{}{SUFFIX}", self.url);
        let index = Object {
            s3: self.s3,
            url: &url,
            bucket: self.bucket,
            key: &key,
        };
        let (body, length) = index.get().await.map_err(|e| e.to_string())?;
        let length = length
            .filter(|&n| n <= MAX_ENCODED as u64)
            .ok_or_else(|| format!("{url}: no length, or over {MAX_ENCODED} bytes"))?;
        let body = futures_util::stream::unfold(body, |mut b| async move {
            b.next().await.map(|chunk| (chunk, b))
        });
        match ranges::gather(&url, length as usize, body).await {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(Failure::Transient(why) | Failure::Final(why)) => Err(why),
        }
    }

    pub(super) fn error<E>(
        &self,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> FetchError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        status_error(
            self.url,
            self.bucket,
            self.key,
            self.s3.endpoint.as_deref(),
            e,
        )
    }
}

impl ranges::RangeSource for Object<'_> {
    fn url(&self) -> &str {
        self.url
    }

    async fn get_range(&self, start: u64, end: u64, etag: Option<&str>) -> Result<Bytes, Failure> {
        let what = format!("{}: bytes {start}-{}", self.url, end - 1);
        let req = (self
            .s3
            .client
            .get_object()
            .bucket(self.bucket)
            .key(self.key))
        .range(format!("bytes={start}-{}", end - 1))
        .set_if_match(etag.map(str::to_owned));
        let out = (tokio::time::timeout(STALL, req.send()).await)
            .map_err(|_| ranges::stalled(&what))?
            .map_err(|e| self.classify(&what, e))?;
        let body = futures_util::stream::unfold(out.body, |mut b| async move {
            b.next().await.map(|chunk| (chunk, b))
        });
        ranges::gather(&what, (end - start) as usize, body).await
    }
}

impl Object<'_> {
    /// Whether a failed range is worth another attempt.
    fn classify<E>(
        &self,
        what: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match &e {
            SdkError::ServiceError(se) => match se.raw().status().as_u16() {
                412 => Failure::Final(ranges::changed(what)),
                status @ (429 | 500 | 502..=504) => {
                    Failure::Transient(format!("{what}: HTTP {status}"))
                }
                _ => Failure::Final(self.error(e).to_string()),
            },
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => {
                Failure::Transient(format!("{what}: {}", self.error(e)))
            }
            _ => Failure::Final(self.error(e).to_string()),
        }
    }
}

/// An S3 client set up from the AWS chain and `opts`, with the endpoint it talks to.
pub struct Connected {
    pub client: aws_sdk_s3::Client,
    /// The configured endpoint, for messages (`None`: AWS itself).
    pub endpoint: Option<String>,
}

/// A client from the AWS chain and `opts`; fails at once when no credentials are found
/// (`url` names the object in the error).
pub async fn connect(url: &str, opts: &FetchOptions) -> Result<Connected, FetchError> {
    let region = RegionProviderChain::first_try(opts.s3_region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(ep) = &opts.s3_endpoint {
        loader = loader.endpoint_url(ep);
    }
    let sdk = loader.load().await;
    let endpoint = sdk.endpoint_url().map(str::to_string);
    let no_creds = |detail: String| FetchError::NoCredentials {
        url: url.to_string(),
        detail,
    };
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| no_creds("no credential provider".into()))?;
    provider
        .provide_credentials()
        .await
        .map_err(|e| no_creds(DisplayErrorContext(&e).to_string()))?;
    let path_style = opts.s3_path_style.unwrap_or(endpoint.is_some());
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(path_style)
        .build();
    Ok(Connected {
        client: aws_sdk_s3::Client::from_conf(conf),
        endpoint,
    })
}

/// The object's metadata (`x-amz-meta-*`, keys lower case), or `None` when there is no
/// such object. One HEAD request.
pub async fn head(
    url: &str,
    bucket: &str,
    key: &str,
    s3: &Connected,
) -> Result<Option<HashMap<String, String>>, FetchError> {
    match s3.client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some(out.metadata().cloned().unwrap_or_default())),
        Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(None),
        Err(e) => Err(status_error(url, bucket, key, s3.endpoint.as_deref(), e)),
    }
}

/// The error for a failed S3 request on `bucket`/`key`, by its code and HTTP status.
pub fn status_error<E>(
    url: &str,
    bucket: &str,
    key: &str,
    endpoint: Option<&str>,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let url = url.to_string();
    let detail = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let status = se.raw().status().as_u16();
            let message = se.err().message().unwrap_or("");
            match (code, status) {
                ("NoSuchBucket", _) => FetchError::NoSuchBucket {
                    url,
                    bucket: bucket.into(),
                },
                ("NoSuchKey", _) | (_, 404) => FetchError::NoSuchKey {
                    url,
                    bucket: bucket.into(),
                    key: key.into(),
                },
                (_, 401 | 403) => FetchError::AccessDenied {
                    url,
                    detail: format!("HTTP {status} {code} {message}").trim().to_string(),
                },
                (_, 429 | 500 | 502..=504) => FetchError::HttpStatus { url, status },
                _ => FetchError::Other { url, detail },
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => FetchError::Unreachable {
            url,
            endpoint: endpoint.unwrap_or("the S3 endpoint").to_string(),
            detail,
        },
        _ => FetchError::Other { url, detail },
    }
}
