//! GNU sparse files: the map of data segments, in each of its encodings, and its checks.
//!
//! A sparse entry stores only its data segments, back to back; the map says where each one
//! lives in the real file, and everything else is a hole. Encodings: old GNU `S` headers
//! (slots in the header and extension blocks), PAX 0.0 (`GNU.sparse.offset`/`numbytes`
//! pairs), PAX 0.1 (`GNU.sparse.map`) and PAX 1.0 (decimal lines at the start of the data).
//!
//! Guarantee: a map handed out by [`check`] is sorted, has no overlaps, lies inside the real
//! size, and its segment lengths add up exactly to the stored data. Every segment but the
//! last holding data is a whole number of blocks: GNU tar starts each segment's data on a
//! fresh block while other readers read them back to back, so only such maps (all GNU tar
//! and bsdtar write) mean the same to both.

use std::io::{self, Read};

use super::ext::Records;

/// One data segment: `len` bytes stored in the archive belong at `offset` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// Checks a map against the real size and the number of data bytes stored.
pub fn check(segments: &[Segment], real_size: u64, stored: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    let last_data = segments.iter().rposition(|s| s.len > 0).unwrap_or(0);
    for (i, s) in segments.iter().enumerate() {
        if i < last_data && s.len % 512 != 0 {
            return Err(format!(
                "sparse map segment at {} has {} bytes, not a multiple of 512 (GNU tar would \
                 read this archive differently)",
                s.offset, s.len
            ));
        }
        if s.offset < end {
            return Err(format!(
                "sparse map segments overlap or are out of order (offset {} before {end})",
                s.offset
            ));
        }
        end = s
            .offset
            .checked_add(s.len)
            .filter(|e| *e <= real_size)
            .ok_or_else(|| {
                format!(
                    "sparse map segment at {} (+{}) lies past the real size {real_size}",
                    s.offset, s.len
                )
            })?;
        total = total.saturating_add(s.len);
    }
    if total != stored {
        return Err(format!(
            "sparse map covers {total} bytes but the entry stores {stored}"
        ));
    }
    Ok(())
}

/// Parses a PAX 0.1 map: `offset,len,offset,len,...`.
pub fn parse_list(value: &[u8]) -> Result<Vec<Segment>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let numbers = value
        .split(|b| *b == b',')
        .map(|n| super::ext::decimal(n).ok_or("GNU.sparse.map holds a non-number"))
        .collect::<Result<Vec<u64>, _>>()?;
    if numbers.len() % 2 != 0 {
        return Err("GNU.sparse.map has an odd number of values".into());
    }
    Ok(pairs(&numbers))
}

/// A PAX 0.0 or 0.1 map. Like GNU tar, `GNU.sparse.numblocks` must give its length.
pub fn pax_map(pax: &Records) -> Result<Vec<Segment>, String> {
    let map = match super::ext::last(pax, "GNU.sparse.map") {
        Some(list) => parse_list(list)?,
        None => offset_records(pax)?,
    };
    match super::ext::last(pax, "GNU.sparse.numblocks").and_then(super::ext::decimal) {
        Some(n) if n == map.len() as u64 => Ok(map),
        _ => Err("GNU.sparse.numblocks is missing or does not match the map".into()),
    }
}

/// The PAX 0.0 map: alternating `GNU.sparse.offset` and `GNU.sparse.numbytes` records.
fn offset_records(pax: &Records) -> Result<Vec<Segment>, String> {
    let mut numbers = Vec::new();
    for (k, v) in pax {
        let expect: &[u8] = if numbers.len() % 2 == 0 {
            b"GNU.sparse.offset"
        } else {
            b"GNU.sparse.numbytes"
        };
        if k == b"GNU.sparse.offset" || k == b"GNU.sparse.numbytes" {
            if k != expect {
                return Err("GNU.sparse.offset and numbytes records do not alternate".into());
            }
            numbers.push(super::ext::decimal(v).ok_or("a GNU.sparse record holds a non-number")?);
        }
    }
    if numbers.len() % 2 != 0 {
        return Err("a GNU.sparse.offset has no numbytes".into());
    }
    Ok(pairs(&numbers))
}

fn pairs(numbers: &[u64]) -> Vec<Segment> {
    numbers
        .chunks_exact(2)
        .map(|p| Segment {
            offset: p[0],
            len: p[1],
        })
        .collect()
}

/// Incremental parser of a PAX 1.0 map: a count, then that many offset/length pairs, one
/// decimal number per line, fed block by block.
#[derive(Debug, Default)]
pub struct LineMap {
    count: Option<u64>,
    numbers: Vec<u64>,
    digits: Vec<u8>,
}

impl LineMap {
    /// Feeds the next block; `Ok(true)` once the map is complete (the rest of the block is
    /// padding).
    pub fn feed(&mut self, block: &[u8]) -> Result<bool, String> {
        for b in block {
            if self.done() {
                return Ok(true);
            }
            match b {
                b'0'..=b'9' if self.digits.len() < 20 => self.digits.push(*b),
                b'\n' => {
                    let n = super::ext::decimal(&self.digits)
                        .ok_or("the sparse map in the data has an empty or huge number")?;
                    self.digits.clear();
                    match self.count {
                        None => self.count = Some(n),
                        Some(_) => self.numbers.push(n),
                    }
                }
                _ => return Err("the sparse map in the data is not decimal lines".into()),
            }
        }
        Ok(self.done())
    }

    fn done(&self) -> bool {
        self.count
            .is_some_and(|c| self.numbers.len() as u64 >= c.saturating_mul(2))
    }

    /// The parsed segments (call after `feed` returned `true`).
    pub fn segments(&self) -> Vec<Segment> {
        pairs(&self.numbers)
    }
}

/// Reads a sparse entry's stored data as the full file: zeros in the holes.
pub struct Expand<'a, R> {
    data: R,
    segments: &'a [Segment],
    real_size: u64,
    pos: u64,
}

impl<'a, R: Read> Expand<'a, R> {
    pub fn new(data: R, segments: &'a [Segment], real_size: u64) -> Self {
        Expand {
            data,
            segments,
            real_size,
            pos: 0,
        }
    }
}

impl<R: Read> Read for Expand<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        loop {
            let hole_end = match self.segments.first() {
                Some(s) if s.len == 0 || self.pos >= s.offset + s.len => {
                    self.segments = &self.segments[1..];
                    continue;
                }
                Some(s) if self.pos >= s.offset => {
                    let want = clamp(s.offset + s.len - self.pos);
                    let n = self.data.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                Some(s) => s.offset,
                None => self.real_size,
            };
            let n = clamp(hole_end.saturating_sub(self.pos));
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn check_accepts_gnu_maps_and_refuses_bad_ones() {
        let good = [seg(0, 1024), seg(4096, 5), seg(9000, 0)];
        assert!(check(&good, 9000, 1029).is_ok());
        let unaligned = check(&[seg(0, 10), seg(4096, 5)], 9000, 15).unwrap_err();
        assert!(unaligned.contains("multiple of 512"), "{unaligned}");
        assert!(check(&[], 1 << 40, 0).is_ok());
        let overlap = check(&[seg(0, 512), seg(5, 5)], 1000, 517).unwrap_err();
        assert!(overlap.contains("overlap"), "{overlap}");
        let order = check(&[seg(50, 0), seg(10, 1)], 100, 1).unwrap_err();
        assert!(order.contains("out of order"), "{order}");
        let past = check(&[seg(95, 10)], 100, 10).unwrap_err();
        assert!(past.contains("past the real size"), "{past}");
        let wrap = check(&[seg(u64::MAX, 2)], u64::MAX, 2).unwrap_err();
        assert!(wrap.contains("past the real size"), "{wrap}");
        let sum = check(&[seg(0, 10)], 100, 11).unwrap_err();
        assert!(sum.contains("covers 10 bytes"), "{sum}");
    }

    #[test]
    fn list_and_line_maps() {
        assert_eq!(
            parse_list(b"0,10,4096,5").unwrap(),
            vec![seg(0, 10), seg(4096, 5)]
        );
        assert!(parse_list(b"0,10,4096").is_err());
        assert!(parse_list(b"0,x").is_err());
        let mut m = LineMap::default();
        assert!(!m.feed(b"2\n0\n10\n40").unwrap());
        assert!(m.feed(b"96\n5\n\0\0\0").unwrap());
        assert_eq!(m.segments(), vec![seg(0, 10), seg(4096, 5)]);
        assert!(LineMap::default().feed(b"1\n-5\n").is_err());
        assert!(LineMap::default().feed(b"\n").is_err());
        assert!(
            LineMap::default()
                .feed(b"999999999999999999999999\n")
                .is_err()
        );
    }

    #[test]
    fn expand_fills_holes_with_zeros() {
        let map = [seg(0, 0), seg(2, 3), seg(8, 2), seg(12, 0)];
        let mut out = Vec::new();
        Expand::new(&b"abcde"[..], &map, 12)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"\0\0abc\0\0\0de\0\0");
        let mut short = Vec::new();
        let err = Expand::new(&b"ab"[..], &map, 12).read_to_end(&mut short);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
