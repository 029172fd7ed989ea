//! A large object (S3, or HTTP(S) from a server that takes ranges) as concurrent ranged
//! GETs, handed on in order, each range retried on its own.
//!
//! One GET of a whole object is one TCP stream: its speed is one connection's, and a
//! connection lost at 90% means starting again from byte 0 (the SDK retries a request
//! that failed to start, never a body cut off midway). Here the object is cut into
//! [`RANGE`]-byte ranges fetched [`PARALLEL`] at a time; a range that fails with a reset,
//! a timeout, throttling, a 5xx or a stall ([`STALL`] without a byte) is fetched again after
//! a backoff, up to [`ATTEMPTS`] times, and the ranges already fetched are kept. Every range
//! asks for the version (ETag) the first HEAD saw, so an object replaced midway fails the
//! fetch rather than splicing two versions (the sha256 over the whole stream would catch
//! that too, later). What a store answers is its [`RangeSource`]'s to read: S3 in
//! [`super::s3`], HTTP in [`super::http`].
//!
//! Memory: at most [`PARALLEL`] ranges in flight plus what the reader's channel holds.
//!
//! A range is handed on only once whole, so on a slow link the reader may see nothing for
//! longer than the fetch's idle limit ([`stream::IDLE`]) while bytes keep arriving. Every
//! [`BEAT`] that bytes arrived for any range, an empty chunk goes out instead: the idle
//! watch takes it as progress and never passes it to the reader.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::stream;

/// Bytes per ranged GET; objects up to this size are fetched with one GET.
pub const RANGE: u64 = 4 << 20;
/// How often a fetch says that bytes are arriving while its next range is incomplete.
pub(super) const BEAT: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Bytes that arrived for any range of the fetch it is set for ([`send_in_order`]).
    static ARRIVED: Arc<AtomicU64>;
}

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
pub(super) const STALL: Duration = Duration::from_secs(15);

/// Why a range failed.
pub(super) enum Failure {
    /// Worth another attempt: a reset, a timeout, throttling, a 5xx, a short body.
    Transient(String),
    /// Not worth one: access, existence, a changed object.
    Final(String),
}

/// Where ranges come from: one object of one store.
pub(super) trait RangeSource: Sync {
    /// The object's URL, for messages.
    fn url(&self) -> &str;
    /// One attempt at bytes `start..end` of the object at version `etag`.
    fn get_range(
        &self,
        start: u64,
        end: u64,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Bytes, Failure>> + Send;
}

/// Fetches `size` bytes of `object` (at version `etag`) as ranges and sends them in order
/// on `tx`; a range that failed for good ends the stream with its error.
pub(super) async fn send_in_order(
    object: &impl RangeSource,
    size: u64,
    etag: Option<String>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) {
    let starts = (0..size).step_by(RANGE as usize);
    let arrived = Arc::new(AtomicU64::new(0));
    let mut parts = futures_util::stream::iter(starts)
        .map(|start| {
            let range = fetch_range(object, start, (start + RANGE).min(size), etag.as_deref());
            ARRIVED.scope(arrived.clone(), range)
        })
        .buffered(PARALLEL);
    let mut beat = tokio::time::interval(BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut told = 0;
    loop {
        let part = tokio::select! {
            part = parts.next() => part,
            _ = beat.tick() => {
                let now = arrived.load(Ordering::Relaxed);
                if now != told && tx.send(Ok(Bytes::new())).await.is_err() {
                    return;
                }
                told = now;
                continue;
            }
        };
        let Some(part) = part else { return };
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
    o: &impl RangeSource,
    start: u64,
    end: u64,
    etag: Option<&str>,
) -> io::Result<Bytes> {
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match o.get_range(start, end, etag).await {
            Ok(bytes) => return Ok(bytes),
            Err(Failure::Final(why)) => return Err(io::Error::other(why)),
            Err(Failure::Transient(why)) if attempt >= ATTEMPTS => {
                return Err(stream::cut_off(format!("{why} ({ATTEMPTS} attempts)")));
            }
            Err(Failure::Transient(why)) => {
                tracing::info!(url = o.url(), start, end, attempt, error = %why, "range fetched again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
        }
    }
}

/// The body of range `what`: exactly `want` bytes, none of its chunks more than [`STALL`]
/// after the one before.
pub(super) async fn gather<E: std::fmt::Display>(
    what: &str,
    want: usize,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<Bytes, Failure> {
    let mut body = std::pin::pin!(body);
    let mut got = bytes::BytesMut::with_capacity(want);
    while let Some(chunk) =
        (tokio::time::timeout(STALL, body.next()).await).map_err(|_| stalled(what))?
    {
        let chunk = chunk.map_err(|e| Failure::Transient(format!("{what}: cut off: {e}")))?;
        let _ = ARRIVED.try_with(|a| a.fetch_add(chunk.len() as u64, Ordering::Relaxed));
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

/// A range attempt that got no byte for [`STALL`].
pub(super) fn stalled(what: &str) -> Failure {
    Failure::Transient(format!("{what}: nothing for {STALL:?}"))
}

/// The message of a range refused because the object is no longer the version the HEAD saw.
pub(super) fn changed(what: &str) -> String {
    format!(
        "{what}: the object changed during the fetch (its ETag no longer matches); \
         nothing was deployed from it"
    )
}
