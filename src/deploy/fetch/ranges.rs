//! A large S3 object as concurrent ranged GETs, handed on in order, each range retried on
//! its own.
//!
//! One GET of a whole object is one TCP stream: its speed is one connection's, and a
//! connection lost at 90% means starting again from byte 0 (the SDK retries a request
//! that failed to start, never a body cut off midway). Here the object is cut into
//! [`RANGE`]-byte ranges fetched [`PARALLEL`] at a time; a range that fails with a reset,
//! a timeout, throttling, a 5xx or a stall ([`STALL`] without a byte) is fetched again after
//! a backoff, up to [`ATTEMPTS`] times, and the ranges already fetched are kept. Every range asks for the version (ETag)
//! the first HEAD saw, so an object replaced midway fails the fetch rather than splicing
//! two versions (the sha256 over the whole stream would catch that too, later).
//!
//! Memory: at most [`PARALLEL`] ranges in flight plus what the reader's channel holds.

use std::io;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::s3::Object;
use super::stream;

/// Bytes per ranged GET; objects up to this size are fetched with one GET.
pub const RANGE: u64 = 4 << 20;
/// Ranged GETs in flight at once.
const PARALLEL: usize = 4;
/// Attempts per range, the first included.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Chunks handed to the reader (slices of a range, no copy).
const CHUNK: usize = 1 << 20;
/// A range attempt that gets no byte for this long is given up and tried again (a dead
/// connection), well before the fetch's own idle limit ([`stream::IDLE`]) ends it all. The
/// SDK's stalled-stream protection usually gives up on a stalled body sooner (about 5 s);
/// this also covers a response that never starts.
const STALL: Duration = Duration::from_secs(15);

/// Why a range failed.
enum Failure {
    /// Worth another attempt: a reset, a timeout, throttling, a 5xx, a short body.
    Transient(String),
    /// Not worth one: access, existence, a changed object.
    Final(String),
}

/// Fetches `size` bytes of `object` (at version `etag`) as ranges and sends them in order
/// on `tx`; a range that failed for good ends the stream with its error.
pub(super) async fn send_in_order(
    object: &Object<'_>,
    size: u64,
    etag: Option<String>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) {
    let starts = (0..size).step_by(RANGE as usize);
    let mut parts = futures_util::stream::iter(starts)
        .map(|start| fetch_range(object, start, (start + RANGE).min(size), etag.as_deref()))
        .buffered(PARALLEL);
    while let Some(part) = parts.next().await {
        let range = match part {
            Ok(range) => range,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for at in (0..range.len()).step_by(CHUNK) {
            let chunk = range.slice(at..(at + CHUNK).min(range.len()));
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
}

/// Bytes `start..end`, with retries: a lost connection is an `io::ErrorKind::
/// ConnectionAborted` error (the deploy may try again), anything else another kind.
async fn fetch_range(
    o: &Object<'_>,
    start: u64,
    end: u64,
    etag: Option<&str>,
) -> io::Result<Bytes> {
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match get_range(o, start, end, etag).await {
            Ok(bytes) => return Ok(bytes),
            Err(Failure::Final(why)) => return Err(io::Error::other(why)),
            Err(Failure::Transient(why)) if attempt >= ATTEMPTS => {
                return Err(stream::cut_off(format!("{why} ({ATTEMPTS} attempts)")));
            }
            Err(Failure::Transient(why)) => {
                tracing::info!(url = o.url, start, end, attempt, error = %why, "range fetched again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
        }
    }
}

async fn get_range(
    o: &Object<'_>,
    start: u64,
    end: u64,
    etag: Option<&str>,
) -> Result<Bytes, Failure> {
    let what = format!("{}: bytes {start}-{}", o.url, end - 1);
    let stalled = || Failure::Transient(format!("{what}: nothing for {STALL:?}"));
    let req = (o.s3.client.get_object().bucket(o.bucket).key(o.key))
        .range(format!("bytes={start}-{}", end - 1))
        .set_if_match(etag.map(str::to_owned));
    let out = (tokio::time::timeout(STALL, req.send()).await)
        .map_err(|_| stalled())?
        .map_err(|e| classify(o, &what, e))?;
    let (want, mut body) = ((end - start) as usize, out.body);
    let mut got = bytes::BytesMut::with_capacity(want);
    while let Some(chunk) =
        (tokio::time::timeout(STALL, body.next()).await).map_err(|_| stalled())?
    {
        let chunk = chunk.map_err(|e| Failure::Transient(format!("{what}: cut off: {e}")))?;
        if got.len() + chunk.len() > want {
            return Err(Failure::Transient(format!("{what}: the store sent more")));
        }
        got.extend_from_slice(&chunk);
    }
    if got.len() != want {
        let n = got.len();
        return Err(Failure::Transient(format!(
            "{what}: the store sent {n} bytes"
        )));
    }
    Ok(got.freeze())
}

fn classify<E>(
    o: &Object<'_>,
    what: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(se) => match se.raw().status().as_u16() {
            412 => Failure::Final(format!(
                "{what}: the object changed during the fetch (its ETag no longer matches); \
                 nothing was deployed from it"
            )),
            429 | 500 | 502..=504 => {
                Failure::Transient(format!("{what}: HTTP {}", se.raw().status().as_u16()))
            }
            _ => Failure::Final(o.error(e).to_string()),
        },
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Failure::Transient(format!("{what}: {}", o.error(e)))
        }
        _ => Failure::Final(o.error(e).to_string()),
    }
}
