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
