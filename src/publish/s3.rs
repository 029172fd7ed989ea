//! S3 as the destination: a multipart upload fed part by part while the export runs.
//!
//! The export writes on its own thread into a [`PartWriter`], which cuts the stream into
//! [`PART_SIZE`] parts and hands each to an uploader thread over a channel that holds one
//! part: memory stays at about three parts (one filling, one queued, one in flight)
//! whatever the artifact's size, and a slow store slows the export instead of growing a
//! buffer. The uploader owns the upload: it refuses an existing key before the export
//! starts, uploads parts, and on [`Sink::commit`] completes the upload (conditionally on
//! the key still being absent, unless replacing) and stores the digest as metadata by
//! copying the object onto itself (S3 metadata is fixed when an upload starts, before the
//! digest is known). On [`Sink::abort`], a failed part or a dropped sink, the multipart
//! upload is aborted, and an object completed but not yet given its digest is deleted.
//!
//! Every request has a deadline ([`REQUEST_DEADLINE`]); the endpoint, region and credentials
//! come from the fetcher's settings and the AWS chain ([`crate::deploy::fetch::s3`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::sync::{mpsc, oneshot, watch};

#[path = "s3_copy.rs"]
mod copy;

use super::{PublishError, PublishOptions, Sink};
use crate::deploy::fetch::digest::METADATA_KEY;
use crate::deploy::fetch::s3::{self as fetch_s3, Connected};
use crate::export::Compression;

/// Bytes per uploaded part (S3 wants at least 5 MiB for every part but the last).
pub const PART_SIZE: usize = 16 << 20;
/// The most parts one multipart upload may have.
const MAX_PARTS: u64 = 10_000;
/// The largest object a single CopyObject may copy; above it the copy goes in parts.
const COPY_LIMIT: u64 = 5 << 30;
/// Bytes per part when the metadata copy goes in parts.
const COPY_PART: u64 = 1 << 30;
/// Longest one S3 request may take (a part upload included).
const REQUEST_DEADLINE: Duration = Duration::from_secs(300);
/// Longest an abort waits for the uploader to clean up.
const ABORT_DEADLINE: Duration = Duration::from_secs(30);

/// The sink: the writer (taken by the export) and the line to the uploader.
pub struct S3Sink {
    writer: Option<PartWriter>,
    commit: Option<oneshot::Sender<Commit>>,
    abort: watch::Sender<bool>,
    /// Closed when the uploader has finished (its cleanup included).
    finished: std_mpsc::Receiver<()>,
    failure: Failure,
    url: String,
}

/// The first failure of the writer or the uploader, the cause to report.
type Failure = Arc<Mutex<Option<PublishError>>>;

/// The order to make the uploaded artifact visible, sent once every part is queued.
struct Commit {
    sha256: [u8; 32],
    bytes: u64,
    index: Option<Vec<u8>>,
    reply: std_mpsc::Sender<Result<(), PublishError>>,
}

/// What the uploader needs to know about its object.
struct Object {
    url: String,
    bucket: String,
    key: String,
    replace: bool,
    content_type: &'static str,
    /// Above this size the metadata copy goes in parts.
    copy_limit: u64,
}

impl S3Sink {
    /// Connects, refuses an existing key unless replacing, and starts the multipart upload.
    pub fn open(
        url: &str,
        bucket: &str,
        key: &str,
        opts: &PublishOptions,
    ) -> Result<Box<dyn Sink>, PublishError> {
        let object = Object {
            url: url.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            replace: opts.replace,
            copy_limit: opts.copy_limit.unwrap_or(COPY_LIMIT),
            content_type: match opts.output.compression {
                Compression::None => "application/x-tar",
                Compression::Gzip => "application/gzip",
                Compression::Zstd => "application/zstd",
            },
        };
        let (parts_tx, parts_rx) = mpsc::channel::<Vec<u8>>(1);
        let (commit, commit_rx) = oneshot::channel();
        let (abort, abort_rx) = watch::channel(false);
        let (finished_tx, finished) = std_mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let failure: Failure = Arc::default();
        let s3_opts = opts.s3.clone();
        let uploader_failure = failure.clone();
        let uploader = std::thread::Builder::new()
            .name("s3-upload".into())
            .spawn(move || {
                let _finished = finished_tx;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(upload_error(&object.url, e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = start(&object, &s3_opts).await;
                    let upload = match started {
                        Ok(u) => u,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    upload
                        .run(parts_rx, commit_rx, abort_rx, uploader_failure)
                        .await;
                });
            })
            .map_err(|e| upload_error(url, e.to_string()))?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(upload_error(url, "the uploader stopped".into())));
        if let Err(e) = ready {
            let _ = uploader.join();
            return Err(e);
        }
        drop(uploader); // detached: `finished` tells when it is done
        Ok(Box::new(S3Sink {
            writer: Some(PartWriter {
                buf: Vec::with_capacity(PART_SIZE),
                parts: 0,
                tx: Some(parts_tx),
                failure: failure.clone(),
                url: url.to_string(),
            }),
            commit: Some(commit),
            abort,
            finished,
            failure,
            url: url.to_string(),
        }))
    }

    fn take_failure(&self) -> Option<PublishError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl Sink for S3Sink {
    fn writer(&mut self) -> Box<dyn Write + Send> {
        Box::new(self.writer.take().expect("the writer is taken once"))
    }

    fn commit(
        mut self: Box<Self>,
        sha256: &[u8; 32],
        bytes: u64,
        index: Option<&[u8]>,
    ) -> Result<(), PublishError> {
        if let Some(e) = self.take_failure() {
            return Err(e);
        }
        let (reply, answer) = std_mpsc::channel();
        let order = Commit {
            sha256: *sha256,
            bytes,
            index: index.map(<[u8]>::to_vec),
            reply,
        };
        let sent = self.commit.take().map(|c| c.send(order).is_ok());
        let answered = match sent {
            Some(true) => answer.recv().ok(),
            _ => None,
        };
        // The uploader is done either way: wait for it, so nothing of it outlives the sink.
        let _ = self.finished.recv();
        answered.unwrap_or_else(|| {
            Err(self
                .take_failure()
                .unwrap_or_else(|| upload_error(&self.url, "the uploader stopped".into())))
        })
    }

    fn abort(mut self: Box<Self>) -> Option<PublishError> {
        self.stop();
        self.take_failure()
    }
}

impl S3Sink {
    /// Tells the uploader to abort and waits for it, up to [`ABORT_DEADLINE`].
    fn stop(&mut self) {
        let _ = self.abort.send(true);
        if let Err(std_mpsc::RecvTimeoutError::Timeout) = self.finished.recv_timeout(ABORT_DEADLINE)
        {
            tracing::warn!("the S3 upload did not confirm its abort in time");
        }
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The export's side: fills parts and queues them for the uploader.
struct PartWriter {
    buf: Vec<u8>,
    parts: u64,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    failure: Failure,
    url: String,
}

impl PartWriter {
    fn send_part(&mut self) -> io::Result<()> {
        self.parts += 1;
        if self.parts > MAX_PARTS {
            let limit = MAX_PARTS * PART_SIZE as u64;
            let e = PublishError::TooLarge {
                url: self.url.clone(),
                limit,
            };
            record(&self.failure, e);
            return Err(io::Error::other(format!("more than {limit} bytes")));
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.blocking_send(part).map_err(|_| stopped())
    }
}

fn stopped() -> io::Error {
    io::Error::other("the upload stopped")
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART_SIZE {
            self.send_part()?;
        }
        Ok(n)
    }

    /// Sends nothing: every part but the last must be full, and only the end knows which
    /// is the last (dropping the writer sends it).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PartWriter {
    /// Hands over the last part (possibly empty, for an empty artifact) and ends the stream.
    /// Off a runtime thread this blocks for room; on one it cannot, and the upload is
    /// marked failed rather than completed short.
    fn drop(&mut self) {
        let handed_over = if tokio::runtime::Handle::try_current().is_ok() {
            false
        } else if self.buf.is_empty() && self.parts > 0 {
            true
        } else {
            self.send_part().is_ok()
        };
        if !handed_over {
            record(
                &self.failure,
                upload_error(&self.url, "the last part was not handed over".into()),
            );
        }
        self.tx = None;
    }
}

fn record(failure: &Failure, e: PublishError) {
    if let Ok(mut f) = failure.lock() {
        f.get_or_insert(e);
    }
}

fn upload_error(url: &str, detail: String) -> PublishError {
    PublishError::Upload {
        url: url.to_string(),
        detail,
    }
}

/// Connects, checks the key, and creates the multipart upload.
async fn start<'a>(
    object: &'a Object,
    opts: &crate::deploy::fetch::FetchOptions,
) -> Result<Upload<'a>, PublishError> {
    let s3 = fetch_s3::connect(&object.url, opts).await?;
    if !object.replace
        && fetch_s3::head(&object.url, &object.bucket, &object.key, &s3)
            .await?
            .is_some()
    {
        return Err(PublishError::Exists {
            url: object.url.clone(),
        });
    }
    let created = deadline(
        s3.client
            .create_multipart_upload()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(object.content_type)
            .send(),
    )
    .await
    .map_err(|e| request_error(object, "starting the upload", e))?
    .map_err(|e| {
        fetch_s3::status_error(
            &object.url,
            &object.bucket,
            &object.key,
            s3.endpoint.as_deref(),
            e,
        )
    })?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| upload_error(&object.url, "the store returned no upload id".into()))?
        .to_string();
    Ok(Upload {
        object,
        s3,
        upload_id,
        done: Vec::new(),
    })
}

/// A started multipart upload, run by the uploader thread.
struct Upload<'a> {
    object: &'a Object,
    s3: Connected,
    upload_id: String,
    done: Vec<CompletedPart>,
}

impl Upload<'_> {
    /// Uploads parts as they come, then completes on the commit; an abort (at any point)
    /// or a failure aborts the upload. A failure is recorded for the sink to report.
    async fn run(
        mut self,
        mut parts: mpsc::Receiver<Vec<u8>>,
        commit: oneshot::Receiver<Commit>,
        mut abort: watch::Receiver<bool>,
        failure: Failure,
    ) {
        let uploaded = tokio::select! {
            biased;
            _ = abort.wait_for(|a| *a) => return self.abort().await,
            r = self.upload_all(&mut parts) => r,
        };
        if let Err(e) = uploaded {
            record(&failure, e);
            drop(parts);
            return self.abort().await;
        }
        // Every part was queued before the commit, so no part can come after it.
        let order = tokio::select! {
            biased;
            _ = abort.wait_for(|a| *a) => return self.abort().await,
            order = commit => order,
        };
        match order {
            Ok(Commit {
                sha256,
                bytes,
                index,
                reply,
            }) => {
                let result = self.commit(&sha256, bytes, index).await;
                let _ = reply.send(result);
            }
            Err(_) => self.abort().await,
        }
    }

    /// Uploads every part until the writer is done.
    async fn upload_all(
        &mut self,
        parts: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), PublishError> {
        while let Some(part) = parts.recv().await {
            self.upload_part(part).await?;
        }
        Ok(())
    }

    async fn upload_part(&mut self, part: Vec<u8>) -> Result<(), PublishError> {
        let number = self.done.len() as i32 + 1;
        let o = self.object;
        let sent = deadline(
            self.s3
                .client
                .upload_part()
                .bucket(&o.bucket)
                .key(&o.key)
                .upload_id(&self.upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send(),
        )
        .await
        .map_err(|e| request_error(o, "uploading a part", e))?
        .map_err(|e| sdk_error(o, "uploading a part", e))?;
        self.done.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    /// Completes the upload, stores the chunk index (it names the artifact's digest, so one
    /// left behind by a failure is never taken for another artifact), then the digest; an
    /// object that got no index or no digest is deleted again.
    async fn commit(
        self,
        sha256: &[u8; 32],
        bytes: u64,
        index: Option<Vec<u8>>,
    ) -> Result<(), PublishError> {
        if let Err(e) = self.complete(!self.object.replace).await {
            self.abort().await;
            return Err(e);
        }
        if let Some(index) = index
            && let Err(e) = self.put_index(index).await
        {
            self.delete().await;
            return Err(e);
        }
        let metadata = HashMap::from([(METADATA_KEY.to_string(), hex::encode(sha256))]);
        if let Err(e) = self.store_metadata(metadata, bytes).await {
            self.delete().await;
            return Err(e);
        }
        Ok(())
    }

    /// Stores `index` as `KEY.chunks`.
    async fn put_index(&self, index: Vec<u8>) -> Result<(), PublishError> {
        let o = self.object;
        let key = format!("{}{}", o.key, crate::fanout::index::SUFFIX);
        let put = (self.s3.client.put_object())
            .bucket(&o.bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(index));
        deadline(put.send())
            .await
            .map_err(|e| request_error(o, "storing the chunk index", e))?
            .map_err(|e| sdk_error(o, "storing the chunk index", e))?;
        Ok(())
    }

    /// Completes the upload from the parts uploaded; `only_if_absent` makes it fail (as
    /// [`PublishError::Exists`]) when the key was created meanwhile.
    async fn complete(&self, only_if_absent: bool) -> Result<(), PublishError> {
        let o = self.object;
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(self.done.clone()))
            .build();
        let mut complete = (self.s3.client.complete_multipart_upload())
            .bucket(&o.bucket)
            .key(&o.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts);
        if only_if_absent {
            complete = complete.if_none_match("*");
        }
        deadline(complete.send())
            .await
            .map_err(|e| request_error(o, "completing the upload", e))?
            .map_err(|e| completion_error(o, e))?;
        Ok(())
    }

    /// Aborts the multipart upload (the store drops its parts); a failure is logged, as
    /// the store's lifecycle rules are then the only cleanup left.
    async fn abort(&self) {
        let o = self.object;
        let aborted = deadline(
            self.s3
                .client
                .abort_multipart_upload()
                .bucket(&o.bucket)
                .key(&o.key)
                .upload_id(&self.upload_id)
                .send(),
        )
        .await;
        if !matches!(aborted, Ok(Ok(_))) {
            tracing::warn!(
                url = %o.url,
                upload_id = %self.upload_id,
                "could not abort the multipart upload; the store keeps its parts until its lifecycle rules remove them"
            );
        }
    }

    /// Deletes the completed object (it never got its digest).
    async fn delete(&self) {
        let o = self.object;
        let deleted = deadline(
            self.s3
                .client
                .delete_object()
                .bucket(&o.bucket)
                .key(&o.key)
                .send(),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::warn!(url = %o.url, "could not delete the object that got no digest; delete it by hand");
        }
    }
}

/// `BUCKET/KEY` for `x-amz-copy-source`, the key percent-encoded (its `/` kept).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn deadline<F: std::future::Future>(f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(REQUEST_DEADLINE, f).await
}

fn request_error(o: &Object, action: &str, _: tokio::time::error::Elapsed) -> PublishError {
    upload_error(
        &o.url,
        format!("{action} took longer than {}s", REQUEST_DEADLINE.as_secs()),
    )
}

fn sdk_error<E: std::error::Error + 'static>(
    o: &Object,
    action: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PublishError {
    upload_error(&o.url, format!("{action}: {}", DisplayErrorContext(&e)))
}

/// A refused completion: a key created meanwhile (412) is [`PublishError::Exists`].
fn completion_error<E: std::error::Error + 'static>(
    o: &Object,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PublishError {
    if let aws_sdk_s3::error::SdkError::ServiceError(se) = &e
        && se.raw().status().as_u16() == 412
    {
        return PublishError::Exists { url: o.url.clone() };
    }
    sdk_error(o, "completing the upload", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_encode_the_key_but_keep_its_slashes() {
        assert_eq!(copy_source("b", "web/v1.tar.zst"), "b/web/v1.tar.zst");
        assert_eq!(copy_source("b", "a b/ü+?"), "b/a%20b/%C3%BC%2B%3F");
    }
}
