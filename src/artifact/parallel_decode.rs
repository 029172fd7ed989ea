//! Decoding a stream of independent members on every core, in order.
//!
//! One thread reads the raw stream member by member (a [`Layout`] finds each member's end
//! without decoding it), workers decode members as they come, and the reader hands their
//! output back in stream order. At most [`in_flight`] members are read ahead, and a layout
//! bounds each member in and out, so memory is bounded whatever the input says. An error
//! (a bad member, a member of another layout, a truncated stream, the source's own error)
//! reaches the reader in order, after the output of every member before it. Layouts: gzip
//! members ([`super::gzip_members`]) and zstd frames ([`super::zstd_frames`]).
//!
//! Dropping the reader stops the threads: the reading thread after its current read (it is
//! not joined, so a stalled source cannot hang the caller), the workers once their queue
//! closes.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use super::block_writer::next_job;

/// How members are found and decoded.
pub trait Layout: Send + Sync + 'static {
    /// Reads member `n` (at byte `offset`) whole: `None` at a clean end of the stream.
    fn read_member(&self, raw: &mut dyn Read, n: u64, offset: u64) -> io::Result<Option<Vec<u8>>>;
    /// The output of member `n`, checked.
    fn decode(&self, n: u64, member: &[u8]) -> io::Result<Vec<u8>>;
}

/// What the threads send the reader.
enum Msg {
    /// Member `n`'s output, or why stream position `n` failed.
    Member(u64, io::Result<Vec<u8>>),
    /// The stream ended cleanly after this many members.
    End(u64),
}

/// A `Read` of what a stream of members decodes to.
pub struct ParallelDecode {
    results: Receiver<Msg>,
    /// One token back per member consumed lets the reading thread read one more.
    tokens: SyncSender<()>,
    ready: BTreeMap<u64, io::Result<Vec<u8>>>,
    next: u64,
    end: Option<u64>,
    current: Vec<u8>,
    pos: usize,
    failed: Option<(io::ErrorKind, String)>,
}

/// How many members may be read ahead of the reader with `workers` decoding.
pub fn in_flight(workers: usize) -> usize {
    workers + 2
}

impl ParallelDecode {
    /// Starts reading `raw` (which must start with a member of `layout`) on a thread of
    /// its own and decoding on `workers` threads.
    pub fn spawn(
        raw: Box<dyn Read + Send>,
        layout: impl Layout,
        workers: usize,
    ) -> io::Result<Self> {
        let layout = Arc::new(layout);
        let workers = workers.max(1);
        let ahead = in_flight(workers);
        let (tokens, token_rx) = sync_channel::<()>(ahead);
        for _ in 0..ahead {
            tokens.send(()).expect("the channel holds every token");
        }
        let (results_tx, results) = channel::<Msg>();
        let (work_tx, work_rx) = sync_channel::<(u64, Vec<u8>)>(ahead);
        let work_rx = Arc::new(Mutex::new(work_rx));
        for i in 0..workers {
            let (work, out, layout) = (work_rx.clone(), results_tx.clone(), layout.clone());
            std::thread::Builder::new()
                .name(format!("unpack-decode-{i}"))
                .spawn(move || decode_members(&*layout, &work, &out))?;
        }
        std::thread::Builder::new()
            .name("unpack-members".into())
            .spawn(move || read_members(&*layout, raw, &token_rx, &work_tx, &results_tx))?;
        Ok(ParallelDecode {
            results,
            tokens,
            ready: BTreeMap::new(),
            next: 0,
            end: None,
            current: Vec::new(),
            pos: 0,
            failed: None,
        })
    }

    /// Makes the next member's output current: `false` at the end of the stream.
    fn advance(&mut self) -> io::Result<bool> {
        loop {
            if self.end == Some(self.next) {
                return Ok(false);
            }
            if let Some(out) = self.ready.remove(&self.next) {
                self.next += 1;
                // The reading thread may have stopped already: a lost token is harmless.
                let _ = self.tokens.try_send(());
                self.current = out?;
                self.pos = 0;
                return Ok(true);
            }
            match self.results.recv() {
                Ok(Msg::Member(n, out)) => {
                    self.ready.insert(n, out);
                }
                Ok(Msg::End(n)) => self.end = Some(n),
                Err(_) => {
                    let why = "the decoding threads stopped before the end of the stream";
                    return Err(io::Error::other(why));
                }
            }
        }
    }
}

impl Read for ParallelDecode {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, why)) = &self.failed {
            return Err(io::Error::new(*kind, why.clone()));
        }
        while self.pos == self.current.len() {
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The reading thread: one member per token, until the end, an error, or the reader left.
fn read_members(
    layout: &dyn Layout,
    mut raw: Box<dyn Read + Send>,
    tokens: &Receiver<()>,
    work: &SyncSender<(u64, Vec<u8>)>,
    results: &Sender<Msg>,
) {
    let (mut n, mut offset) = (0u64, 0u64);
    while tokens.recv().is_ok() {
        let msg = match layout.read_member(&mut raw, n, offset) {
            Ok(Some(member)) => {
                offset += member.len() as u64;
                if work.send((n, member)).is_err() {
                    return;
                }
                n += 1;
                continue;
            }
            Ok(None) => Msg::End(n),
            Err(e) => Msg::Member(n, Err(e)),
        };
        let _ = results.send(msg);
        return;
    }
}

/// A worker: decodes members until the queue closes or the reader left.
fn decode_members(
    layout: &dyn Layout,
    work: &Mutex<Receiver<(u64, Vec<u8>)>>,
    results: &Sender<Msg>,
) {
    loop {
        let Some((n, member)) = next_job(work) else {
            return;
        };
        if results
            .send(Msg::Member(n, layout.decode(n, &member)))
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
#[path = "parallel_decode_tests.rs"]
mod tests;
