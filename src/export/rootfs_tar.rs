//! Writing the flat rootfs tar: entry re-writing, `/.drootenv`, compression.
//!
//! Every entry gets a fresh GNU header (long names via GNU extensions, big ids via base-256)
//! built from the source header and its PAX overrides, rather than copying header bytes:
//! sources mix ustar, GNU and PAX and we want one consistent, relative-path output. Extended
//! attributes (e.g. `security.capability` on `ping`) are carried over as PAX records.
//!
//! Device nodes and FIFOs under `dev/` are left out (and counted): `run` mounts a fresh `/dev`
//! over the release's, so they could never be used, and `deploy` refuses device nodes by
//! default. A hardlink to one left out is left out too when it is under `dev/`, and becomes a
//! copy of the node elsewhere, so the output never holds a dangling hardlink. Everything else is
//! written as it came, devices outside `dev/` included (deploy decides about those).
//!
//! Read errors (the source) and write errors (the output) are told apart ([`CopyError`]) so
//! the caller can blame the right side.
//!
//! The file contents written are capped ([`OutputOptions::max_bytes`]), a sparse file counted
//! at its full size: the output holds it whole, so a small layer declaring a 1 TiB sparse
//! file would otherwise make the export write without end. The cap is checked from the
//! entry's header, before any of its data is written.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use tar::{EntryType, Header};

use crate::artifact::block_writer::BlockWriter;
use crate::artifact::tar::{Entry, Kind};

/// Output compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

/// Default byte limit of an export: what `deploy` accepts by default.
pub const DEFAULT_MAX_BYTES: u64 = crate::artifact::DEFAULT_MAX_BYTES;

/// How the output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    pub compression: Compression,
    /// The compression level (gzip 0-9, zstd 1-19); `None` for the codec's usual one.
    pub level: Option<i32>,
    /// The most bytes of file contents the output may hold (sparse files at full size).
    pub max_bytes: u64,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            compression: Compression::None,
            level: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl From<Compression> for OutputOptions {
    fn from(compression: Compression) -> Self {
        OutputOptions {
            compression,
            ..OutputOptions::default()
        }
    }
}

/// A writer, maybe compressing (in a parallel layout: [`crate::artifact::gzip_members`],
/// [`crate::artifact::zstd_frames`]; any gunzip or zstd reads them, and the fetcher decodes
/// them on every core).
enum Encoder<W: Write> {
    Raw(W),
    Blocks(BlockWriter<W>),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, opts: OutputOptions) -> io::Result<Self> {
        Ok(match opts.compression {
            Compression::None => Encoder::Raw(out),
            Compression::Gzip => {
                let level = opts.level.map_or(6, |l| l.clamp(0, 9) as u32);
                let level = flate2::Compression::new(level);
                Encoder::Blocks(crate::artifact::gzip_members::writer(out, level)?)
            }
            Compression::Zstd => {
                let level = opts.level.unwrap_or(3).clamp(1, 19);
                Encoder::Blocks(crate::artifact::zstd_frames::writer(out, level)?)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        let mut out = match self {
            Encoder::Raw(w) => w,
            Encoder::Blocks(e) => e.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Raw(w) => w.write(buf),
            Encoder::Blocks(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Raw(w) => w.flush(),
            Encoder::Blocks(e) => e.flush(),
        }
    }
}

/// Which side of a copy failed, or the byte limit it would pass.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge { limit: u64 },
}

/// The output tar being built.
pub struct RootfsWriter<W: Write> {
    builder: tar::Builder<Encoder<W>>,
    max_mtime: u64,
    entries: u64,
    /// Device nodes and FIFOs under `dev/` left out, by path, with their headers.
    masked: HashMap<Vec<u8>, Header>,
    masked_count: u64,
    /// File content bytes written so far, and the most allowed.
    bytes: u64,
    max_bytes: u64,
}

impl<W: Write> RootfsWriter<W> {
    pub fn new(out: W, opts: OutputOptions) -> io::Result<Self> {
        let mut builder = tar::Builder::new(Encoder::new(out, opts)?);
        builder.mode(tar::HeaderMode::Complete);
        Ok(Self {
            builder,
            max_mtime: 0,
            entries: 0,
            masked: HashMap::new(),
            masked_count: 0,
            bytes: 0,
            max_bytes: opts.max_bytes,
        })
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Device nodes and FIFOs under `dev/` (and hardlinks to them there) left out so far.
    pub fn skipped_devices(&self) -> u64 {
        self.masked_count
    }

    /// Copies `entry` to the output at `path`, its file contents read from `data` (see
    /// [`Archive::contents`](crate::artifact::tar::Archive::contents)); a hardlink points at
    /// `link_target` instead of its original name when given.
    pub fn copy_entry<R: Read>(
        &mut self,
        entry: &Entry,
        data: R,
        path: &[u8],
        link_target: Option<&[u8]>,
    ) -> Result<(), CopyError> {
        let (mut header, xattrs) = out_header(entry);
        if matches!(entry.kind, Kind::Char | Kind::Block | Kind::Fifo) && under_dev(path) {
            tracing::debug!(entry = %super::show(path), "device node under /dev left out");
            self.masked.insert(path.to_vec(), header);
            self.masked_count += 1;
            return Ok(());
        }
        if !self.masked.is_empty() {
            // A later entry replaces the node: hardlinks to this path now mean the new entry.
            self.masked.remove(path);
        }
        if entry.kind == Kind::HardLink {
            let target = match link_target {
                Some(t) => Some(t.to_vec()),
                None => super::normalize_path(&entry.link).ok(),
            };
            if let Some(node) = target.and_then(|t| self.masked.get(&t)) {
                return self.link_to_masked(node.clone(), path);
            }
        }
        if entry.kind == Kind::File {
            self.bytes = self.bytes.saturating_add(entry.size);
            if self.bytes > self.max_bytes {
                return Err(CopyError::TooLarge {
                    limit: self.max_bytes,
                });
            }
        }
        self.max_mtime = self.max_mtime.max(header.mtime().unwrap_or(0));
        if !xattrs.is_empty() {
            self.builder
                .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(CopyError::Write)?;
        }
        let path = std::ffi::OsStr::from_bytes(path);
        if matches!(entry.kind, Kind::Symlink | Kind::HardLink) {
            let target = link_target.unwrap_or(&entry.link);
            return self
                .builder
                .append_link(&mut header, path, std::ffi::OsStr::from_bytes(target))
                .map_err(CopyError::Write)
                .map(|()| self.entries += 1);
        }
        // Tell reading the source from writing the output apart.
        let mut failed_read = false;
        let mut source = ReadTap {
            inner: data,
            failed: &mut failed_read,
        };
        let result = if entry.kind == Kind::File {
            self.builder.append_data(&mut header, path, &mut source)
        } else {
            self.builder.append_data(&mut header, path, io::empty())
        };
        match result {
            Ok(()) => {
                self.entries += 1;
                Ok(())
            }
            Err(e) if failed_read => Err(CopyError::Read(e)),
            Err(e) => Err(CopyError::Write(e)),
        }
    }

    /// A hardlink at `path` to the left-out node `node`: left out under `dev/`, else the node
    /// itself (the first name of a node is as good as any other).
    fn link_to_masked(&mut self, mut node: Header, path: &[u8]) -> Result<(), CopyError> {
        if under_dev(path) {
            self.masked_count += 1;
            return Ok(());
        }
        self.builder
            .append_data(&mut node, std::ffi::OsStr::from_bytes(path), io::empty())
            .map_err(CopyError::Write)?;
        self.entries += 1;
        Ok(())
    }

    /// Adds `/.drootenv` with `text`, root-owned, mode 0644, dated like the newest entry so
    /// the same image always gives the same bytes.
    pub fn append_drootenv(&mut self, text: &str) -> io::Result<()> {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.max_mtime);
        header.set_size(text.len() as u64);
        self.builder
            .append_data(&mut header, crate::drootenv::FILE_NAME, text.as_bytes())?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the end-of-archive blocks, finishes compression, hands back the writer.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()?.finish()
    }
}

/// Whether a normalized path is strictly below `dev/`.
fn under_dev(path: &[u8]) -> bool {
    path.strip_prefix(b"dev/")
        .is_some_and(|rest| !rest.is_empty())
}

/// A reader that remembers its own error, so a failed copy can be blamed correctly.
struct ReadTap<'a, R> {
    inner: R,
    failed: &'a mut bool,
}

impl<R: Read> Read for ReadTap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| *self.failed = true)
    }
}

/// PAX records (key, value) to write before an entry.
type PaxRecords = Vec<(String, Vec<u8>)>;

/// A fresh GNU header for `entry`, plus the xattr PAX records to carry over.
fn out_header(entry: &Entry) -> (Header, PaxRecords) {
    let entry_type = match entry.kind {
        Kind::File => EntryType::Regular,
        Kind::Dir => EntryType::Directory,
        Kind::Symlink => EntryType::Symlink,
        Kind::HardLink => EntryType::Link,
        Kind::Char => EntryType::Char,
        Kind::Block => EntryType::Block,
        Kind::Fifo => EntryType::Fifo,
    };
    let mut h = Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(entry.mode);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h.set_mtime(u64::try_from(entry.mtime).unwrap_or(0));
    if !entry.uname.is_empty() {
        let _ = h.set_username(&String::from_utf8_lossy(&entry.uname));
    }
    if !entry.gname.is_empty() {
        let _ = h.set_groupname(&String::from_utf8_lossy(&entry.gname));
    }
    if matches!(entry.kind, Kind::Char | Kind::Block) {
        let _ = h.set_device_major(entry.dev_major);
        let _ = h.set_device_minor(entry.dev_minor);
    }
    h.set_size(if entry.kind == Kind::File {
        entry.size
    } else {
        0
    });
    let xattrs = entry
        .xattrs
        .iter()
        .filter_map(|(k, v)| Some((String::from_utf8(k.clone()).ok()?, v.clone())))
        .collect();
    (h, xattrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1234);
        h.set_size(5);
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x02"[..])])
            .unwrap();
        let long = format!("./{}/file", "d".repeat(150));
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        let mut l = Header::new_ustar();
        l.set_entry_type(EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "bin/sh", "busybox").unwrap();
        b.into_inner().unwrap()
    }

    fn rewrite(compression: Compression) -> Vec<u8> {
        let src = sample();
        let mut ar = crate::artifact::tar::Archive::new(src.as_slice());
        let mut w = RootfsWriter::new(Vec::new(), compression.into()).unwrap();
        while let Some(e) = ar.next_entry().unwrap() {
            let p = crate::export::normalize_path(&e.path).unwrap();
            w.copy_entry(&e, ar.contents(&e), &p, None).ok().unwrap();
        }
        w.append_drootenv("A=b=c\n").unwrap();
        assert_eq!(w.entries(), 3);
        w.finish().unwrap()
    }

    fn list(tar_bytes: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mode = e.header().mode().unwrap();
                let mtime = e.header().mtime().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                if let Some(pax) = e.pax_extensions().unwrap() {
                    for x in pax {
                        let x = x.unwrap();
                        if x.key().unwrap() == "SCHILY.xattr.security.capability" {
                            data.extend_from_slice(b"|cap");
                        }
                    }
                }
                (path, mode, mtime, data)
            })
            .collect()
    }

    #[test]
    fn rewrites_relative_with_metadata_xattrs_and_drootenv() {
        let out = list(&rewrite(Compression::None));
        let long = format!("{}/file", "d".repeat(150));
        assert_eq!(out[0], (long, 0o4755, 1234, b"hello|cap".to_vec()));
        assert_eq!(out[1].0, "bin/sh");
        assert_eq!(
            out[2],
            (".drootenv".into(), 0o644, 1234, b"A=b=c\n".to_vec())
        );
    }

    /// A tar with devices and FIFOs in and out of `dev/`, and hardlinks to them.
    fn with_devices() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |t: EntryType, path: &str, link: Option<&str>| {
            let mut h = Header::new_gnu();
            h.set_entry_type(t);
            h.set_mode(0o666);
            h.set_size(0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            match link {
                Some(target) => b.append_link(&mut h, path, target).unwrap(),
                None => b.append_data(&mut h, path, io::empty()).unwrap(),
            }
        };
        add(EntryType::Directory, "./dev/", None);
        add(EntryType::Char, "./dev/null", None);
        add(EntryType::Block, "./dev/sda", None);
        add(EntryType::Fifo, "./dev/initctl", None);
        add(EntryType::Link, "./dev/null2", Some("./dev/null"));
        add(EntryType::Link, "./lib/null", Some("./dev/null"));
        add(EntryType::Symlink, "./dev/fd", Some("/proc/self/fd"));
        add(EntryType::Char, "./srv/null", None);
        add(EntryType::Fifo, "./dev", None);
        add(EntryType::Char, "./devices/null", None);
        b.into_inner().unwrap()
    }

    #[test]
    fn devices_under_dev_are_left_out_and_counted() {
        let src = with_devices();
        let mut w = RootfsWriter::new(Vec::new(), Compression::None.into()).unwrap();
        let mut ar = crate::artifact::tar::Archive::new(src.as_slice());
        while let Some(e) = ar.next_entry().unwrap() {
            let p = crate::export::normalize_path(&e.path).unwrap();
            w.copy_entry(&e, ar.contents(&e), &p, None).unwrap();
        }
        assert_eq!(
            w.skipped_devices(),
            4,
            "null, sda, initctl and the link null2"
        );
        assert_eq!(w.entries(), 6);
        let out = w.finish().unwrap();
        let mut seen = Vec::new();
        for e in tar::Archive::new(out.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let t = h.entry_type();
            let dev = if t.is_character_special() || t.is_block_special() {
                (h.device_major().unwrap(), h.device_minor().unwrap())
            } else {
                (None, None)
            };
            let path = e.path().unwrap().to_string_lossy().into_owned();
            seen.push((path, t, dev));
        }
        let dev = (Some(1), Some(3));
        assert_eq!(
            seen,
            vec![
                ("dev".into(), EntryType::Directory, (None, None)),
                // A hardlink elsewhere to a node left out becomes the node itself.
                ("lib/null".into(), EntryType::Char, dev),
                ("dev/fd".into(), EntryType::Symlink, (None, None)),
                ("srv/null".into(), EntryType::Char, dev),
                // `dev` itself, and a name merely starting with "dev", are not under /dev/.
                ("dev".into(), EntryType::Fifo, (None, None)),
                ("devices/null".into(), EntryType::Char, dev),
            ]
        );
    }

    #[test]
    fn a_hardlink_to_a_replaced_node_links_to_the_replacement() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Char);
        h.set_size(0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        b.append_data(&mut h, "dev/null", io::empty()).unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_size(2);
        b.append_data(&mut h, "dev/null", &b"ok"[..]).unwrap();
        h.set_entry_type(EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "lib/null", "dev/null").unwrap();
        let src = b.into_inner().unwrap();
        let mut w = RootfsWriter::new(Vec::new(), Compression::None.into()).unwrap();
        let mut ar = crate::artifact::tar::Archive::new(src.as_slice());
        while let Some(e) = ar.next_entry().unwrap() {
            let p = crate::export::normalize_path(&e.path).unwrap();
            w.copy_entry(&e, ar.contents(&e), &p, None).unwrap();
        }
        assert_eq!((w.skipped_devices(), w.entries()), (1, 2));
        let out = w.finish().unwrap();
        let kinds: Vec<EntryType> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().entry_type())
            .collect();
        assert_eq!(kinds, [EntryType::Regular, EntryType::Link]);
    }

    /// A small layer declaring a 1 TiB sparse file is refused from its header: the output
    /// would hold it whole.
    #[test]
    fn a_huge_sparse_file_is_refused_before_any_of_it_is_written() {
        let mut pax = Vec::new();
        for (k, v) in [
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "0,4"),
            ("GNU.sparse.size", "1099511627776"),
            ("GNU.sparse.name", "huge"),
        ] {
            let rec = format!(" {k}={v}\n");
            let mut len = rec.len() + 1;
            while format!("{len}{rec}").len() != len {
                len += 1;
            }
            pax.extend(format!("{len}{rec}").into_bytes());
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(pax.len() as u64);
        b.append_data(&mut h, "PaxHeaders/huge", pax.as_slice())
            .unwrap();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(4);
        b.append_data(&mut h, "GNUSparseFile.0/huge", &b"data"[..])
            .unwrap();
        let src = b.into_inner().unwrap();
        let opts = OutputOptions {
            max_bytes: 1 << 30,
            ..OutputOptions::default()
        };
        let mut w = RootfsWriter::new(Vec::new(), opts).unwrap();
        let mut ar = crate::artifact::tar::Archive::new(src.as_slice());
        let e = ar.next_entry().unwrap().unwrap();
        assert_eq!(e.size, 1 << 40);
        let p = crate::export::normalize_path(&e.path).unwrap();
        match w.copy_entry(&e, ar.contents(&e), &p, None) {
            Err(CopyError::TooLarge { limit }) => assert_eq!(limit, 1 << 30),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn compressed_outputs_decompress_to_the_same_tar() {
        let raw = rewrite(Compression::None);
        let gz = rewrite(Compression::Gzip);
        assert!(crate::artifact::gzip_members::member_len(&gz).is_some());
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(gz.as_slice())
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, raw);
        let zs = rewrite(Compression::Zstd);
        assert!(crate::artifact::zstd_frames::is_marked(&zs));
        assert_eq!(zstd::decode_all(zs.as_slice()).unwrap(), raw);
    }
}
