//! Limits on an unpack's byte streams that no single entry shows: how far the compressed
//! input expands, and whether the unpack was cancelled.
//!
//! The compressed side is counted as the decoder pulls it ([`Counted`]); the decompressed
//! side is counted as the tar reader pulls it ([`Expanding`]), which fails once more than
//! [`RATIO_FLOOR`] bytes came out of fewer than `1 / max_ratio` as many. The floor keeps small
//! archives (a config tree, a few zero-filled files) out of it; above it a gzip bomb (gzip
//! tops out near 1032:1) or a zstd run of zeros (far beyond that) is stopped after the floor
//! plus one read-ahead, long before it fills a disk. Sparse holes are not in this stream at
//! all: they count at their full size against the byte limit instead.
//!
//! Which limit stopped a read is kept in a [`Trip`], so the unpacker can report it by name
//! whatever layer (decoder, read-ahead thread, tar reader) the error came through.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cancel::{Cancel, Reason};

/// Decompressed bytes allowed before the expansion ratio is checked: 64 MiB.
pub const RATIO_FLOOR: u64 = 64 << 20;

/// Default largest expansion ratio (decompressed : compressed), well below gzip's ~1032:1
/// maximum and far above what real release trees reach (2:1 to 20:1).
pub const DEFAULT_MAX_RATIO: u64 = 200;

/// The limit that stopped a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `out` bytes came out of `raw`, beyond the ratio `limit`.
    Expansion {
        out: u64,
        raw: u64,
        limit: u64,
    },
    Cancelled(Reason),
}

/// Where a stream records the limit that stopped it (the first one stays).
#[derive(Debug, Clone, Default)]
pub struct Trip(Arc<OnceLock<Stop>>);

impl Trip {
    fn set(&self, stop: Stop) -> io::Error {
        let _ = self.0.set(stop);
        io::Error::other(match self.0.get() {
            Some(Stop::Expansion { limit, .. }) => format!("expands more than {limit}:1"),
            Some(Stop::Cancelled(r)) => format!("stopped: {r}"),
            None => "stopped".into(),
        })
    }

    /// The limit that stopped a read, if one did.
    pub fn get(&self) -> Option<Stop> {
        self.0.get().cloned()
    }
}

/// Counts the bytes read through it into a shared counter, and stops when `cancel` trips.
pub struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
    cancel: Cancel,
    trip: Trip,
}

impl<R> Counted<R> {
    pub fn new(inner: R, count: Arc<AtomicU64>, cancel: Cancel, trip: Trip) -> Self {
        Counted {
            inner,
            count,
            cancel,
            trip,
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = self.cancel.reason() {
            return Err(self.trip.set(Stop::Cancelled(r)));
        }
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed stream: counts what comes out, checks it against the compressed bytes
/// counted so far, and stops when `cancel` trips (a decoder can run long on little input).
pub struct Expanding<R> {
    inner: R,
    raw: Arc<AtomicU64>,
    out: u64,
    /// 0: no ratio limit.
    max_ratio: u64,
    cancel: Cancel,
    trip: Trip,
}

impl<R> Expanding<R> {
    pub fn new(inner: R, raw: Arc<AtomicU64>, max_ratio: u64, cancel: Cancel, trip: Trip) -> Self {
        Expanding {
            inner,
            raw,
            out: 0,
            max_ratio,
            cancel,
            trip,
        }
    }
}

impl<R: Read> Read for Expanding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = self.cancel.reason() {
            return Err(self.trip.set(Stop::Cancelled(r)));
        }
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let raw = self.raw.load(Ordering::Relaxed);
        if self.max_ratio > 0
            && self.out > RATIO_FLOOR
            && self.out > raw.saturating_mul(self.max_ratio)
        {
            return Err(self.trip.set(Stop::Expansion {
                out: self.out,
                raw,
                limit: self.max_ratio,
            }));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut r: impl Read) -> io::Result<u64> {
        io::copy(&mut r, &mut io::sink())
    }

    #[test]
    fn a_bomb_stops_past_the_floor_and_an_ordinary_stream_does_not() {
        let raw = Arc::new(AtomicU64::new(0));
        let trip = Trip::default();
        // 1 MiB in, endless zeros out.
        raw.store(1 << 20, Ordering::Relaxed);
        let bomb = Expanding::new(
            io::repeat(0),
            raw.clone(),
            200,
            Cancel::default(),
            trip.clone(),
        );
        let e = drain(bomb).unwrap_err();
        assert!(e.to_string().contains("200:1"), "{e}");
        match trip.get() {
            Some(Stop::Expansion {
                out, limit: 200, ..
            }) => {
                assert!(out > 200 << 20 && out < (200 << 20) + (1 << 20), "{out}")
            }
            other => panic!("{other:?}"),
        }
        // Below the floor any ratio passes; above it a ratio under the limit passes.
        raw.store(1, Ordering::Relaxed);
        let small = Expanding::new(
            io::repeat(0).take(RATIO_FLOOR),
            raw.clone(),
            200,
            Cancel::default(),
            Trip::default(),
        );
        assert_eq!(drain(small).unwrap(), RATIO_FLOOR);
        raw.store(RATIO_FLOOR, Ordering::Relaxed);
        let fine = Expanding::new(
            io::repeat(0).take(3 * RATIO_FLOOR),
            raw,
            200,
            Cancel::default(),
            Trip::default(),
        );
        assert_eq!(drain(fine).unwrap(), 3 * RATIO_FLOOR);
    }

    #[test]
    fn a_cancelled_stream_names_why() {
        let cancel = Cancel::default();
        let trip = Trip::default();
        let count = Arc::new(AtomicU64::new(0));
        let mut r = Counted::new(io::repeat(1), count.clone(), cancel.clone(), trip.clone());
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 10);
        cancel.cancel(Reason::Shutdown);
        assert!(r.read(&mut buf).is_err());
        assert_eq!(trip.get(), Some(Stop::Cancelled(Reason::Shutdown)));
    }
}
