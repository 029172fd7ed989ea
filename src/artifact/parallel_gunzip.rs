//! Inflating the members of a [`super::gzip_members`] stream on every core, in order.
//!
//! One thread reads the raw stream member by member (each header says how long its member
//! is, so nothing is inflated to find the next), workers inflate members as they come, and
//! the reader hands their output back in stream order. At most [`in_flight`] members are
//! read ahead, each at most [`MAX_MEMBER`] bytes in and out, so memory is bounded whatever
//! the input says. Each member's CRC32 and length are checked against its trailer; an error
//! (a bad member, a header of another layout, a truncated stream, the source's own error)
//! reaches the reader in order, after the output of every member before it.
//!
//! Dropping the reader stops the threads: the reading thread after its current read (it is
//! not joined, so a stalled source cannot hang the caller), the workers once their queue
//! closes.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use super::gzip_members::{HEADER_LEN, MAX_MEMBER, TRAILER_LEN, member_len};

/// What the threads send the reader.
enum Msg {
    /// Member `n`'s output, or why stream position `n` failed.
    Member(u64, io::Result<Vec<u8>>),
    /// The stream ended cleanly after this many members.
    End(u64),
}

/// A `Read` of the tar stream inside a parallel-layout gzip stream.
pub struct ParallelGunzip {
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

/// How many members may be read ahead of the reader with `workers` inflating.
pub fn in_flight(workers: usize) -> usize {
    2 * workers + 2
}

impl ParallelGunzip {
    /// Starts reading `raw` (which must start with a member of the layout) on a thread of
    /// its own and inflating on `workers` threads.
    pub fn spawn(raw: Box<dyn Read + Send>, workers: usize) -> io::Result<Self> {
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
            let (work, out) = (work_rx.clone(), results_tx.clone());
            std::thread::Builder::new()
                .name(format!("unpack-inflate-{i}"))
                .spawn(move || inflate_members(&work, &out))?;
        }
        std::thread::Builder::new()
            .name("unpack-members".into())
            .spawn(move || read_members(raw, &token_rx, &work_tx, &results_tx))?;
        Ok(ParallelGunzip {
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
                    let why = "the gzip member threads stopped before the end of the stream";
                    return Err(io::Error::other(why));
                }
            }
        }
    }
}

impl Read for ParallelGunzip {
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
    mut raw: Box<dyn Read + Send>,
    tokens: &Receiver<()>,
    work: &SyncSender<(u64, Vec<u8>)>,
    results: &Sender<Msg>,
) {
    let (mut n, mut offset) = (0u64, 0u64);
    while tokens.recv().is_ok() {
        let msg = match read_member(&mut raw, n, offset) {
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

/// Member `n` at byte `offset` of `raw`, whole: `None` at a clean end of the stream.
fn read_member(raw: &mut dyn Read, n: u64, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(raw, &mut head)?;
    if got == 0 {
        return Ok(None);
    }
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let at = format!("gzip member {n} at byte {offset}");
    if got < HEADER_LEN {
        return Err(bad(format!("{at}: the stream ends inside its header")));
    }
    let len = member_len(&head).ok_or_else(|| {
        bad(format!(
            "{at}: not a member of the parallel layout (the stream mixes layouts, or trailing data)"
        ))
    })?;
    if !(HEADER_LEN + TRAILER_LEN..=MAX_MEMBER).contains(&len) {
        return Err(bad(format!(
            "{at}: its header claims {len} bytes, outside {}..={MAX_MEMBER}",
            HEADER_LEN + TRAILER_LEN
        )));
    }
    let mut member = vec![0u8; len];
    member[..HEADER_LEN].copy_from_slice(&head);
    if read_full(raw, &mut member[HEADER_LEN..])? < len - HEADER_LEN {
        return Err(bad(format!(
            "{at}: the stream ends inside it ({len} bytes)"
        )));
    }
    Ok(Some(member))
}

/// Reads until `buf` is full or the end: how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A worker: inflates members until the queue closes or the reader left.
fn inflate_members(work: &Mutex<Receiver<(u64, Vec<u8>)>>, results: &Sender<Msg>) {
    loop {
        let next = work
            .lock()
            .map_err(|_| ())
            .and_then(|w| w.recv().map_err(|_| ()));
        let Ok((n, member)) = next else { return };
        if results.send(Msg::Member(n, inflate(n, &member))).is_err() {
            return;
        }
    }
}

/// The output of member `n`, checked against its trailer.
pub fn inflate(n: u64, member: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (body, trailer) = member.split_at(member.len() - TRAILER_LEN);
    let data = &body[HEADER_LEN..];
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]) as usize;
    if size > MAX_MEMBER {
        return Err(bad(format!(
            "gzip member {n}: its trailer claims {size} bytes, over {MAX_MEMBER}"
        )));
    }
    let mut out = Vec::with_capacity(size);
    let mut d = flate2::read::DeflateDecoder::new(data);
    (&mut d)
        .take(size as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("gzip member {n}: {e}")))?;
    if out.len() != size || d.total_in() != data.len() as u64 {
        return Err(bad(format!(
            "gzip member {n}: inflates to {}{} bytes from {} of its {}, its trailer says {size}",
            out.len(),
            if out.len() > size { "+" } else { "" },
            d.total_in(),
            data.len()
        )));
    }
    let mut sum = flate2::Crc::new();
    sum.update(&out);
    if sum.sum() != crc {
        return Err(bad(format!("gzip member {n}: CRC32 mismatch")));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "parallel_gunzip_tests.rs"]
mod tests;
