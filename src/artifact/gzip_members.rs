//! gzip laid out for parallel decoding: independent members that say their own length.
//!
//! A plain gzip stream is one deflate stream: decoding it is one core's work, and on a
//! 2-core host that core is the bottleneck of an unpack. Here the tar stream is cut into
//! blocks of [`BLOCK`] bytes, each compressed as a gzip member of its own (RFC 1952 allows
//! any number, and `gunzip`, `zcat` and every gzip library read them as one stream). Each
//! member's header carries an extra subfield `DF` with the member's total length, as BGZF's
//! `BC` does, so a reader finds every member without inflating the one before it, and
//! members can be inflated on every core ([`super::parallel_decode`]).
//!
//! Member header (20 bytes): `1f 8b 08 04`, MTIME 0, XFL 0, OS 255, XLEN 8, then the
//! subfield `D F`, length 4, and the member's total length (header, deflate data and the
//! 8-byte trailer) as a little-endian u32. A member holds at most [`MAX_MEMBER`] bytes
//! in and out: a reader refuses a longer one before buffering it.

use std::io::{self, Read, Write};

use std::sync::Arc;

use super::block_writer::{BlockWriter, Compress};
use crate::beneath::read_full;

/// Bytes of tar per member.
pub const BLOCK: usize = 1 << 20;
/// The most a member may take, compressed or not (a reader's bound per member).
pub const MAX_MEMBER: usize = 4 << 20;
/// Length of the header [`member_header`] writes.
pub const HEADER_LEN: usize = 20;
/// CRC32 and ISIZE.
pub const TRAILER_LEN: usize = 8;

const FEXTRA: u8 = 0x04;
const SUBFIELD: [u8; 2] = *b"DF";

/// The header of a member whose total length is `member_len`.
pub fn member_header(member_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, FEXTRA]);
    // MTIME (4 bytes) and XFL stay 0.
    h[9] = 255; // OS: unknown
    h[10..12].copy_from_slice(&8u16.to_le_bytes());
    h[12..14].copy_from_slice(&SUBFIELD);
    h[14..16].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&member_len.to_le_bytes());
    h
}

/// The total length of the member `head` starts, if it is a member of this layout
/// (`None` for any other gzip header).
pub fn member_len(head: &[u8]) -> Option<usize> {
    let h = head.get(..HEADER_LEN)?;
    let ours = h[..4] == [0x1f, 0x8b, 0x08, FEXTRA]
        && h[10..12] == 8u16.to_le_bytes()
        && h[12..14] == SUBFIELD
        && h[14..16] == 4u16.to_le_bytes();
    ours.then(|| u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize)
}

/// A writer of [`BLOCK`]-sized gzip members, compressed on worker threads.
pub fn writer<W: Write>(out: W, level: flate2::Compression) -> io::Result<BlockWriter<W>> {
    let compress: Compress = Arc::new(move |block: &[u8]| member(block, level));
    BlockWriter::new(out, BLOCK, compress)
}

/// One block as a whole member: header, deflate data, CRC32 and size.
fn member(block: &[u8], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let mut crc = flate2::Crc::new();
    crc.update(block);
    let mut out = Vec::with_capacity(block.len() / 2 + 64);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut deflate = flate2::write::DeflateEncoder::new(out, level);
    deflate.write_all(block)?;
    let mut out = deflate.finish()?;
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    // Deflate grows incompressible input by a few bytes per 64 KiB: far under the bound.
    debug_assert!(out.len() <= MAX_MEMBER);
    let header = member_header(out.len() as u32);
    out[..HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

/// The reader's side: members found by their `DF` length, inflated and checked.
pub struct GzipMembers;

impl super::parallel_decode::Layout for GzipMembers {
    fn read_member(&self, raw: &mut dyn Read, n: u64, offset: u64) -> io::Result<Option<Vec<u8>>> {
        read_member(raw, n, offset)
    }

    fn decode(&self, n: u64, member: &[u8]) -> io::Result<Vec<u8>> {
        inflate(n, member)
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
mod tests {
    use super::*;

    fn members(data: &[u8]) -> Vec<u8> {
        let mut w = writer(Vec::new(), flate2::Compression::fast()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn any_gzip_reader_reads_the_members_as_one_stream() {
        let data: Vec<u8> = (0..(2 * BLOCK + 12345)).map(|i| (i % 251) as u8).collect();
        let gz = members(&data);
        assert_eq!(gunzip(&gz), data);
        // Three members, each found from its header alone.
        let mut at = 0;
        let mut count = 0;
        while at < gz.len() {
            at += member_len(&gz[at..]).expect("a member header");
            count += 1;
        }
        assert_eq!((at, count), (gz.len(), 3));
    }

    #[test]
    fn an_empty_stream_is_one_empty_member() {
        let gz = members(b"");
        assert_eq!(member_len(&gz), Some(gz.len()));
        assert!(gunzip(&gz).is_empty());
    }

    #[test]
    fn other_gzip_headers_are_not_members_of_this_layout() {
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        plain.write_all(b"abc").unwrap();
        assert_eq!(member_len(&plain.finish().unwrap()), None);
        let mut h = member_header(100);
        h[13] = b'X';
        assert_eq!(member_len(&h), None);
        assert_eq!(member_len(&member_header(100)[..19]), None);
    }
}
