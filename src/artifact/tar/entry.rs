//! What one archive member is: its [`Kind`] after GNU tar's rules, and its [`Entry`]
//! metadata, each header field overridden by the entry's PAX record when it has one.

use super::ext::{self, Pax, Records};
use super::header::{Format, Header};
use super::sparse::Segment;
use super::{TarError, shown};

/// What an entry is, after GNU tar's rules (a regular entry named `dir/` is a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
}

/// One archive member, with every extension header applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as bytes, as the archive spells it (not sanitised).
    pub path: Vec<u8>,
    /// Symlink or hardlink target; empty for other kinds.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission and set-id bits (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Modification time in whole seconds since the epoch.
    pub mtime: i64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Size of the file on disk (for a sparse file, its real size); 0 for non-files.
    pub size: u64,
    /// Bytes of data stored in the archive for this entry (after any sparse map).
    pub stored: u64,
    /// The checked data map of a sparse file.
    pub sparse: Option<Vec<Segment>>,
    /// Extended attributes carried in the entry's own PAX header (`SCHILY.xattr.*`,
    /// `LIBARCHIVE.xattr.*`): the full record key and the value.
    pub xattrs: Records,
    /// Extension data (PAX, long names, sparse maps) read for this entry.
    pub ext_bytes: u64,
    /// Offset of the stored data in the stream.
    pub data_offset: u64,
    pub format: Format,
}

impl Entry {
    /// The path for messages.
    pub fn shown(&self) -> String {
        shown(&self.path)
    }
}

/// The kind for a type flag; `None` when unsupported.
pub(super) fn kind_of(typeflag: u8, path: &[u8]) -> Option<Kind> {
    Some(match typeflag {
        // GNU tar (and BSD tar before it): a regular entry whose name ends in '/' is a
        // directory; v7 archives store directories that way.
        b'0' | 0 | b'7' if path.ends_with(b"/") => Kind::Dir,
        b'0' | 0 | b'7' | b'S' => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        // 'D' is a GNU incremental dump directory; outside incremental mode it is a directory.
        b'5' | b'D' => Kind::Dir,
        b'6' => Kind::Fifo,
        _ => return None,
    })
}

pub(super) fn unsupported_type(typeflag: u8) -> String {
    match typeflag {
        b'M' => "a GNU multi-volume continuation (entry type 'M')".into(),
        b'N' => "an old GNU long-name record (entry type 'N')".into(),
        t if t.is_ascii_graphic() => format!("the unknown entry type '{}'", t as char),
        t => format!("the unknown entry type 0x{t:02x}"),
    }
}

/// The extended-attribute records (`SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`).
pub(super) fn xattrs(pax: &Records) -> Records {
    pax.iter()
        .filter(|(k, _)| k.starts_with(b"SCHILY.xattr.") || k.starts_with(b"LIBARCHIVE.xattr."))
        .cloned()
        .collect()
}

/// The header's fields, each overridden by its PAX record; the path, the data's size and
/// the extension data are the caller's to fill in.
pub(super) fn metadata(
    h: &Header,
    pax: &Pax,
    entry: &str,
    kind: Kind,
    link: Vec<u8>,
) -> Result<Entry, TarError> {
    let mtime = match pax.get("mtime") {
        Some(v) => ext::seconds(v).ok_or_else(|| bad_record(entry, "mtime"))?,
        None => h.mtime,
    };
    let dev = |key, default: u32| -> Result<u32, TarError> {
        pax_number(pax, entry, key)?.map_or(Ok(default), |n| {
            u32::try_from(n).map_err(|_| bad_record(entry, key))
        })
    };
    Ok(Entry {
        link: if matches!(kind, Kind::Symlink | Kind::HardLink) {
            link
        } else {
            Vec::new()
        },
        kind,
        mode: h.mode,
        uid: pax_number(pax, entry, "uid")?.unwrap_or(h.uid),
        gid: pax_number(pax, entry, "gid")?.unwrap_or(h.gid),
        mtime,
        uname: pax
            .get("uname")
            .map_or_else(|| h.uname.clone(), <[u8]>::to_vec),
        gname: pax
            .get("gname")
            .map_or_else(|| h.gname.clone(), <[u8]>::to_vec),
        dev_major: dev("SCHILY.devmajor", h.dev_major)?,
        dev_minor: dev("SCHILY.devminor", h.dev_minor)?,
        size: 0,
        stored: 0,
        sparse: None,
        xattrs: Records::default(),
        ext_bytes: 0,
        data_offset: 0,
        format: h.format,
        path: Vec::new(),
    })
}

/// The decimal PAX record `key`, if present.
pub(super) fn pax_number(
    pax: &Pax,
    entry: &str,
    key: &'static str,
) -> Result<Option<u64>, TarError> {
    pax.get(key)
        .map(|v| ext::decimal(v).ok_or_else(|| bad_record(entry, key)))
        .transpose()
}

fn bad_record(entry: &str, key: &str) -> TarError {
    TarError::BadExtension {
        entry: entry.to_string(),
        what: "PAX header",
        problem: format!("the {key} record has a bad value"),
    }
}
