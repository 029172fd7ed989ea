//! The sync side of a fetch: a `Read` fed by an async body through a bounded channel, and
//! a reader that hashes every byte it passes on.
//!
//! Guarantees: at most [`DEPTH`] body chunks are buffered between the network and the
//! unpacker (no temp file, bounded memory); [`DigestHandle::finish`] drains the source to
//! EOF first, so the digest covers the whole object, including bytes after the tar end
//! marker and the compression trailer, but only up to a limit: an endless body after the
//! archive fails the fetch. A server that sends nothing for [`IDLE`] (no answer, or a body
//! that stalls) fails the fetch instead of holding it forever, a body longer or shorter than
//! the length the server announced fails it, a tripped [`Cancel`] ends the transfer (which
//! wakes the reader), and a failure mid-body stays the reader's answer on every later read.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::FetchError;
use crate::cancel::Cancel;

/// Body chunks in flight between the runtime thread and the reader.
pub const DEPTH: usize = 8;

/// How long a server may send nothing (no answer, or no body bytes) before the fetch fails.
pub const IDLE: Duration = Duration::from_secs(60);

/// A body cut off mid-transfer (the connection lost, not the bytes bad): its kind,
/// `ConnectionAborted`, survives the readers stacked on it, so the deploy can tell it from
/// a corrupt archive and try again ([`super::DeployError::is_transient`]).
pub fn cut_off(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, text)
}

/// A blocking `Read` over chunks sent by an async producer. The producer sends an
/// `Err` to report a failure mid-body; dropping the sender is EOF.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// The failure already reported, repeated on later reads (never a silent EOF).
    failed: Option<(io::ErrorKind, String)>,
}

impl ChannelReader {
    /// A bounded channel: the sender half for the async side, and the reader.
    pub fn pair() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
        let (tx, rx) = mpsc::channel(DEPTH);
        (
            tx,
            ChannelReader {
                rx,
                current: Bytes::new(),
                failed: None,
            },
        )
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some((kind, text)) = &self.failed {
                return Err(io::Error::new(*kind, text.clone()));
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Artifact bytes read by this process, over its life (a Prometheus counter).
static FETCHED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Every byte a [`HashingReader`] (every artifact fetch goes through one) read from its
/// source since the process started, failed fetches included.
pub fn fetched_bytes() -> u64 {
    FETCHED_BYTES.load(Ordering::Relaxed)
}

struct HashState {
    source: Box<dyn Read + Send>,
    hasher: Sha256,
    bytes: u64,
}

fn lock(state: &Mutex<HashState>) -> MutexGuard<'_, HashState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl HashState {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        FETCHED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Passes `source` through, hashing every byte.
pub struct HashingReader {
    state: Arc<Mutex<HashState>>,
}

/// Finishes the hash of a [`HashingReader`]'s source, after the reader is done with it.
pub struct DigestHandle {
    state: Arc<Mutex<HashState>>,
}

/// Wraps `source`; the handle gives the digest of the whole stream.
pub fn hashing(source: Box<dyn Read + Send>) -> (HashingReader, DigestHandle) {
    let state = Arc::new(Mutex::new(HashState {
        source,
        hasher: Sha256::new(),
        bytes: 0,
    }));
    (
        HashingReader {
            state: state.clone(),
        },
        DigestHandle { state },
    )
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        lock(&self.state).read(buf)
    }
}

/// Why [`DigestHandle::finish`] could not complete the digest.
#[derive(Debug)]
pub enum Finish {
    /// More than the allowed bytes follow what the reader took.
    Trailing,
    Read(io::Error),
}

impl DigestHandle {
    /// Reads the rest of the source to EOF, then returns the sha256 and the byte count of
    /// everything the source produced. Fails when more than `max_rest` bytes are left.
    pub fn finish(&self, max_rest: u64) -> Result<([u8; 32], u64), Finish> {
        let mut state = lock(&self.state);
        let mut buf = vec![0; 64 << 10];
        let mut rest = 0u64;
        loop {
            let want = buf.len().min(
                usize::try_from(max_rest.saturating_sub(rest).saturating_add(1))
                    .unwrap_or(usize::MAX),
            );
            match state.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    rest += n as u64;
                    if rest > max_rest {
                        return Err(Finish::Trailing);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Finish::Read(e)),
            }
        }
        Ok((state.hasher.clone().finalize().into(), state.bytes))
    }
}

/// Reports the outcome of the request head (status, object found) back to [`spawn`].
pub struct Head {
    tx: std::sync::mpsc::SyncSender<Result<(), FetchError>>,
    announced: Arc<OnceLock<u64>>,
}

impl Head {
    /// The object is there; `length` is the size the server announced, if it did (the
    /// body must then be exactly that long).
    pub fn ok(self, length: Option<u64>) {
        if let Some(n) = length {
            let _ = self.announced.set(n);
        }
        let _ = self.tx.send(Ok(()));
    }
    pub fn fail(self, e: FetchError) {
        let _ = self.tx.send(Err(e));
    }
}

/// Runs `fetch` on a current-thread runtime on its own thread. `fetch` reports the response
/// head through [`Head`], then sends body chunks until EOF (or until the reader is gone).
/// Returns once the head is known: the typed error, or the reader of the body. Nothing from
/// the server for [`IDLE`] ends the fetch with an error; `cancel` ends it at once.
pub fn spawn<F, Fut>(url: &str, cancel: &Cancel, fetch: F) -> Result<ChannelReader, FetchError>
where
    F: FnOnce(Head, mpsc::Sender<io::Result<Bytes>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    spawn_with_idle(url, IDLE, cancel, fetch)
}

fn spawn_with_idle<F, Fut>(
    url: &str,
    idle: Duration,
    cancel: &Cancel,
    fetch: F,
) -> Result<ChannelReader, FetchError>
where
    F: FnOnce(Head, mpsc::Sender<io::Result<Bytes>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let other = |detail: String| FetchError::Other {
        url: url.to_string(),
        detail,
    };
    let (head_tx, head_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, reader) = ChannelReader::pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| other(format!("cannot start the fetch runtime: {e}")))?;
    let announced = Arc::new(OnceLock::new());
    let head = Head {
        tx: head_tx,
        announced: announced.clone(),
    };
    let watch = Watch {
        url: url.to_string(),
        idle,
        announced,
        cancel: cancel.clone(),
    };
    std::thread::Builder::new()
        .name("fetch".into())
        .spawn(move || rt.block_on(watched(watch, head, tx, fetch)))
        .map_err(|e| other(format!("cannot start the fetch thread: {e}")))?;
    match (head_rx.recv(), cancel.reason()) {
        (Ok(Ok(())), _) => Ok(reader),
        (Ok(Err(e)), _) => Err(e),
        (Err(_), Some(reason)) => Err(FetchError::Cancelled {
            url: url.to_string(),
            reason,
        }),
        (Err(_), None) => Err(other(format!(
            "no answer from the server within {idle:?}; check that it is up and reachable"
        ))),
    }
}

/// What [`watched`] holds the transfer to.
struct Watch {
    url: String,
    idle: Duration,
    /// The body length the server announced, once the head said so.
    announced: Arc<OnceLock<u64>>,
    cancel: Cancel,
}

impl Watch {
    /// The error for a body that ran past, or ended short of, the announced length.
    fn length_error(&self, got: u64, done: bool) -> Option<io::Error> {
        let &want = self.announced.get()?;
        let text = if got > want {
            format!(
                "{}: the server sent more than the {want} bytes it announced",
                self.url
            )
        } else if done && got < want {
            format!(
                "{}: the transfer ended after {got} of the {want} bytes the server announced",
                self.url
            )
        } else {
            return None;
        };
        Some(io::Error::new(io::ErrorKind::InvalidData, text))
    }
}

/// Runs `fetch`, passing its chunks on to `tx`; ends it (and reports why to the reader)
/// when it produces nothing for `idle`, or a body off the announced length. Time spent
/// waiting for a slow reader does not count. A tripped cancel token ends it at once: `tx`
/// is dropped, which wakes the reader (whose [`CancellableRead`](crate::cancel) reports it).
async fn watched<F, Fut>(watch: Watch, head: Head, tx: mpsc::Sender<io::Result<Bytes>>, fetch: F)
where
    F: FnOnce(Head, mpsc::Sender<io::Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (inner_tx, mut inner_rx) = mpsc::channel(DEPTH);
    let producer = fetch(head, inner_tx);
    let forward = async {
        let mut got = 0u64;
        loop {
            let item = match tokio::time::timeout(watch.idle, inner_rx.recv()).await {
                // Bytes are arriving for a range not yet whole ([`super::ranges::BEAT`]).
                Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Ok(Some(Ok(chunk))) => {
                    got += chunk.len() as u64;
                    match watch.length_error(got, false) {
                        Some(e) => Err(e),
                        None => Ok(chunk),
                    }
                }
                Ok(Some(Err(e))) => Err(e),
                Ok(None) => match watch.length_error(got, true) {
                    Some(e) => Err(e),
                    None => return,
                },
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: the server sent nothing for {:?}",
                        watch.url, watch.idle
                    ),
                )),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = async { producer.await; std::future::pending::<()>().await } => {}
        _ = watch.cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link slow enough that one range takes longer than the idle limit: the beats of
    /// bytes arriving keep the fetch alive, and the reader gets every byte, no empty read.
    #[test]
    fn a_range_slower_than_the_idle_limit_is_kept_alive_by_arriving_bytes() {
        use super::super::ranges::{self, BEAT, Failure, RangeSource};
        struct Trickle(Vec<u8>);
        impl RangeSource for Trickle {
            fn url(&self) -> &str {
                "http://slow/a"
            }
            async fn get_range(&self, s: u64, e: u64, _: Option<&str>) -> Result<Bytes, Failure> {
                let piece = Bytes::copy_from_slice(&self.0[s as usize..e as usize]);
                let chunks: Vec<io::Result<Bytes>> = (0..piece.len())
                    .step_by(1024)
                    .map(|at| Ok(piece.slice(at..(at + 1024).min(piece.len()))))
                    .collect();
                let step = BEAT.mul_f64(0.1);
                let body = futures_util::stream::iter(chunks).then(move |c| async move {
                    tokio::time::sleep(step).await;
                    c
                });
                ranges::gather("slow", piece.len(), body).await
            }
        }
        use futures_util::StreamExt;
        // 40 chunks 0.1 BEAT apart: 4 BEATs for the one range, against 2.5 BEATs of idle.
        let data: Vec<u8> = (0..40 * 1024u32).map(|i| (i % 253) as u8).collect();
        let object = Trickle(data.clone());
        let size = data.len() as u64;
        let mut r = spawn_with_idle("http://slow/a", BEAT.mul_f64(2.5), &Cancel::default(), {
            move |head, tx| async move {
                head.ok(Some(size));
                ranges::send_in_order(&object, size, None, &tx).await;
            }
        })
        .unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn digest_covers_bytes_the_reader_never_asked_for() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let before = fetched_bytes();
        let (mut r, h) = hashing(Box::new(io::Cursor::new(data.clone())));
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        drop(r);
        let (digest, bytes) = h.finish(u64::MAX).unwrap();
        assert_eq!(bytes, data.len() as u64);
        // The process-wide counter took every byte too (other tests may add theirs).
        assert!(fetched_bytes() - before >= bytes);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn an_endless_rest_is_refused_after_the_limit() {
        let (mut r, h) = hashing(Box::new(io::repeat(7)));
        r.read_exact(&mut [0u8; 100]).unwrap();
        drop(r);
        assert!(matches!(h.finish(1 << 20), Err(Finish::Trailing)));
        // Exactly the limit is fine.
        let (r, h) = hashing(Box::new(io::repeat(7).take(1000)));
        drop(r);
        assert_eq!(h.finish(1000).unwrap().1, 1000);
        let (r, h) = hashing(Box::new(io::repeat(7).take(1001)));
        drop(r);
        assert!(matches!(h.finish(1000), Err(Finish::Trailing)));
    }

    fn body(chunks: &'static [&'static [u8]], announced: Option<u64>) -> io::Result<Vec<u8>> {
        let mut r = spawn_with_idle(
            "http://x/l",
            IDLE,
            &Cancel::default(),
            move |head, tx| async move {
                head.ok(announced);
                for c in chunks {
                    tx.send(Ok(Bytes::from_static(c))).await.unwrap();
                }
            },
        )
        .unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn a_body_off_its_announced_length_fails() {
        assert_eq!(body(&[b"ab", b"cd"], Some(4)).unwrap(), b"abcd");
        assert_eq!(body(&[b"ab", b"cd"], None).unwrap(), b"abcd");
        let long = body(&[b"ab", b"cd"], Some(3)).unwrap_err();
        assert!(long.to_string().contains("more than the 3 bytes"), "{long}");
        let short = body(&[b"ab"], Some(4)).unwrap_err();
        assert!(
            short.to_string().contains("after 2 of the 4 bytes"),
            "{short}"
        );
    }

    #[test]
    fn a_cancel_wakes_a_reader_blocked_on_a_stalled_body() {
        let cancel = Cancel::default();
        let r = spawn_with_idle("http://x/c", IDLE, &cancel, |head, tx| async move {
            head.ok(None);
            tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
            std::future::pending::<()>().await;
        })
        .unwrap();
        let mut r = crate::cancel::CancellableRead::new(r, cancel.clone());
        let (got_tx, got) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut out = vec![0; 3];
            r.read_exact(&mut out).unwrap();
            got_tx.send(()).unwrap();
            // Blocks on the stalled body until the cancel wakes it.
            r.read_to_end(&mut out)
        });
        got.recv().unwrap();
        cancel.cancel(crate::cancel::Reason::Shutdown);
        let res = t.join().unwrap();
        assert!(res.unwrap_err().to_string().contains("agent is stopping"));
        // A head never answered is cancelled too, not waited out.
        let cancel = Cancel::default();
        cancel.cancel(crate::cancel::Reason::Shutdown);
        let e = spawn_with_idle("http://x/h", IDLE, &cancel, |head, _tx| async move {
            std::future::pending::<()>().await;
            drop(head);
        })
        .err()
        .unwrap();
        assert!(matches!(e, FetchError::Cancelled { .. }), "{e}");
    }

    #[test]
    fn a_server_that_stalls_fails_the_head_or_the_body() {
        let idle = Duration::from_millis(200);
        let never = Cancel::default();
        let e = spawn_with_idle("http://x/a", idle, &never, |head, _tx| async move {
            std::future::pending::<()>().await;
            drop(head);
        })
        .err()
        .expect("a stalled head fails");
        assert!(e.to_string().contains("no answer"), "{e}");

        let mut r = spawn_with_idle("http://x/b", idle, &never, |head, tx| async move {
            head.ok(None);
            tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
            std::future::pending::<()>().await;
        })
        .unwrap();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, b"abc");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("http://x/b"), "{err}");
        // The failure stays: no read after it looks like a clean end.
        assert_eq!(
            r.read(&mut [0; 8]).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn channel_reader_delivers_in_order_then_error() {
        let (tx, mut r) = ChannelReader::pair();
        std::thread::spawn(move || {
            for i in 0..20u8 {
                tx.blocking_send(Ok(Bytes::from(vec![i; 3]))).unwrap();
            }
            let _ = tx.blocking_send(Err(io::Error::other("connection reset")));
        });
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), 60);
        assert_eq!(&out[57..], &[19, 19, 19]);
        assert_eq!(err.to_string(), "connection reset");
    }
}
