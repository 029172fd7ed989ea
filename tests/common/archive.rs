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
        // Write the name field by hand: set_path refuses "..", and hostile archives don't.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
        h
    }
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, path, 0, 0o755);
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
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

/// Everything under `dir`, as sorted relative paths with a type marker.
pub fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(format!("{rel} ({} bytes)", m.len()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
