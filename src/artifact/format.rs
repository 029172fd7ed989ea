//! Archive format detection by magic bytes, and the matching decoder.
//!
//! An error here never quotes the input: the artifact may be any file a signed URL names,
//! and outcome errors travel the whole fleet. It says what was looked for instead.

use std::io::{self, BufRead, BufReader, Read};

use super::gzip_members::GzipMembers;
use super::parallel_decode::ParallelDecode;
use super::zstd_frames::ZstdFrames;

/// The compression wrapped around a tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compressor's name: `none`, `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("input is empty: expected a tar, tar.gz or tar.zst archive")]
    Empty,
    #[error(
        "input is not a tar, tar.gz or tar.zst archive: it starts with neither a gzip nor a \
         zstd magic number nor a valid tar header ({0} bytes examined)"
    )]
    Unknown(usize),
    #[error("cannot read archive")]
    Io(#[from] io::Error),
}

/// Whether a 512-byte block looks like a tar header: its checksum must match, summed over
/// unsigned or signed bytes (as GNU tar accepts).
pub fn is_tar_header(block: &[u8]) -> bool {
    super::tar::header::checksum_ok(block)
}

/// The compression whose magic bytes `head` starts with, if any.
pub fn compression_of(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) || super::zstd_frames::starts_skippable(head) {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// Wraps `raw` in the decoder for `kind`.
pub fn decompress<'a, R: Read + Send + 'a>(
    kind: Compression,
    raw: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match kind {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 18,
            raw,
        ))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
    })
}

/// Classifies the first bytes of an archive.
pub fn classify(head: &[u8]) -> Result<Compression, FormatError> {
    if head.is_empty() {
        return Err(FormatError::Empty);
    }
    if let Some(kind) = compression_of(head) {
        return Ok(kind);
    }
    if is_tar_header(head) || head.iter().take(1024).all(|b| *b == 0) && head.len() >= 1024 {
        return Ok(Compression::None);
    }
    Err(FormatError::Unknown(head.len().min(512)))
}

/// Reads up to `want` bytes into the buffer of `r` without consuming them.
fn peek<R: Read>(r: &mut BufReader<R>, want: usize) -> io::Result<Vec<u8>> {
    // BufReader only refills when empty, so copy what is buffered and top it up manually.
    let mut head = r.fill_buf()?.to_vec();
    if head.len() >= want || head.is_empty() {
        return Ok(head);
    }
    let mut rest = Vec::with_capacity(want - head.len());
    let inner_consumed = head.len();
    r.consume(inner_consumed);
    r.get_mut()
        .take((want - inner_consumed) as u64)
        .read_to_end(&mut rest)?;
    head.extend_from_slice(&rest);
    Ok(head)
}

/// Detects the format of `input` and returns a reader of the plain tar stream.
pub fn detect<R: Read + Send + 'static>(
    input: R,
) -> Result<(Compression, Box<dyn Read + Send>), FormatError> {
    detect_layout(input).map(|d| (d.compression, d.reader))
}

/// What [`detect_layout`] found.
pub struct Detected {
    pub compression: Compression,
    /// The plain tar stream.
    pub reader: Box<dyn Read + Send>,
    /// A parallel layout: it is read and decoded on threads of its own already (a
    /// prefetching thread on top would only add a copy).
    pub parallel: bool,
}

/// [`detect`], saying whether the input is in a parallel layout.
pub fn detect_layout<R: Read + Send + 'static>(input: R) -> Result<Detected, FormatError> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let head = peek(&mut buffered, 512)?;
    let compression = classify(&head)?;
    let gzip_members =
        compression == Compression::Gzip && super::gzip_members::member_len(&head).is_some();
    let zstd_frames = compression == Compression::Zstd && super::zstd_frames::is_marked(&head);
    // Re-assemble what was peeked with the rest of the stream.
    let buffered_len = buffered.buffer().len();
    let raw: Box<dyn Read + Send> = if buffered_len == head.len() {
        Box::new(buffered)
    } else {
        Box::new(io::Cursor::new(head).chain(buffered))
    };
    // The parallel layouts (what `publish` writes) are decoded on every core.
    // At most 4: each member in flight may take 8 MiB (in and out) of a hostile stream.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let reader: Box<dyn Read + Send> = if gzip_members {
        Box::new(ParallelDecode::spawn(raw, GzipMembers, workers)?)
    } else if zstd_frames {
        Box::new(ParallelDecode::spawn(raw, ZstdFrames, workers)?)
    } else {
        decompress(compression, raw)?
    };
    Ok(Detected {
        compression,
        reader,
        parallel: gzip_members || zstd_frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a.txt", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn read_all(r: &mut dyn Read) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn detects_each_format_and_round_trips() {
        let tar = tar_bytes();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (bytes, kind) in [
            (tar.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
        ] {
            let (k, mut r) = detect(io::Cursor::new(bytes)).unwrap();
            assert_eq!(k, kind);
            assert_eq!(read_all(&mut r), tar);
        }
    }

    #[test]
    fn short_reads_are_reassembled() {
        // A reader that returns one byte at a time must still detect a tar header.
        struct OneByte(io::Cursor<Vec<u8>>);
        impl Read for OneByte {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let tar = tar_bytes();
        let (k, mut r) = detect(OneByte(io::Cursor::new(tar.clone()))).unwrap();
        assert_eq!(k, Compression::None);
        assert_eq!(read_all(&mut r), tar);
    }

    #[test]
    fn signed_checksums_are_tar_too() {
        // A v7 header with a high-bit name whose checksum was summed over signed bytes.
        let mut h = [0u8; 512];
        h[..6].copy_from_slice(b"caf\xe9\xff/");
        h[100..108].copy_from_slice(b"0000755\0");
        h[148..156].fill(b' ');
        let signed: i64 = h.iter().map(|b| i64::from(*b as i8)).sum();
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(is_tar_header(&h));
        let mut data = h.to_vec();
        data.resize(2048, 0);
        assert_eq!(classify(&data).unwrap(), Compression::None);
    }

    #[test]
    fn rejects_garbage_and_empty() {
        assert!(matches!(
            detect(io::Cursor::new(b"PK\x03\x04 zip file".to_vec())),
            Err(FormatError::Unknown(13))
        ));
        assert!(matches!(
            detect(io::Cursor::new(Vec::new())),
            Err(FormatError::Empty)
        ));
    }

    /// Regression (issue 15): the error quoted the first bytes of the input, so a signed
    /// `file:///etc/shadow` printed `72 6f 6f 74 3a 2a ...` in outcomes fleet-wide.
    #[test]
    fn a_garbage_artifact_error_quotes_none_of_its_bytes() {
        let secret = b"root:*:19000:0:99999:7:::\nalice:$6$salt$hash:19000::::::\n".repeat(4);
        let e = detect(io::Cursor::new(secret.clone()))
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(text.contains("not a tar"), "{text}");
        let hex: Vec<String> = secret[..4].iter().map(|b| format!("{b:02x}")).collect();
        for needle in ["root", "alice", "72 6f", &hex.join(" "), &hex.join("")] {
            assert!(!text.contains(needle), "{needle:?} in {text}");
        }
    }
}
