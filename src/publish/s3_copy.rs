//! Storing the digest on an uploaded object: S3 fixes metadata when an upload starts,
//! before the digest is known, so the object is copied onto itself with it (server-side;
//! in parts above [`COPY_LIMIT`], the most one CopyObject may copy).

use std::collections::HashMap;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

use super::{
    COPY_LIMIT, COPY_PART, Connected, Upload, copy_source, deadline, request_error, sdk_error,
    upload_error,
};
use crate::publish::PublishError;

impl Upload<'_> {
    /// Copies the object onto itself with `metadata` (in parts above [`COPY_LIMIT`]).
    pub(super) async fn store_metadata(
        &self,
        metadata: HashMap<String, String>,
        bytes: u64,
    ) -> Result<(), PublishError> {
        let o = self.object;
        let source = copy_source(&o.bucket, &o.key);
        if bytes > COPY_LIMIT {
            return self.copy_in_parts(&source, metadata, bytes).await;
        }
        deadline(
            self.s3
                .client
                .copy_object()
                .bucket(&o.bucket)
                .key(&o.key)
                .copy_source(source)
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(Some(metadata))
                .content_type(o.content_type)
                .send(),
        )
        .await
        .map_err(|e| request_error(o, "storing the digest", e))?
        .map_err(|e| sdk_error(o, "storing the digest", e))?;
        Ok(())
    }

    /// The copy of an object too big for one CopyObject: a multipart upload whose parts
    /// are server-side copies of ranges of the object itself.
    async fn copy_in_parts(
        &self,
        source: &str,
        metadata: HashMap<String, String>,
        bytes: u64,
    ) -> Result<(), PublishError> {
        let o = self.object;
        let client = &self.s3.client;
        let fail = |e: String| upload_error(&o.url, format!("storing the digest: {e}"));
        let created = deadline(
            client
                .create_multipart_upload()
                .bucket(&o.bucket)
                .key(&o.key)
                .content_type(o.content_type)
                .set_metadata(Some(metadata))
                .send(),
        )
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(DisplayErrorContext(&e).to_string()))?;
        let id = created.upload_id().unwrap_or_default().to_string();
        let copy = Upload {
            object: o,
            s3: Connected {
                client: client.clone(),
                endpoint: self.s3.endpoint.clone(),
            },
            upload_id: id.clone(),
            done: Vec::new(),
        };
        let mut parts = Vec::new();
        let mut start = 0;
        while start < bytes {
            let end = (start + COPY_PART).min(bytes) - 1;
            let number = parts.len() as i32 + 1;
            let copied = deadline(
                client
                    .upload_part_copy()
                    .bucket(&o.bucket)
                    .key(&o.key)
                    .upload_id(&id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send(),
            )
            .await;
            let etag = match copied {
                Ok(Ok(out)) => out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string),
                Ok(Err(e)) => {
                    copy.abort().await;
                    return Err(fail(DisplayErrorContext(&e).to_string()));
                }
                Err(e) => {
                    copy.abort().await;
                    return Err(fail(e.to_string()));
                }
            };
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(etag)
                    .build(),
            );
            start = end + 1;
        }
        let done = deadline(
            client
                .complete_multipart_upload()
                .bucket(&o.bucket)
                .key(&o.key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send(),
        )
        .await;
        match done {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                copy.abort().await;
                Err(fail(DisplayErrorContext(&e).to_string()))
            }
            Err(e) => {
                copy.abort().await;
                Err(fail(e.to_string()))
            }
        }
    }
}
