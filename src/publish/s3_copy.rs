//! Storing the digest on an uploaded object: S3 fixes metadata when an upload starts,
//! before the digest is known, so the object is copied onto itself with it (server-side;
//! in parts above [`super::COPY_LIMIT`], the most one CopyObject may copy).

use std::collections::HashMap;

use aws_sdk_s3::types::{CompletedPart, MetadataDirective};

use super::{COPY_PART, Connected, Upload, copy_source, deadline, request_error, sdk_error};
use crate::publish::PublishError;

impl Upload<'_> {
    /// Copies the object onto itself with `metadata` (in parts above its copy limit,
    /// [`super::COPY_LIMIT`] unless set lower).
    pub(super) async fn store_metadata(
        &self,
        metadata: HashMap<String, String>,
        bytes: u64,
    ) -> Result<(), PublishError> {
        let o = self.object;
        let source = copy_source(&o.bucket, &o.key);
        if bytes > o.copy_limit {
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
    /// are server-side copies of ranges of the object itself. A failed copy is aborted.
    async fn copy_in_parts(
        &self,
        source: &str,
        metadata: HashMap<String, String>,
        bytes: u64,
    ) -> Result<(), PublishError> {
        let o = self.object;
        let created = deadline(
            (self.s3.client.create_multipart_upload())
                .bucket(&o.bucket)
                .key(&o.key)
                .content_type(o.content_type)
                .set_metadata(Some(metadata))
                .send(),
        )
        .await
        .map_err(|e| request_error(o, "storing the digest", e))?
        .map_err(|e| sdk_error(o, "storing the digest", e))?;
        let mut copy = Upload {
            object: o,
            s3: Connected {
                client: self.s3.client.clone(),
                endpoint: self.s3.endpoint.clone(),
            },
            upload_id: created.upload_id().unwrap_or_default().to_string(),
            done: Vec::new(),
        };
        let copied = match copy.copy_ranges(source, bytes).await {
            Ok(()) => copy.complete(false).await,
            Err(e) => Err(e),
        };
        if copied.is_err() {
            copy.abort().await;
        }
        copied
    }

    /// Copies `source` into this upload, one [`COPY_PART`] range per part.
    async fn copy_ranges(&mut self, source: &str, bytes: u64) -> Result<(), PublishError> {
        let o = self.object;
        let mut start = 0;
        while start < bytes {
            let end = (start + COPY_PART).min(bytes) - 1;
            let number = self.done.len() as i32 + 1;
            let copied = deadline(
                (self.s3.client.upload_part_copy())
                    .bucket(&o.bucket)
                    .key(&o.key)
                    .upload_id(&self.upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send(),
            )
            .await
            .map_err(|e| request_error(o, "storing the digest: copying a part", e))?
            .map_err(|e| sdk_error(o, "storing the digest: copying a part", e))?;
            let etag = copied.copy_part_result().and_then(|r| r.e_tag());
            self.done.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(etag.map(str::to_string))
                    .build(),
            );
            start = end + 1;
        }
        Ok(())
    }
}
