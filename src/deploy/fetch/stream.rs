//! The sync side of a fetch: a `Read` fed by an async body through a bounded channel, and
//! a reader that hashes every byte it passes on.
//!
//! Guarantees: at most [`DEPTH`] body chunks are buffered between the network and the
//! unpacker (no temp file, bounded memory); [`DigestHandle::finish`] drains the source to
//! EOF first, so the digest covers the whole object, including bytes after the tar end
//! marker and the compression trailer. A server that sends nothing for [`IDLE`] (no
//! answer, or a body that stalls) fails the fetch instead of holding it forever, and a
//! failure mid-body stays the reader's answer on every later read.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::FetchError;

/// Body chunks in flight between the runtime thread and the reader.
pub const DEPTH: usize = 8;

/// How long a server may send nothing (no answer, or no body bytes) before the fetch fails.
pub const IDLE: Duration = Duration::from_secs(60);

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

impl DigestHandle {
    /// Reads the rest of the source to EOF, then returns the sha256 and the byte count of
    /// everything the source produced.
    pub fn finish(&self) -> io::Result<([u8; 32], u64)> {
        let mut state = lock(&self.state);
        let mut buf = vec![0; 64 << 10];
        loop {
            match state.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((state.hasher.clone().finalize().into(), state.bytes))
    }
}

/// Reports the outcome of the request head (status, object found) back to [`spawn`].
pub struct Head(std::sync::mpsc::SyncSender<Result<(), FetchError>>);

impl Head {
    pub fn ok(self) {
        let _ = self.0.send(Ok(()));
    }
    pub fn fail(self, e: FetchError) {
        let _ = self.0.send(Err(e));
    }
}

/// Runs `fetch` on a current-thread runtime on its own thread. `fetch` reports the response
/// head through [`Head`], then sends body chunks until EOF (or until the reader is gone).
/// Returns once the head is known: the typed error, or the reader of the body. Nothing from
/// the server for [`IDLE`] ends the fetch with an error.
pub fn spawn<F, Fut>(url: &str, fetch: F) -> Result<ChannelReader, FetchError>
where
    F: FnOnce(Head, mpsc::Sender<io::Result<Bytes>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    spawn_with_idle(url, IDLE, fetch)
}

fn spawn_with_idle<F, Fut>(url: &str, idle: Duration, fetch: F) -> Result<ChannelReader, FetchError>
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
    let owned = url.to_string();
    std::thread::Builder::new()
        .name("fetch".into())
        .spawn(move || rt.block_on(watched(owned, idle, Head(head_tx), tx, fetch)))
        .map_err(|e| other(format!("cannot start the fetch thread: {e}")))?;
    match head_rx.recv() {
        Ok(Ok(())) => Ok(reader),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(other(format!(
            "no answer from the server within {idle:?}; check that it is up and reachable"
        ))),
    }
}

/// Runs `fetch`, passing its chunks on to `tx`; ends it (and reports a timeout to the
/// reader) when it produces nothing for `idle`. Time spent waiting for a slow reader does
/// not count.
async fn watched<F, Fut>(
    url: String,
    idle: Duration,
    head: Head,
    tx: mpsc::Sender<io::Result<Bytes>>,
    fetch: F,
) where
    F: FnOnce(Head, mpsc::Sender<io::Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (inner_tx, mut inner_rx) = mpsc::channel(DEPTH);
    let producer = fetch(head, inner_tx);
    let forward = async {
        loop {
            match tokio::time::timeout(idle, inner_rx.recv()).await {
                Ok(Some(item)) => {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{url}: the server sent nothing for {idle:?}"),
                    );
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = async { producer.await; std::future::pending::<()>().await } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_bytes_the_reader_never_asked_for() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, h) = hashing(Box::new(io::Cursor::new(data.clone())));
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        drop(r);
        let (digest, bytes) = h.finish().unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn a_server_that_stalls_fails_the_head_or_the_body() {
        let idle = Duration::from_millis(200);
        let e = spawn_with_idle("http://x/a", idle, |head, _tx| async move {
            std::future::pending::<()>().await;
            drop(head);
        })
        .err()
        .expect("a stalled head fails");
        assert!(e.to_string().contains("no answer"), "{e}");

        let mut r = spawn_with_idle("http://x/b", idle, |head, tx| async move {
            head.ok();
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
