//! The entry iterator: headers, extension records applied, data handed out as a `Read`.
//!
//! [`Archive::next_entry`] returns an owned [`Entry`] (metadata only); the entry's data is
//! then read through [`Archive::data`] (the bytes as stored) or [`Archive::contents`] (the
//! file as it should be on disk: sparse holes filled with zeros). Whatever the caller leaves
//! unread is skipped on the next call, by seeking when the source can.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::entry::{kind_of, metadata, pax_number, unsupported_type, xattrs};
use super::ext::{self, Pax, Records};
use super::header::{self, BLOCK, BadField, Header};
use super::sparse::{self, Expand, LineMap, Segment};
use super::{Entry, Kind, Limits, TarError, shown};

/// A checked sparse map, the real size, and the real name when the archive gives one.
struct SparseInfo {
    map: Vec<Segment>,
    real: u64,
    name: Option<Vec<u8>>,
}

type Skipper<R> = fn(&mut R, u64) -> io::Result<()>;

/// A tar stream being read entry by entry.
pub struct Archive<R> {
    inner: R,
    limits: Limits,
    skipper: Option<Skipper<R>>,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Stored data of the current entry not yet read.
    data_left: u64,
    /// Bytes of the current entry's data area (data and padding) not yet consumed.
    area_left: u64,
    /// Records of `g` headers, in force until replaced (shared, not copied, per entry).
    globals: Arc<Records>,
    done: bool,
}

/// Extension data collected before an entry's own header.
#[derive(Default)]
struct Pending {
    pax: Records,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    bytes: u64,
    /// Whether any extension header was seen (an entry must follow).
    seen: bool,
}

impl<R: Read> Archive<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    pub fn with_limits(inner: R, limits: Limits) -> Self {
        Archive {
            inner,
            limits,
            skipper: None,
            pos: 0,
            data_left: 0,
            area_left: 0,
            globals: Arc::default(),
            done: false,
        }
    }

    /// A reader that skips unread data by seeking (for archives on disk).
    pub fn seekable(inner: R, limits: Limits) -> Self
    where
        R: Seek,
    {
        let mut a = Self::with_limits(inner, limits);
        a.skipper = Some(|r, n| {
            let n = i64::try_from(n).map_err(|_| io::Error::other("skip too large"))?;
            r.seek(SeekFrom::Current(n)).map(|_| ())
        });
        a
    }

    /// The stored data of the current entry.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { archive: self }
    }

    /// The current entry's file contents: for a sparse file, `entry.size` bytes with the
    /// holes as zeros.
    pub fn contents<'a>(&'a mut self, entry: &'a Entry) -> Contents<'a, R> {
        match &entry.sparse {
            Some(map) => Contents::Sparse(Expand::new(self.data(), map, entry.size)),
            None => Contents::Plain(self.data()),
        }
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK];
            if !self.read_block(
                &mut block,
                pending.seen,
                "the entry after an extension header",
            )? {
                self.done = true;
                return Ok(None);
            }
            if header::is_zero(&block) {
                self.done = true;
                return if pending.seen {
                    Err(TarError::Truncated(
                        "the entry after an extension header".into(),
                    ))
                } else {
                    Ok(None)
                };
            }
            if !header::checksum_ok(&block) {
                return Err(TarError::Checksum { at });
            }
            let raw_name = header::text(&block[..100]);
            let h = header::parse(&block).map_err(|BadField(field)| TarError::BadField {
                entry: shown(raw_name),
                field,
            })?;
            self.start_area(h.size, &h.name)?;
            match h.typeflag {
                b'x' | b'X' => {
                    let data = self.read_extension(&h, &mut pending, "a PAX header")?;
                    let recs = ext::parse_pax(&data).map_err(|problem| bad_pax(&h, problem))?;
                    pending.pax.extend(recs);
                }
                b'g' => {
                    // A global header needs no entry after it (GNU tar and bsdtar end
                    // archives with one).
                    let entry_due = pending.seen;
                    let data = self.read_extension(&h, &mut pending, "a global PAX header")?;
                    pending.seen = entry_due;
                    let recs = ext::parse_pax(&data).map_err(|problem| bad_pax(&h, problem))?;
                    ext::merge_globals(Arc::make_mut(&mut self.globals), recs);
                    let held = ext::size(&self.globals);
                    self.check_cap(held, &shown(&h.name), "global PAX headers adding up")?;
                }
                b'L' => {
                    let data = self.read_extension(&h, &mut pending, "a GNU long name")?;
                    pending.long_name = Some(ext::long_name(&data));
                }
                b'K' => {
                    let data = self.read_extension(&h, &mut pending, "a GNU long link name")?;
                    pending.long_link = Some(ext::long_name(&data));
                }
                // A volume label names the archive, not a file: GNU tar skips it too.
                b'V' => self.skip_rest()?,
                _ => return self.finish_entry(h, pending).map(Some),
            }
        }
    }

    /// The entry of header `h`, with the extension data before it applied.
    fn finish_entry(&mut self, h: Header, pending: Pending) -> Result<Entry, TarError> {
        let globals = Arc::clone(&self.globals);
        let pax = Pax {
            local: &pending.pax,
            global: &globals,
        };
        let path = pax
            .get("path")
            .map(<[u8]>::to_vec)
            .or(pending.long_name)
            .unwrap_or_else(|| h.name.clone());
        let entry = shown(&path);
        let link = pax
            .get("linkpath")
            .map(<[u8]>::to_vec)
            .or(pending.long_link)
            .unwrap_or_else(|| h.linkname.clone());
        let area = pax_number(&pax, &entry, "size")?.unwrap_or(h.size);
        if area != h.size {
            self.start_area(area, &path)?;
        }
        let kind = kind_of(h.typeflag, &path).ok_or_else(|| TarError::Unsupported {
            entry: entry.clone(),
            feature: unsupported_type(h.typeflag),
        })?;
        if pax.get("SCHILY.filetype") == Some(b"sparse") {
            return Err(TarError::Unsupported {
                entry,
                feature: "a star sparse file".into(),
            });
        }
        let mut e = Entry {
            path,
            stored: area,
            xattrs: xattrs(&pending.pax),
            ext_bytes: pending.bytes,
            ..metadata(&h, &pax, &entry, kind, link)?
        };
        if kind == Kind::File {
            match self.sparse_map(&h, &pending.pax, &entry, &mut e)? {
                Some(SparseInfo { map, real, name }) => {
                    e.size = real;
                    e.sparse = Some(map);
                    e.path = name.unwrap_or(e.path);
                }
                None => e.size = e.stored,
            }
        }
        self.data_left = e.stored;
        e.data_offset = self.pos;
        Ok(e)
    }

    /// The sparse map of a file entry, if its own PAX records or header make it sparse.
    /// Reads old GNU extension blocks and the PAX 1.0 map from the data area, counting them
    /// in `e.ext_bytes` and taking them off `e.stored`.
    fn sparse_map(
        &mut self,
        h: &Header,
        pax: &Records,
        entry: &str,
        e: &mut Entry,
    ) -> Result<Option<SparseInfo>, TarError> {
        let bad = |problem: String| TarError::BadSparse {
            entry: entry.to_string(),
            problem,
        };
        let (map, real, name) = if let Some(old) = &h.old_sparse {
            let mut map = old.segments.clone();
            let mut more = old.extended;
            while more {
                e.ext_bytes += BLOCK as u64;
                self.check_cap(e.ext_bytes, entry, "an old GNU sparse map")?;
                let mut block = [0u8; BLOCK];
                self.read_block(&mut block, true, "a sparse map")?;
                let slots = header::sparse_slots(&block[..504], 21)
                    .map_err(|BadField(f)| bad(format!("bad {f} in an extension block")))?;
                map.extend(slots);
                more = block[504] != 0;
            }
            (map, old.real_size, None)
        } else {
            let real = ext::last(pax, "GNU.sparse.realsize").or(ext::last(pax, "GNU.sparse.size"));
            let major = ext::last(pax, "GNU.sparse.major");
            let has_map = ext::last(pax, "GNU.sparse.map").is_some()
                || pax.iter().any(|(k, _)| k == b"GNU.sparse.offset");
            if real.is_none() && major.is_none() && !has_map {
                return Ok(None);
            }
            let real = real
                .and_then(ext::decimal)
                .ok_or_else(|| bad("no valid GNU.sparse.realsize or GNU.sparse.size".into()))?;
            let minor = ext::last(pax, "GNU.sparse.minor");
            let map = match (major, minor) {
                (Some(b"1"), Some(b"0")) => self.line_map(entry, e)?,
                (None | Some(b"0"), _) => sparse::pax_map(pax).map_err(bad)?,
                (major, minor) => {
                    return Err(TarError::Unsupported {
                        entry: entry.to_string(),
                        feature: format!(
                            "GNU sparse format {}.{}",
                            shown(major.unwrap_or(b"?")),
                            shown(minor.unwrap_or(b"?"))
                        ),
                    });
                }
            };
            let name = ext::last(pax, "GNU.sparse.name").map(<[u8]>::to_vec);
            (map, real, name)
        };
        sparse::check(&map, real, e.stored).map_err(bad)?;
        Ok(Some(SparseInfo { map, real, name }))
    }

    /// Reads a PAX 1.0 map from the start of the data area.
    fn line_map(&mut self, entry: &str, e: &mut Entry) -> Result<Vec<Segment>, TarError> {
        let mut map = LineMap::default();
        loop {
            if e.stored < BLOCK as u64 {
                return Err(TarError::BadSparse {
                    entry: entry.to_string(),
                    problem: "the sparse map runs past the entry's data".into(),
                });
            }
            e.ext_bytes += BLOCK as u64;
            self.check_cap(e.ext_bytes, entry, "a sparse map")?;
            let mut block = [0u8; BLOCK];
            self.read_block(&mut block, true, "a sparse map")?;
            e.stored -= BLOCK as u64;
            self.area_left -= BLOCK as u64;
            let done = map.feed(&block).map_err(|problem| TarError::BadSparse {
                entry: entry.to_string(),
                problem,
            })?;
            if done {
                return Ok(map.segments());
            }
        }
    }

    fn check_cap(&self, total: u64, entry: &str, what: &'static str) -> Result<(), TarError> {
        if total > self.limits.max_extension {
            return Err(TarError::ExtensionTooLarge {
                entry: entry.to_string(),
                what,
                size: total,
                limit: self.limits.max_extension,
            });
        }
        Ok(())
    }

    /// Reads an extension header's data, after checking it against the cap.
    fn read_extension(
        &mut self,
        h: &Header,
        pending: &mut Pending,
        what: &'static str,
    ) -> Result<Vec<u8>, TarError> {
        pending.seen = true;
        pending.bytes = pending.bytes.saturating_add(h.size);
        self.check_cap(pending.bytes, &shown(&h.name), what)?;
        let mut data = vec![0u8; h.size as usize];
        self.data_left = h.size;
        let mut filled = 0;
        while filled < data.len() {
            match self.data().read(&mut data[filled..]) {
                Ok(n) if n > 0 => filled += n,
                Ok(_) => return Err(TarError::Truncated(what.into())),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(TarError::Truncated(what.into()));
                }
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.skip_rest()?;
        Ok(data)
    }

    /// Sets up the data area of a header whose data is `size` bytes.
    fn start_area(&mut self, size: u64, name: &[u8]) -> Result<(), TarError> {
        self.area_left =
            size.checked_next_multiple_of(BLOCK as u64)
                .ok_or_else(|| TarError::BadField {
                    entry: shown(name),
                    field: "size",
                })?;
        self.data_left = 0;
        Ok(())
    }

    /// Reads one block; `false` at a clean end of input (only allowed when `!required`).
    fn read_block(
        &mut self,
        block: &mut [u8; BLOCK],
        required: bool,
        what: &str,
    ) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.pos += filled as u64;
        match filled {
            BLOCK => Ok(true),
            0 if !required => Ok(false),
            _ => Err(TarError::Truncated(what.to_string())),
        }
    }

    /// Skips what is left of the current data area.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.area_left;
        if n == 0 {
            return Ok(());
        }
        if let Some(skip) = self.skipper {
            skip(&mut self.inner, n).map_err(TarError::Io)?;
        } else {
            let copied =
                io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(TarError::Io)?;
            if copied < n {
                return Err(TarError::Truncated("an entry's data".into()));
            }
        }
        self.pos += n;
        self.area_left = 0;
        self.data_left = 0;
        Ok(())
    }
}

/// The stored data of the current entry, as a `Read`; a short archive is an
/// `UnexpectedEof` error.
pub struct Data<'a, R> {
    archive: &'a mut Archive<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let a = &mut *self.archive;
        let want = buf
            .len()
            .min(usize::try_from(a.data_left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = a.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated or corrupt: it ends inside an entry's data",
            ));
        }
        a.data_left -= n as u64;
        a.area_left -= n as u64;
        a.pos += n as u64;
        Ok(n)
    }
}

/// An entry's file contents: stored data, or sparse data with holes filled.
pub enum Contents<'a, R> {
    Plain(Data<'a, R>),
    Sparse(Expand<'a, Data<'a, R>>),
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Contents::Plain(d) => d.read(buf),
            Contents::Sparse(s) => s.read(buf),
        }
    }
}

fn bad_pax(h: &Header, problem: String) -> TarError {
    TarError::BadExtension {
        entry: shown(&h.name),
        what: "PAX header",
        problem,
    }
}
