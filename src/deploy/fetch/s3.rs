//! `s3://bucket/key` with aws-sdk-s3: the standard credential and region chain, an
//! optional endpoint (or `AWS_ENDPOINT_URL`), path-style addressing for S3-compatible
//! stores. The object body is streamed chunk by chunk to the unpacker.

use std::io::{self, Read};

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::config::{ProvideCredentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;

use super::stream;
use super::{FetchError, FetchOptions};
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
        let (mut body, length) = match get(&owned, &bucket, &key, &opts).await {
            Ok(got) => got,
            Err(e) => return head.fail(e),
        };
        head.ok(length);
        while let Some(chunk) = body.next().await {
            let item = chunk.map_err(|e| io::Error::other(format!("{owned}: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    })?;
    Ok(Box::new(reader))
}

async fn get(
    url: &str,
    bucket: &str,
    key: &str,
    opts: &FetchOptions,
) -> Result<(aws_sdk_s3::primitives::ByteStream, Option<u64>), FetchError> {
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
    let client = aws_sdk_s3::Client::from_conf(conf);
    tracing::debug!(url, ?endpoint, path_style, "s3 get");
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => {
            let length = out.content_length().and_then(|n| u64::try_from(n).ok());
            Ok((out.body, length))
        }
        Err(e) => Err(map_error(url, bucket, key, endpoint.as_deref(), e)),
    }
}

fn map_error(
    url: &str,
    bucket: &str,
    key: &str,
    endpoint: Option<&str>,
    err: SdkError<GetObjectError, aws_sdk_s3::config::http::HttpResponse>,
) -> FetchError {
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
                    detail: format!("{code} {message}").trim().to_string(),
                },
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
