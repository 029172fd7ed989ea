//! Builders and checks shared by the deploy tests: archives with raw-header escapes for
//! hostile entries, the `deploy` command, and tree snapshots.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::{cmd, output};

/// An archive under construction, with raw-header escapes for hostile entries.
pub struct Archive(pub tar::Builder<Vec<u8>>);

impl Archive {
    pub fn new() -> Self {
        Archive(tar::Builder::new(Vec::new()))
    }
    pub fn header(kind: tar::EntryType, raw_path: &str, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        // Write the name field by hand: set_path refuses "..", and hostile archives don't.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
        h
    }
    pub fn dir(self, path: &str) -> Self {
        self.dir_owned(path, 0o755, 0, 0)
    }
    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, path, 0, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    /// A GNU long-name entry (the name does not fit the 100-byte header field).
    pub fn long_file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_mode(path, data, 0o644)
    }
    pub fn file_mode(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, data.len() as u64, mode);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, path, 0, 0o777);
        let ln = &mut h.as_old_mut().linkname;
        ln.fill(0);
        ln[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    pub fn special(mut self, kind: tar::EntryType, path: &str) -> Self {
        let mut h = Self::header(kind, path, 0, 0o644);
        h.set_device_major(1).ok();
        h.set_device_minor(3).ok();
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    pub fn owned(mut self, path: &str, uid: u64, gid: u64, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, 2, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.0.append(&h, &b"ok"[..]).unwrap();
        self
    }
    /// Appends a raw header block and its data, padded to whole blocks.
    pub fn raw(mut self, header: [u8; 512], data: &[u8]) -> Self {
        let out = self.0.get_mut();
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
        self
    }
    /// An extension header (`typeflag`) carrying `data`.
    pub fn ext(self, name: &[u8], typeflag: u8, data: &[u8]) -> Self {
        self.raw(raw_header(name, typeflag, data.len() as u64), data)
    }
    /// A PAX `x` header carrying `records`, for the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.raw(raw_header(b"PaxHeaders/x", b'x', data.len() as u64), &data)
    }
    /// A PAX 0.1 sparse file: `data` holds the segments of `map` ("off,len,...") back to
    /// back; the file is `real_size` bytes.
    pub fn pax_sparse(self, path: &str, map: &str, real_size: u64, data: &[u8]) -> Self {
        let real = real_size.to_string();
        let count = (map.split(',').count() / 2).to_string();
        self.pax(&[
            ("GNU.sparse.numblocks", count.as_bytes()),
            ("GNU.sparse.map", map.as_bytes()),
            ("GNU.sparse.size", real.as_bytes()),
            ("GNU.sparse.name", path.as_bytes()),
        ])
        .raw(
            raw_header(b"GNUSparseFile.0/x", b'0', data.len() as u64),
            data,
        )
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
    pub fn write(self, path: &Path) -> PathBuf {
        std::fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
}

pub fn simple(version_marker: &str) -> Archive {
    Archive::new()
        .dir("./")
        .dir("./bin")
        .file("./bin/app", version_marker.as_bytes())
        .file("./.drootenv", b"PATH=/bin\nOPTS=a=b\n")
        .link(tar::EntryType::Symlink, "./etc-link", "/etc")
}

pub fn deploy(root: &Path, archive: &Path, extra: &[&str]) -> std::process::Output {
    output(
        cmd()
            .arg("deploy")
            .arg("--root")
            .arg(root)
            .args(extra)
            .arg(archive),
    )
}

pub fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn current_target(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Everything under `dir`, as sorted relative paths with a type marker, and each entry's
/// mode, owner and mtime: a chmod, chown or retime outside a root is damage too.
pub fn snapshot(dir: &Path) -> Vec<String> {
    snapshot_without(dir, &[])
}

/// [`snapshot`], leaving out the top-level names in `skip` (the tool's own state).
pub fn snapshot_without(dir: &Path, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, skip: &[&str], out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if dir == base && skip.iter().any(|s| e.file_name() == **s) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let attrs = attrs(&m);
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {} [{attrs}]",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/ [{attrs}]"));
                walk(base, &p, skip, out);
            } else {
                out.push(format!("{rel} ({} bytes) [{attrs}]", m.len()));
            }
        }
    }
    walk(dir, dir, skip, &mut out);
    out.sort();
    out
}

/// Mode, owner and mtime of one entry, for snapshots.
pub fn attrs(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:o} {}:{} {}.{:09}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec()
    )
}

/// A directory's own attributes and contents (recursively), for "nothing changed" checks.
pub fn snapshot_dir(dir: &Path) -> (String, Vec<String>) {
    let m = std::fs::symlink_metadata(dir).unwrap();
    (attrs(&m), snapshot(dir))
}

/// A ustar header block with a valid checksum, built byte by byte (hostile values welcome).
pub fn raw_header(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    fix_checksum(&mut h);
    h
}

/// Recomputes a header block's checksum after editing it.
pub fn fix_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An old GNU sparse (`S`) header for `name`: `slots` (offset, len) in the header, the
/// real size, and whether extension blocks follow.
pub fn gnu_sparse_header(
    name: &[u8],
    slots: &[(u64, u64)],
    real_size: u64,
    extended: bool,
) -> [u8; 512] {
    let stored: u64 = slots.iter().map(|s| s.1).sum();
    let mut h = raw_header(name, b'S', stored);
    h[257..265].copy_from_slice(b"ustar  \0");
    for (i, (offset, len)) in slots.iter().enumerate() {
        let at = 386 + i * 24;
        h[at..at + 12].copy_from_slice(format!("{offset:011o}\0").as_bytes());
        h[at + 12..at + 24].copy_from_slice(format!("{len:011o}\0").as_bytes());
    }
    h[482] = u8::from(extended);
    h[483..495].copy_from_slice(format!("{real_size:011o}\0").as_bytes());
    fix_checksum(&mut h);
    h
}

/// An archive using every extension the reader knows: PAX path/linkpath/uid/mtime, a global
/// header, a Solaris `X` header, GNU long names, a v7-style directory, and sparse files in
/// old GNU and PAX 0.0, 0.1 and 1.0 form (each "head" in a first block, a hole, "tail" at
/// the end of 64 KiB).
pub fn every_extension() -> Vec<u8> {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(60));
    let sparse_map = "0,512,65532,4";
    let data = [b"head".as_slice(), &[0; 508], b"tail"].concat();
    let mut v1_data = b"2\n0\n512\n65532\n4\n".to_vec();
    v1_data.resize(512, 0);
    v1_data.extend_from_slice(&data);
    let mut dir = raw_header(b"v7dir/", b'0', 0);
    dir[257..265].fill(0);
    fix_checksum(&mut dir);
    Archive::new()
        .ext(b"pax_global_header", b'g', &pax_record("gname", b"grp"))
        .pax(&[
            ("path", long.as_bytes()),
            ("uid", b"3000000000"),
            ("mtime", b"1.5"),
        ])
        .file("short-name", b"pax data")
        .ext(b"././@LongLink", b'L', format!("{long}2\0").as_bytes())
        .file("other", b"long name data")
        .ext(b"././@LongLink", b'K', format!("{long}\0").as_bytes())
        .link(tar::EntryType::Symlink, "to-long", "short")
        .ext(b"PaxHeaders/X", b'X', &pax_record("path", b"solaris-x"))
        .file("x-named", b"x")
        .raw(dir, b"")
        .raw(
            gnu_sparse_header(b"old-gnu", &[(0, 512), (65532, 4)], 65536, false),
            &data,
        )
        .pax(&[
            ("GNU.sparse.size", b"65536"),
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.offset", b"0"),
            ("GNU.sparse.numbytes", b"512"),
            ("GNU.sparse.offset", b"65532"),
            ("GNU.sparse.numbytes", b"4"),
        ])
        .raw(raw_header(b"pax-0.0", b'0', 516), &data)
        .pax_sparse("pax-0.1", sparse_map, 65536, &data)
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"pax-1.0"),
            ("GNU.sparse.realsize", b"65536"),
        ])
        .raw(
            raw_header(b"GNUSparseFile.0/pax-1.0", b'0', v1_data.len() as u64),
            &v1_data,
        )
        .bytes()
}

/// One PAX record: `LEN KEY=VALUE\n`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 2;
    while len != len.to_string().len() + 1 + body.len() {
        len = len.to_string().len() + 1 + body.len();
    }
    [len.to_string().as_bytes(), b" ", &body].concat()
}

/// Compresses with zstd.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}
