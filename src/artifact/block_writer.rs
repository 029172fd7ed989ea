//! Compressing independent blocks on worker threads, written in order.
//!
//! The parallel layouts ([`super::gzip_members`], [`super::zstd_frames`]) compress every
//! block on its own, so blocks can be compressed on every core as well as decoded on
//! every core. The writer's thread hands full blocks to the workers and writes their
//! output in block order; at most [`in_flight`] blocks are out at once, so memory is
//! bounded, and the output does not depend on the number of workers.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Compresses one block into what goes on the wire for it.
pub type Compress = Arc<dyn Fn(&[u8]) -> io::Result<Vec<u8>> + Send + Sync>;

/// How many blocks may be out with `workers` compressing.
pub fn in_flight(workers: usize) -> usize {
    2 * workers + 1
}

/// The workers a writer uses: one per core, at most four.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// The next job of a queue that workers share: `None` once it is closed (or poisoned).
pub(super) fn next_job<J>(jobs: &Mutex<Receiver<J>>) -> Option<J> {
    jobs.lock().ok()?.recv().ok()
}

/// Blocks in, compressed blocks out to `out`, in order.
pub struct OrderedBlocks<W: Write> {
    out: W,
    jobs: Option<SyncSender<(u64, Vec<u8>)>>,
    done: Receiver<(u64, io::Result<Vec<u8>>)>,
    ready: BTreeMap<u64, io::Result<Vec<u8>>>,
    sent: u64,
    written: u64,
    limit: u64,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> OrderedBlocks<W> {
    pub fn new(out: W, workers: usize, compress: Compress) -> io::Result<Self> {
        let workers = workers.max(1);
        let limit = in_flight(workers);
        let (jobs, job_rx) = sync_channel::<(u64, Vec<u8>)>(limit);
        let (done_tx, done) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (jobs, done, compress) = (job_rx.clone(), done_tx.clone(), compress.clone());
            let handle = std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || {
                    loop {
                        let Some((n, block)) = next_job(&jobs) else {
                            return;
                        };
                        if done.send((n, compress(&block))).is_err() {
                            return;
                        }
                    }
                })?;
            handles.push(handle);
        }
        Ok(OrderedBlocks {
            out,
            jobs: Some(jobs),
            done,
            ready: BTreeMap::new(),
            sent: 0,
            written: 0,
            limit: limit as u64,
            workers: handles,
        })
    }

    /// Hands `block` to the workers, and writes what is done, in order.
    pub fn push(&mut self, block: Vec<u8>) -> io::Result<()> {
        while self.sent - self.written >= self.limit {
            self.write_next(true)?;
        }
        let jobs = self.jobs.as_ref().expect("pushed after finish");
        jobs.send((self.sent, block))
            .map_err(|_| io::Error::other("the compression threads stopped"))?;
        self.sent += 1;
        while self.written < self.sent && self.write_next(false)? {}
        Ok(())
    }

    /// Blocks handed over so far.
    pub fn blocks(&self) -> u64 {
        self.sent
    }

    /// Writes the next block in order if it is done (waiting for it with `wait`): whether
    /// one was written.
    fn write_next(&mut self, wait: bool) -> io::Result<bool> {
        loop {
            if let Some(out) = self.ready.remove(&self.written) {
                self.out.write_all(&out?)?;
                self.written += 1;
                return Ok(true);
            }
            let next = match wait {
                true => self.done.recv().ok(),
                false => self.done.try_recv().ok(),
            };
            match next {
                Some((n, out)) => {
                    self.ready.insert(n, out);
                }
                None if wait => return Err(io::Error::other("the compression threads stopped")),
                None => return Ok(false),
            }
        }
    }

    /// Writes every block still out, stops the workers and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.jobs = None;
        while self.written < self.sent {
            self.write_next(true)?;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(self.out)
    }

    /// Writes what is done and flushes the sink (blocks still out stay out).
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.sent && self.write_next(false)? {}
        self.out.flush()
    }
}

/// A writer that cuts its input into blocks of `size` bytes and compresses each on its own,
/// on worker threads ([`OrderedBlocks`]).
pub struct BlockWriter<W: Write> {
    blocks: OrderedBlocks<W>,
    block: Vec<u8>,
    size: usize,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(out: W, size: usize, compress: Compress) -> io::Result<Self> {
        Ok(BlockWriter {
            blocks: OrderedBlocks::new(out, default_workers(), compress)?,
            block: Vec::with_capacity(size),
            size,
        })
    }

    /// Writes the last block and returns the sink. An empty stream still gets one (empty)
    /// block, so the output is a valid stream of its format.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || self.blocks.blocks() == 0 {
            self.blocks.push(std::mem::take(&mut self.block))?;
        }
        self.blocks.finish()
    }
}

impl<W: Write> Write for BlockWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.size - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == self.size {
            let full = std::mem::replace(&mut self.block, Vec::with_capacity(self.size));
            self.blocks.push(full)?;
        }
        Ok(n)
    }

    /// Flushes the sink; a partial block stays until it fills or [`Self::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.blocks.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reversing() -> Compress {
        Arc::new(|b: &[u8]| {
            // Later blocks finish first now and then: order must still hold.
            if b.first() == Some(&0) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(b.iter().rev().copied().collect())
        })
    }

    #[test]
    fn blocks_come_out_in_order_whatever_the_workers() {
        let blocks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i % 3, i, 200]).collect();
        let want: Vec<u8> = blocks
            .iter()
            .flat_map(|b| b.iter().rev().copied())
            .collect();
        for workers in [1, 2, 4] {
            let mut w = OrderedBlocks::new(Vec::new(), workers, reversing()).unwrap();
            for b in &blocks {
                w.push(b.clone()).unwrap();
            }
            assert_eq!(w.finish().unwrap(), want, "{workers} workers");
        }
    }

    #[test]
    fn a_failed_block_fails_the_write() {
        let failing: Compress = Arc::new(|b: &[u8]| match b {
            [7] => Err(io::Error::other("block 7 cannot be compressed")),
            _ => Ok(b.to_vec()),
        });
        let mut w = OrderedBlocks::new(Vec::new(), 2, failing).unwrap();
        let mut err = None;
        for i in 0..10u8 {
            if let Err(e) = w.push(vec![i]) {
                err = Some(e);
                break;
            }
        }
        let err = err.unwrap_or_else(|| w.finish().unwrap_err());
        assert!(err.to_string().contains("block 7"), "{err}");
    }
}
