//! A reader that runs its source on another thread.
//!
//! [`Prefetch`] moves decompression off the thread that writes files: the worker fills
//! large buffers and sends them through a bounded channel; used buffers come back through
//! a second channel, so steady state allocates nothing. An error on the worker side is
//! delivered to the reader in order, after the data that preceded it.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 8;

/// A `Read` whose data is produced by a background thread reading `source`.
pub struct Prefetch {
    full: Receiver<io::Result<Vec<u8>>>,
    empty: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    worker: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts the worker thread. It stops at end of input, on error, or when this reader
    /// is dropped.
    pub fn spawn(mut source: Box<dyn Read + Send>) -> io::Result<Self> {
        let (full_tx, full) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (empty, empty_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::Builder::new()
            .name("unpack-inflate".into())
            .spawn(move || {
                loop {
                    let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
                    buf.resize(CHUNK, 0);
                    let mut filled = 0;
                    let res = loop {
                        match source.read(&mut buf[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                filled += n;
                                if filled == buf.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(filled);
                    let eof = filled < CHUNK;
                    if filled > 0 && full_tx.send(Ok(buf)).is_err() {
                        return;
                    }
                    if let Err(e) = res {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                    if eof {
                        return;
                    }
                }
            })?;
        Ok(Prefetch {
            full,
            empty,
            current: Vec::new(),
            pos: 0,
            done: false,
            worker: Some(worker),
        })
    }
}

impl Read for Prefetch {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.full.recv() {
                Ok(Ok(next)) => {
                    let old = std::mem::replace(&mut self.current, next);
                    let _ = self.empty.try_send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's next send fail, so it exits after its
        // current read. It is not joined: a stalled stdin must not hang the caller.
        let (_, dead) = sync_channel(0);
        self.full = dead;
        self.worker.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_all_bytes_in_order() {
        let data: Vec<u8> = (0..(CHUNK * 3 + 12345)).map(|i| (i % 251) as u8).collect();
        let mut r = Prefetch::spawn(Box::new(io::Cursor::new(data.clone()))).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn source_error_arrives_after_data() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("corrupt deflate stream"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut r = Prefetch::spawn(Box::new(Failing(100))).unwrap();
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(got.len(), 100);
        assert!(err.to_string().contains("corrupt deflate"));
    }

    /// Regression (issue 10): this test asserted nothing. An endless source only stops
    /// when the reader is dropped; the worker then exits and drops the source.
    #[test]
    fn dropping_early_stops_the_worker() {
        struct Endless(std::sync::mpsc::Sender<()>);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(1);
                Ok(buf.len())
            }
        }
        impl Drop for Endless {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped_tx, dropped) = std::sync::mpsc::channel();
        let mut r = Prefetch::spawn(Box::new(Endless(dropped_tx))).unwrap();
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, [1; 10]);
        assert!(
            dropped.try_recv().is_err(),
            "the worker stopped while still read"
        );
        drop(r); // must not hang
        dropped
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the worker kept running after the reader was dropped");
    }
}
