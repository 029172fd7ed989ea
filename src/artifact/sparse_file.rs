//! Writing a sparse entry into an open file: data segments at their offsets, holes as holes.
//!
//! Each segment is written with `pwrite` at its offset and the file is then sized to the real
//! size with `ftruncate`, so the holes take no blocks: a 2 KB archive describing a 2 GiB file
//! writes 2 KB. The map was checked by the reader (sorted, no overlaps, inside the size).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::tar::Segment;
use super::unpack::CopyError;

/// Writes `data` (the stored segments, back to back) into `file` as described by `map`,
/// then sets the file's length to `real_size`.
pub(crate) fn write_sparse(
    file: &File,
    mut data: impl Read,
    map: &[Segment],
    real_size: u64,
    buf: &mut [u8],
) -> Result<(), CopyError> {
    for seg in map {
        let mut at = seg.offset;
        let end = seg.offset + seg.len;
        while at < end {
            let want = buf
                .len()
                .min(usize::try_from(end - at).unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => return Err(CopyError::Read(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            file.write_all_at(&buf[..n], at).map_err(CopyError::Write)?;
            at += n as u64;
        }
    }
    file.set_len(real_size).map_err(CopyError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn holes_take_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let size = 2u64 << 30;
        let map = [
            Segment { offset: 0, len: 4 },
            Segment {
                offset: 1 << 30,
                len: 4,
            },
            Segment {
                offset: size,
                len: 0,
            },
        ];
        let mut buf = vec![0; 4096];
        write_sparse(&file, &b"headtail"[..], &map, size, &mut buf)
            .ok()
            .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut got = [0u8; 4];
        file.read_exact_at(&mut got, 1 << 30).unwrap();
        assert_eq!(&got, b"tail");
        file.read_exact_at(&mut got, 4).unwrap();
        assert_eq!(got, [0; 4]);
    }

    #[test]
    fn short_data_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let map = [Segment { offset: 0, len: 10 }];
        let err = write_sparse(&file, &b"abc"[..], &map, 10, &mut [0; 8]);
        assert!(matches!(err, Err(CopyError::Read(_))));
    }
}
