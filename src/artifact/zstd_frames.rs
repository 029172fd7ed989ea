//! zstd laid out for parallel decoding: independent frames of a bounded size.
//!
//! One zstd frame is one core's work to decode. Here the tar stream is cut into blocks of
//! [`BLOCK`] bytes, each compressed as a frame of its own that declares its content size
//! (zstd reads any number of frames as one stream), after a skippable frame that marks the
//! layout (every zstd reader skips it). A frame's end is found by walking its block
//! headers (three bytes each) without decoding it, so a reader splits the stream on one
//! thread and decodes frames on every core ([`super::parallel_decode`]).
//!
//! A frame of this layout declares its content size, at most [`MAX_FRAME`], and takes at
//! most [`MAX_FRAME`] bytes itself: a reader refuses a frame that breaks either bound
//! before decoding it.

use std::io::{self, Read, Write};

use std::sync::Arc;

use super::block_writer::{BlockWriter, Compress};
use crate::beneath::read_full;

/// Bytes of tar per frame: 4 MiB keeps the output within about 2% of one frame's size
/// (1 MiB frames cost 10% on a tree of `/usr` files; zstd's window spans megabytes).
pub const BLOCK: usize = 4 << 20;
/// The most a frame may take, compressed or not.
pub const MAX_FRAME: usize = 5 << 20;

const MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
/// The skippable frame that starts a stream of this layout.
const MARKER_MAGIC: u32 = 0x184D_2A5E;
const MARKER: &[u8] = b"droot-fleet zstd frames v1";
/// The largest skippable frame a reader takes (its bytes are read and dropped).
const MAX_SKIPPABLE: usize = 64 << 10;
/// A zstd block's largest content (RFC 8878, `Block_Maximum_Size`).
const MAX_BLOCK: usize = 128 << 10;

/// The marker frame.
fn marker() -> Vec<u8> {
    let mut m = MARKER_MAGIC.to_le_bytes().to_vec();
    m.extend_from_slice(&(MARKER.len() as u32).to_le_bytes());
    m.extend_from_slice(MARKER);
    m
}

/// Whether `head` starts a stream of this layout.
pub fn is_marked(head: &[u8]) -> bool {
    head.starts_with(&marker())
}

/// Whether `head` starts with a skippable frame (zstd readers skip it).
pub fn starts_skippable(head: &[u8]) -> bool {
    head.get(..4)
        .is_some_and(|m| SKIPPABLE.contains(&u32::from_le_bytes([m[0], m[1], m[2], m[3]])))
}

/// A writer of [`BLOCK`]-sized zstd frames after the layout's marker (written to `out` at
/// once), compressed on worker threads.
pub fn writer<W: Write>(mut out: W, level: i32) -> io::Result<BlockWriter<W>> {
    out.write_all(&marker())?;
    let compress: Compress = Arc::new(move |block: &[u8]| frame(block, level));
    BlockWriter::new(out, BLOCK, compress)
}

/// One block as a frame that declares its size and carries a checksum.
fn frame(block: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.include_contentsize(true)?;
    compressor.include_checksum(true)?;
    let frame = compressor.compress(block)?;
    debug_assert!(frame.len() <= MAX_FRAME);
    Ok(frame)
}

/// The reader's side: frames found by their block headers, decoded and checked.
pub struct ZstdFrames;

impl super::parallel_decode::Layout for ZstdFrames {
    fn read_member(&self, raw: &mut dyn Read, n: u64, offset: u64) -> io::Result<Option<Vec<u8>>> {
        read_frame(raw, n, offset)
    }

    fn decode(&self, n: u64, frame: &[u8]) -> io::Result<Vec<u8>> {
        decode(n, frame)
    }
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads exactly `len` more bytes onto `frame`, or names the truncation.
fn take(raw: &mut dyn Read, frame: &mut Vec<u8>, len: usize, at: &str) -> io::Result<()> {
    let start = frame.len();
    if start + len > MAX_FRAME + 8 {
        return Err(bad(format!("{at}: longer than {MAX_FRAME} bytes")));
    }
    frame.resize(start + len, 0);
    if read_full(raw, &mut frame[start..])? < len {
        return Err(bad(format!("{at}: the stream ends inside it")));
    }
    Ok(())
}

/// Frame `n` at byte `offset` of `raw`, whole: `None` at a clean end of the stream.
fn read_frame(raw: &mut dyn Read, n: u64, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let at = format!("zstd frame {n} at byte {offset}");
    let mut frame = Vec::new();
    let mut magic = [0u8; 4];
    match read_full(raw, &mut magic)? {
        0 => return Ok(None),
        4 => frame.extend_from_slice(&magic),
        _ => {
            return Err(bad(format!(
                "{at}: the stream ends inside its magic number"
            )));
        }
    }
    let magic = u32::from_le_bytes(magic);
    if SKIPPABLE.contains(&magic) {
        take(raw, &mut frame, 4, &at)?;
        let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        if len > MAX_SKIPPABLE {
            return Err(bad(format!("{at}: a skippable frame of {len} bytes")));
        }
        take(raw, &mut frame, len, &at)?;
        return Ok(Some(frame));
    }
    if magic != MAGIC {
        return Err(bad(format!(
            "{at}: not a zstd frame (the stream mixes layouts, or trailing data)"
        )));
    }
    take(raw, &mut frame, 1, &at)?;
    let fhd = frame[4];
    if fhd & 0x08 != 0 {
        return Err(bad(format!("{at}: a reserved header bit is set")));
    }
    let single = fhd & 0x20 != 0;
    let fcs_len = match (fhd >> 6, single) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 0x03)];
    if fcs_len == 0 {
        return Err(bad(format!(
            "{at}: declares no content size (not the parallel layout)"
        )));
    }
    take(
        raw,
        &mut frame,
        usize::from(!single) + dict_len + fcs_len,
        &at,
    )?;
    loop {
        take(raw, &mut frame, 3, &at)?;
        let h = &frame[frame.len() - 3..];
        let header = u32::from_le_bytes([h[0], h[1], h[2], 0]);
        let (last, kind, size) = (header & 1 != 0, (header >> 1) & 3, (header >> 3) as usize);
        if size > MAX_BLOCK || kind == 3 {
            return Err(bad(format!("{at}: a malformed block header")));
        }
        take(raw, &mut frame, if kind == 1 { 1 } else { size }, &at)?;
        if last {
            break;
        }
    }
    if fhd & 0x04 != 0 {
        take(raw, &mut frame, 4, &at)?;
    }
    Ok(Some(frame))
}

/// The output of frame `n`, of the size it declares (zstd checks its checksum).
pub fn decode(n: u64, frame: &[u8]) -> io::Result<Vec<u8>> {
    if starts_skippable(frame) {
        return Ok(Vec::new());
    }
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .ok_or_else(|| bad(format!("zstd frame {n}: declares no content size")))?;
    if size > MAX_FRAME as u64 {
        return Err(bad(format!(
            "zstd frame {n}: declares {size} bytes, over {MAX_FRAME}"
        )));
    }
    let out = zstd::bulk::Decompressor::new()?
        .decompress(frame, size as usize)
        .map_err(|e| bad(format!("zstd frame {n}: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "zstd frame {n}: decodes to {} bytes, it declares {size}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "zstd_frames_tests.rs"]
mod tests;
