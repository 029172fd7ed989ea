//! One 512-byte tar header block: format, checksum, numeric fields, names.
//!
//! Decodes v7, ustar (POSIX and star), GNU and old GNU headers as GNU tar does: the checksum
//! may have been summed over unsigned or signed bytes (old writers with high-bit names), and
//! numeric fields are octal (with leading spaces or one leading NUL) or GNU base-256. Names
//! stay bytes. Nothing here allocates more than one header's worth.

use super::sparse::Segment;

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Which header layout a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Pre-POSIX: no magic, no owner names, no prefix.
    V7,
    /// POSIX ustar (also what PAX archives use): name = prefix "/" name.
    Ustar,
    /// Jörg Schilling's star: ustar with a shorter prefix.
    Star,
    /// GNU and old GNU (`ustar  \0`): no prefix; that area holds times and sparse data.
    Gnu,
}

/// A numeric field that is not a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadField(pub &'static str);

/// A decoded header block, before extension headers are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: Format,
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Old GNU sparse (`S`): the map in this header, whether more follows, the real size.
    pub old_sparse: Option<OldSparse>,
}

/// The sparse part of an old GNU `S` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldSparse {
    pub segments: Vec<Segment>,
    pub extended: bool,
    pub real_size: u64,
}

/// Whether a block is all zeros (an end-of-archive marker).
pub fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|b| *b == 0)
}

/// Whether the block's checksum matches, summed over unsigned or over signed bytes.
pub fn checksum_ok(block: &[u8]) -> bool {
    if block.len() < BLOCK {
        return false;
    }
    let Ok(Some(stored)) = number(&block[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block[..BLOCK].iter().enumerate() {
        let (u, s) = if (148..156).contains(&i) {
            (32, 32)
        } else {
            (i64::from(*b), i64::from(*b as i8))
        };
        unsigned += u;
        signed += s;
    }
    stored == unsigned || stored == signed
}

/// A numeric field: `None` when blank, an error when neither octal nor base-256. Negative
/// base-256 values come back as negative numbers.
pub(crate) fn number(field: &[u8]) -> Result<Option<i64>, ()> {
    let Some(first) = field.first() else {
        return Ok(None);
    };
    if *first == 0x80 || *first == 0xff {
        return base256(field).map(Some);
    }
    // One leading NUL (an overflowing previous field) and leading spaces are tolerated.
    let mut rest = field;
    if rest.first() == Some(&0) {
        rest = &rest[1..];
    }
    let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
    let rest = &rest[start..];
    let end = rest
        .iter()
        .position(|b| !(b'0'..=b'7').contains(b))
        .unwrap_or(rest.len());
    if !rest[end..].iter().all(|b| *b == 0 || *b == b' ') {
        return Err(());
    }
    if end == 0 {
        return Ok(None);
    }
    let mut v: i64 = 0;
    for d in &rest[..end] {
        v = v
            .checked_mul(8)
            .ok_or(())?
            .checked_add(i64::from(d - b'0'))
            .ok_or(())?;
    }
    Ok(Some(v))
}

fn base256(field: &[u8]) -> Result<i64, ()> {
    // 0x80: a positive number in the remaining bits; 0xff: a two's complement negative.
    let mut v: i128 = if field[0] == 0xff { -1 } else { 0 };
    for b in &field[1..] {
        v = (v << 8) | i128::from(*b);
        if v > i128::from(i64::MAX) || v < i128::from(i64::MIN) {
            return Err(());
        }
    }
    i64::try_from(v).map_err(|_| ())
}

fn unsigned(field: &[u8], name: &'static str) -> Result<u64, BadField> {
    match number(field) {
        Ok(None) => Ok(0),
        Ok(Some(v)) => u64::try_from(v).map_err(|_| BadField(name)),
        Err(()) => Err(BadField(name)),
    }
}

/// A NUL-terminated string field.
pub fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn format_of(block: &[u8]) -> Format {
    match (&block[257..263], &block[263..265]) {
        (b"ustar ", b" \0") => Format::Gnu,
        (b"ustar\0", _) if &block[508..512] == b"tar\0" => Format::Star,
        (b"ustar\0", _) => Format::Ustar,
        _ => Format::V7,
    }
}

/// Decodes a block whose checksum was already checked.
pub fn parse(block: &[u8; BLOCK]) -> Result<Header, BadField> {
    let format = format_of(block);
    let typeflag = block[156];
    let mut name = text(&block[0..100]).to_vec();
    let prefix = match format {
        Format::Ustar => text(&block[345..500]),
        Format::Star => text(&block[345..476]),
        Format::V7 | Format::Gnu => &[][..],
    };
    if !prefix.is_empty() {
        let mut joined = prefix.to_vec();
        joined.push(b'/');
        joined.extend_from_slice(&name);
        name = joined;
    }
    let (uname, gname) = match format {
        Format::V7 => (Vec::new(), Vec::new()),
        _ => (
            text(&block[265..297]).to_vec(),
            text(&block[297..329]).to_vec(),
        ),
    };
    let device = matches!(typeflag, b'3' | b'4') && format != Format::V7;
    let dev = |range: std::ops::Range<usize>, what| -> Result<u32, BadField> {
        if !device {
            return Ok(0);
        }
        u32::try_from(unsigned(&block[range], what)?).map_err(|_| BadField(what))
    };
    let mtime = match number(&block[136..148]) {
        Ok(v) => v.unwrap_or(0),
        Err(()) => return Err(BadField("mtime")),
    };
    let old_sparse = if format == Format::Gnu && typeflag == b'S' {
        Some(OldSparse {
            segments: sparse_slots(&block[386..482], 4)?,
            extended: block[482] != 0,
            real_size: unsigned(&block[483..495], "realsize")?,
        })
    } else {
        None
    };
    Ok(Header {
        format,
        typeflag,
        linkname: text(&block[157..257]).to_vec(),
        mode: (unsigned(&block[100..108], "mode")? & 0o7777) as u32,
        uid: unsigned(&block[108..116], "uid")?,
        gid: unsigned(&block[116..124], "gid")?,
        size: unsigned(&block[124..136], "size")?,
        mtime,
        uname,
        gname,
        dev_major: dev(329..337, "devmajor")?,
        dev_minor: dev(337..345, "devminor")?,
        old_sparse,
        name,
    })
}

/// Up to `count` old GNU sparse slots (offset, numbytes, 12 bytes each); a blank slot ends
/// the list.
pub fn sparse_slots(area: &[u8], count: usize) -> Result<Vec<Segment>, BadField> {
    let mut out = Vec::new();
    for i in 0..count {
        let slot = &area[i * 24..i * 24 + 24];
        let Ok(Some(offset)) = number(&slot[..12]) else {
            if number(&slot[..12]).is_err() {
                return Err(BadField("sparse offset"));
            }
            break;
        };
        let len = unsigned(&slot[12..], "sparse numbytes")?;
        let offset = u64::try_from(offset).map_err(|_| BadField("sparse offset"))?;
        out.push(Segment { offset, len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block built by hand: `fields` are (offset, bytes).
    fn block(magic: &[u8], typeflag: u8, fields: &[(usize, &[u8])], signed: bool) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..8].copy_from_slice(b"file.txt");
        b[100..108].copy_from_slice(b"0000644\0");
        b[124..136].copy_from_slice(b"00000000005\0");
        b[136..148].copy_from_slice(b"14000000000\0");
        b[156] = typeflag;
        b[257..257 + magic.len()].copy_from_slice(magic);
        for (at, bytes) in fields {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        b[148..156].fill(b' ');
        let sum: i64 = b
            .iter()
            .map(|x| {
                if signed {
                    i64::from(*x as i8)
                } else {
                    i64::from(*x)
                }
            })
            .sum();
        let text = format!("{:06o}\0 ", sum);
        b[148..156].copy_from_slice(text.as_bytes());
        b
    }

    #[test]
    fn v7_header_with_a_signed_checksum_and_high_bit_name() {
        let b = block(b"", b'0', &[(0, b"caf\xe9\xff.txt\0")], true);
        assert!(checksum_ok(&b));
        let h = parse(&b).unwrap();
        assert_eq!(h.format, Format::V7);
        assert_eq!(h.name, b"caf\xe9\xff.txt");
        assert_eq!((h.mode, h.size, h.mtime), (0o644, 5, 0o14000000000));
        let mut bad = b;
        bad[5] ^= 1;
        assert!(!checksum_ok(&bad));
    }

    #[test]
    fn every_format_with_either_checksum_form() {
        let formats: [(&[u8], Format); 4] = [
            (b"", Format::V7),
            (b"ustar\x0000", Format::Ustar),
            (b"ustar  \0", Format::Gnu),
            (b"ustar\x0000", Format::Star),
        ];
        for (magic, format) in formats {
            for signed in [false, true] {
                let mut fields: Vec<(usize, &[u8])> = vec![(0, b"n\xe4me\0")];
                if format == Format::Star {
                    fields.push((508, b"tar\0"));
                }
                let b = block(magic, b'0', &fields, signed);
                assert!(checksum_ok(&b), "{format:?} signed={signed}");
                let h = parse(&b).unwrap();
                assert_eq!((h.format, h.name.as_slice()), (format, &b"n\xe4me"[..]));
            }
        }
    }

    #[test]
    fn unsigned_checksum_and_ustar_prefix() {
        let b = block(b"ustar\x0000", b'0', &[(345, b"some/dir")], false);
        assert!(checksum_ok(&b));
        let h = parse(&b).unwrap();
        assert_eq!(h.format, Format::Ustar);
        assert_eq!(h.name, b"some/dir/file.txt");
    }

    #[test]
    fn gnu_has_no_prefix_and_reads_old_sparse() {
        let b = block(
            b"ustar  \0",
            b'S',
            &[
                (345, b"00000000000\0"),
                (386, b"00000000000\x0000000001000\0"),
                (410, b"00000010000\x0000000000005\0"),
                (483, b"00000020000\0"),
            ],
            false,
        );
        assert!(checksum_ok(&b));
        let h = parse(&b).unwrap();
        assert_eq!(h.format, Format::Gnu);
        assert_eq!(h.name, b"file.txt");
        let s = h.old_sparse.unwrap();
        assert_eq!(
            s.segments,
            vec![
                Segment {
                    offset: 0,
                    len: 0o1000
                },
                Segment {
                    offset: 0o10000,
                    len: 5
                }
            ]
        );
        assert_eq!((s.extended, s.real_size), (false, 0o20000));
    }

    #[test]
    fn star_prefix_is_shorter() {
        let b = block(
            b"ustar\x0000",
            b'5',
            &[(345, b"pre"), (508, b"tar\0")],
            false,
        );
        let h = parse(&b).unwrap();
        assert_eq!(
            (h.format, h.name.as_slice()),
            (Format::Star, &b"pre/file.txt"[..])
        );
    }

    #[test]
    fn base256_numbers_large_uid_and_size() {
        let mut uid = [0u8; 8];
        uid[0] = 0x80;
        uid[4..].copy_from_slice(&3_000_000_000u32.to_be_bytes());
        let mut size = [0u8; 12];
        size[0] = 0x80;
        size[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
        let b = block(b"ustar  \0", b'0', &[(108, &uid), (124, &size)], false);
        let h = parse(&b).unwrap();
        assert_eq!((h.uid, h.size), (3_000_000_000, 9 << 30));
        assert_eq!(number(&[0xff; 12]), Ok(Some(-1)));
        let mut neg = [0xffu8; 12];
        neg[11] = 0xfe;
        assert_eq!(number(&neg), Ok(Some(-2)));
    }

    #[test]
    fn octal_quirks_and_garbage() {
        assert_eq!(number(b"  0755 \0"), Ok(Some(0o755)));
        assert_eq!(number(b"\x000755\0"), Ok(Some(0o755)));
        assert_eq!(number(b"\0\0\0\0"), Ok(None));
        assert_eq!(number(b"        "), Ok(None));
        assert_eq!(number(b"07x5\0"), Err(()));
        assert_eq!(number(b"0789"), Err(()));
        assert_eq!(
            number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(())
        );
        let b = block(b"ustar\x0000", b'0', &[(108, b"abc\0")], false);
        assert_eq!(parse(&b), Err(BadField("uid")));
    }

    #[test]
    fn blank_or_garbage_checksums_fail() {
        let mut b = block(b"", b'0', &[], false);
        b[148..156].fill(b' ');
        assert!(!checksum_ok(&b));
        assert!(!checksum_ok(&[0u8; 100]));
    }
}
