//! A rootfs directory as an export source: the tree as it is on disk, written with the same
//! [`RootfsWriter`] as the other sources, so the output is the same kind of flat rootfs tar.
//!
//! The directory may be live (a build tree another process still writes, a release a jail
//! runs from), so nothing in it is resolved by name from `/`: every directory and file is
//! opened beneath the root with `openat2` refusing symlinks and mount crossings
//! ([`crate::beneath`]). A symlink is written as a symlink, never followed; a mountpoint inside
//! the tree (a jail's `/proc`) becomes an empty directory, like `tar --one-file-system`; a
//! socket is left out. Files with several names become one file and hardlinks. A file that
//! changes size while it is read fails the export instead of writing a corrupt tar.
//!
//! Names are written in sorted order (a directory's names, then each subdirectory's), so
//! the same tree gives the same bytes. The tree's own
//! `/.drootenv` is kept; a tree without one gets an empty one, as an image without `Env` does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, readlinkat};
use nix::sys::stat::{FileStat, SFlag};

use super::rootfs_tar::{CopyError, OutputOptions, RootfsWriter};
use super::{ExportError, ExportSummary};
use crate::artifact::tar::header::Format;
use crate::artifact::tar::{Entry, Kind};
use crate::beneath::{self, Mounts};

/// The one extended attribute carried over: file capabilities (`ping`), what images carry.
const CAPABILITY_XATTR: &str = "security.capability";

/// Writes the tree at `root` as a rootfs tar to `out`.
pub fn flatten_dir<W: Write>(
    root: &Path,
    out: W,
    output: OutputOptions,
) -> Result<(ExportSummary, W), ExportError> {
    let top = beneath::open_named_dir(root).map_err(|source| ExportError::ReadDir {
        path: root.to_path_buf(),
        source,
    })?;
    let mut writer = RootfsWriter::new(out, output).map_err(ExportError::Output)?;
    let mut walk = Walk {
        root,
        top: top.as_fd(),
        first_names: HashMap::new(),
        has_drootenv: false,
        skipped: 0,
    };
    // Directories still to list, by path relative to the root ("" is the root itself).
    let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(dir) = pending.pop() {
        let Some((fd, names)) = walk.list(&dir)? else {
            continue; // a mountpoint: written as an empty directory
        };
        let mut subdirs = Vec::new();
        for name in names {
            let rel = join(&dir, name.as_bytes());
            let stat = beneath::lstat_at(fd.as_fd(), Path::new(&name))
                .map_err(|e| walk.changed(&rel, e))?;
            if walk.write(&mut writer, (fd.as_fd(), &name), &rel, &stat)? {
                subdirs.push(rel);
            }
        }
        // Reversed onto the stack, so directories come out in sorted order.
        pending.extend(subdirs.into_iter().rev());
    }
    if !walk.has_drootenv {
        let text = super::drootenv_text(&root.display().to_string(), None)?;
        writer.append_drootenv(&text).map_err(ExportError::Output)?;
    }
    if walk.skipped > 0 {
        tracing::info!(sockets = walk.skipped, "sockets left out of the export");
    }
    let summary = ExportSummary {
        image: root.display().to_string(),
        entries: writer.entries(),
        skipped_devices: writer.skipped_devices(),
    };
    let out = writer.finish().map_err(ExportError::Output)?;
    Ok((summary, out))
}

/// The walk's state: the root, and the first name seen of each multiply-linked file.
struct Walk<'a> {
    root: &'a Path,
    top: BorrowedFd<'a>,
    first_names: HashMap<(u64, u64), Vec<u8>>,
    has_drootenv: bool,
    skipped: u64,
}

impl Walk<'_> {
    /// The directory `rel` beneath the root and its sorted names; `None` for a mountpoint.
    fn list(&self, rel: &[u8]) -> Result<Option<(OwnedFd, Vec<OsString>)>, ExportError> {
        let path = Path::new(std::ffi::OsStr::from_bytes(rel));
        let dir = match beneath::open_dir(self.top, path, Mounts::Refuse) {
            Err(Errno::EXDEV) => return Ok(None),
            other => other.map_err(|e| self.changed(rel, e))?,
        };
        let mut names = beneath::list(dir.as_fd()).map_err(|e| self.changed(rel, e))?;
        names.sort();
        Ok(Some((dir, names)))
    }

    /// The error for `rel`: its path under the root, and a hint when the tree changed.
    fn changed(&self, rel: &[u8], e: Errno) -> ExportError {
        let hint = match e {
            Errno::ELOOP | Errno::EXDEV => {
                ": it changed while it was read (a symlink or mount appeared)"
            }
            _ => "",
        };
        self.unreadable(rel, io::Error::other(format!("{e}{hint}")))
    }

    fn unreadable(&self, rel: &[u8], source: io::Error) -> ExportError {
        ExportError::ReadDir {
            path: self.root.join(std::ffi::OsStr::from_bytes(rel)),
            source,
        }
    }

    /// Writes one entry; true when it is a directory whose names come next.
    fn write<W: Write>(
        &mut self,
        writer: &mut RootfsWriter<W>,
        (dir, name): (BorrowedFd<'_>, &OsString),
        rel: &[u8],
        stat: &FileStat,
    ) -> Result<bool, ExportError> {
        let kind = match beneath::kind(stat) {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFCHR => Kind::Char,
            SFlag::S_IFBLK => Kind::Block,
            SFlag::S_IFIFO => Kind::Fifo,
            _ => {
                self.skipped += 1;
                return Ok(false);
            }
        };
        let mut entry = entry_of(rel, kind, stat);
        let mut data: Box<dyn Read> = Box::new(io::empty());
        match kind {
            Kind::Symlink => {
                entry.link = readlinkat(dir, name.as_os_str())
                    .map(OsStringExt::into_vec)
                    .map_err(|e| self.changed(rel, e))?;
            }
            Kind::File if stat.st_nlink > 1 => {
                let id = (stat.st_dev, stat.st_ino);
                if let Some(first) = self.first_names.get(&id) {
                    entry.kind = Kind::HardLink;
                    entry.link = first.clone();
                    entry.size = 0;
                } else {
                    self.first_names.insert(id, rel.to_vec());
                }
            }
            _ => {}
        }
        if entry.kind == Kind::File {
            let file = self.open_file(rel)?;
            entry.xattrs = capability(&file);
            data = Box::new(Exact::new(file, entry.size));
            self.has_drootenv |= rel == crate::drootenv::FILE_NAME.as_bytes();
        }
        writer
            .copy_entry(&entry, data, rel, None)
            .map_err(|e| match e {
                CopyError::Read(source) => self.unreadable(rel, source),
                CopyError::Write(e) => ExportError::Output(e),
                CopyError::TooLarge { limit } => ExportError::TooLarge { limit },
            })?;
        Ok(kind == Kind::Dir)
    }

    fn open_file(&self, rel: &[u8]) -> Result<File, ExportError> {
        let path = Path::new(std::ffi::OsStr::from_bytes(rel));
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
        beneath::open(self.top, path, flags, Mounts::Refuse)
            .map(File::from)
            .map_err(|e| self.changed(rel, e))
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

/// The tar entry for what `stat` says, without data or link target.
fn entry_of(rel: &[u8], kind: Kind, stat: &FileStat) -> Entry {
    let dev = stat.st_rdev;
    Entry {
        path: rel.to_vec(),
        link: Vec::new(),
        kind,
        mode: stat.st_mode & 0o7777,
        uid: u64::from(stat.st_uid),
        gid: u64::from(stat.st_gid),
        mtime: stat.st_mtime,
        uname: Vec::new(),
        gname: Vec::new(),
        dev_major: nix::sys::stat::major(dev) as u32,
        dev_minor: nix::sys::stat::minor(dev) as u32,
        size: if kind == Kind::File {
            stat.st_size as u64
        } else {
            0
        },
        stored: 0,
        sparse: None,
        xattrs: Vec::new(),
        ext_bytes: 0,
        data_offset: 0,
        format: Format::Gnu,
    }
}

/// The file's capability attribute as a PAX record, if it has one.
fn capability(file: &File) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut value = [0u8; 64];
    let name = std::ffi::CString::new(CAPABILITY_XATTR).expect("no NUL");
    // SAFETY: the buffer is ours and its length is passed; the fd is open.
    let n = unsafe {
        libc::fgetxattr(
            std::os::fd::AsRawFd::as_raw_fd(file),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    match usize::try_from(n) {
        Ok(n) if n > 0 => vec![(
            format!("SCHILY.xattr.{CAPABILITY_XATTR}").into_bytes(),
            value[..n].to_vec(),
        )],
        _ => Vec::new(),
    }
}

/// Exactly `size` bytes of a file: one that grew or shrank while it was read is an error,
/// since the tar header already promised `size`.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64) -> Self {
        Exact { inner, left: size }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other("the file grew while it was read")),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..want])? {
            0 => Err(io::Error::other("the file shrank while it was read")),
            n => {
                self.left -= n as u64;
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reads_refuse_a_file_that_changed_size() {
        let mut out = Vec::new();
        assert!(Exact::new(&b"abc"[..], 3).read_to_end(&mut out).is_ok());
        assert_eq!(out, b"abc");
        let grew = Exact::new(&b"abcd"[..], 3).read_to_end(&mut Vec::new());
        assert!(grew.unwrap_err().to_string().contains("grew"));
        let shrank = Exact::new(&b"ab"[..], 3).read_to_end(&mut Vec::new());
        assert!(shrank.unwrap_err().to_string().contains("shrank"));
    }

    /// A tree with a symlink pointing out, a hardlink pair, a socket and no `.drootenv`
    /// becomes entries in sorted order, the symlink kept as a link, the second name a
    /// hardlink, the socket left out, and an empty `.drootenv` added.
    #[test]
    fn a_tree_becomes_a_sorted_rootfs_tar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/app"), b"#!/bin/sh\n").unwrap();
        std::fs::hard_link(root.join("bin/app"), root.join("bin/same")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("escape")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        let (summary, tar) = flatten_dir(root, Vec::new(), OutputOptions::default()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let listed: Vec<(String, tar::EntryType, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect();
        let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
        // A directory's names, sorted, then each subdirectory's in turn.
        assert_eq!(names, ["bin", "escape", "bin/app", "bin/same", ".drootenv"]);
        assert_eq!(listed[1].1, tar::EntryType::Symlink);
        assert_eq!(listed[1].2.as_deref(), Some("/etc/shadow"));
        assert_eq!(listed[3].1, tar::EntryType::Link);
        assert_eq!(listed[3].2.as_deref(), Some("bin/app"));
        assert_eq!(summary.entries, 5);
    }
}
