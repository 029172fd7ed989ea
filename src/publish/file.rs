//! A local file as the destination (`file://` for `publish`, `-o` for `export`): written
//! beside its final name under a temporary one, synced, then renamed into place, so the
//! name holds either the whole new artifact or what it held before.
//!
//! With a digest, the sidecar `NAME.sha256` is renamed into place after the artifact: a
//! reader between the two renames sees the new artifact with the old digest and refuses
//! it, never the other way round. The chunk index `NAME.chunks` goes in between; it names
//! the artifact it indexes, so a reader never takes one for another.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use super::{PublishError, Sink};
use crate::deploy::fetch::digest;
use crate::fanout::index::SUFFIX;

/// The output file being written.
pub struct FileSink {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    replace: bool,
    with_digest: bool,
    done: bool,
}

impl FileSink {
    /// Creates the temporary file beside `path`. Without `replace`, an existing `path` is
    /// refused now (and again, atomically, at the rename). `with_digest` writes the sidecar.
    pub fn open(
        path: &Path,
        replace: bool,
        with_digest: bool,
    ) -> Result<Box<dyn Sink>, PublishError> {
        Ok(Box::new(Self::create(path, replace, with_digest)?))
    }

    /// [`FileSink::open`], unboxed (for callers that need no digest).
    pub fn create(path: &Path, replace: bool, with_digest: bool) -> Result<Self, PublishError> {
        if !replace && path.symlink_metadata().is_ok() {
            return Err(exists(path));
        }
        let partial = partial_name(path, "");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&partial)
            .map_err(|source| {
                file_error(&partial, "creating (is the directory writable?)", source)
            })?;
        Ok(FileSink {
            path: path.to_path_buf(),
            partial,
            file,
            replace,
            with_digest,
            done: false,
        })
    }

    /// A buffered writer into the temporary file.
    pub fn file_writer(&self) -> Result<BufWriter<File>, PublishError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| file_error(&self.partial, "opening", source))?;
        Ok(BufWriter::with_capacity(256 << 10, file))
    }

    /// Syncs the file and renames it into place, then (for `sha256`) its chunk index, when
    /// given, and its digest sidecar.
    pub fn finish(
        mut self,
        sha256: Option<&[u8; 32]>,
        index: Option<&[u8]>,
    ) -> Result<(), PublishError> {
        self.file
            .sync_all()
            .map_err(|source| file_error(&self.partial, "syncing to disk", source))?;
        let mut beside = Vec::new();
        if let Some(sha) = sha256 {
            if let Some(index) = index {
                beside.push(self.write_beside(SUFFIX, index, "writing the chunk index")?);
            }
            let name = self.path.file_name().unwrap_or_default().to_string_lossy();
            let text = digest::sidecar_text(sha, &name);
            let sidecar = self.write_beside(
                digest::SIDECAR_SUFFIX,
                text.as_bytes(),
                "writing the digest",
            );
            beside.push(sidecar.inspect_err(|_| remove_all(&beside))?);
        }
        if let Err(e) = rename(&self.partial, &self.path, self.replace) {
            remove_all(&beside);
            return Err(if e == Errno::EEXIST {
                exists(&self.path)
            } else {
                file_error(&self.path, "renaming into place", e.into())
            });
        }
        self.done = true;
        if sha256.is_some() && index.is_none() {
            // An index left by an earlier artifact of this name names that artifact, so no
            // reader would take it; it goes all the same.
            let _ = std::fs::remove_file(digest::beside(&self.path, SUFFIX));
        }
        for (i, (partial, suffix)) in beside.iter().enumerate() {
            let final_name = digest::beside(&self.path, suffix);
            if let Err(source) = std::fs::rename(partial, &final_name) {
                remove_all(&beside[i..]);
                return Err(file_error(&final_name, "renaming into place", source));
            }
        }
        if let Some(dir) = self.path.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// `bytes` synced under a temporary name beside the artifact, for `NAME{suffix}`.
    fn write_beside(
        &self,
        suffix: &'static str,
        bytes: &[u8],
        action: &'static str,
    ) -> Result<(PathBuf, &'static str), PublishError> {
        let partial = partial_name(&self.path, suffix);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&partial)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            file_error(&partial, action, source)
        })?;
        Ok((partial, suffix))
    }
}

fn remove_all(partials: &[(PathBuf, &str)]) {
    for (p, _) in partials {
        let _ = std::fs::remove_file(p);
    }
}

impl Sink for FileSink {
    fn writer(&mut self) -> Box<dyn Write + Send> {
        match self.file_writer() {
            Ok(w) => Box::new(w),
            // A writer that fails at once: the export reports it, abort cleans up.
            Err(e) => Box::new(Failing(e.to_string())),
        }
    }

    /// With the digest comes the chunk index: a directory of artifacts served over
    /// `https://` lets the fleet take them from each other.
    fn commit(
        self: Box<Self>,
        sha256: &[u8; 32],
        _bytes: u64,
        index: Option<&[u8]>,
    ) -> Result<(), PublishError> {
        let with_digest = self.with_digest;
        self.finish(with_digest.then_some(sha256), index)
    }

    fn abort(self: Box<Self>) -> Option<PublishError> {
        None // dropping removes the temporary file
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A writer whose every write fails with one message.
struct Failing(String);

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(self.0.clone()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `.NAME{suffix}.partial-PID-N` beside `path`, unique within the process too.
fn partial_name(path: &Path, suffix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let pid = std::process::id();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{suffix}.partial-{pid}-{n}"))
}

/// Renames `from` to `to`; without `replace`, atomically refuses an existing `to` (`EEXIST`).
fn rename(from: &Path, to: &Path, replace: bool) -> Result<(), Errno> {
    if replace {
        return std::fs::rename(from, to)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    }
    let from = CString::new(from.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both are NUL-terminated paths we own; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    Errno::result(rc).map(drop)
}

fn exists(path: &Path) -> PublishError {
    PublishError::Exists {
        url: format!("file://{}", path.display()),
    }
}

fn file_error(path: &Path, action: &'static str, source: std::io::Error) -> PublishError {
    PublishError::File {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name appears only on finish, with its sidecar; an existing name is refused
    /// (before and at the rename) unless replacing; a dropped sink leaves nothing.
    #[test]
    fn a_file_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.tar");
        let sink = FileSink::create(&path, false, true).unwrap();
        sink.file_writer().unwrap().write_all(b"bytes").unwrap();
        assert!(!path.exists());
        let racer = FileSink::create(&path, false, true).unwrap();
        sink.finish(Some(&[1; 32]), None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        let side = std::fs::read_to_string(digest::sidecar_path(&path)).unwrap();
        assert_eq!(side, digest::sidecar_text(&[1; 32], "v1.tar"));
        assert!(matches!(
            racer.finish(Some(&[2; 32]), None),
            Err(PublishError::Exists { .. })
        ));
        assert!(matches!(
            FileSink::create(&path, false, true),
            Err(PublishError::Exists { .. })
        ));
        drop(FileSink::create(&path, true, true).unwrap());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "only the artifact and its sidecar remain");
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
    }

    /// A chunk index goes beside the artifact with its digest; a later artifact of the
    /// name without one takes the old index away.
    #[test]
    fn the_chunk_index_goes_beside_with_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.tar");
        let chunks = digest::beside(&path, SUFFIX);
        let sink = FileSink::create(&path, false, true).unwrap();
        sink.finish(Some(&[1; 32]), Some(b"index")).unwrap();
        assert_eq!(std::fs::read(&chunks).unwrap(), b"index");
        assert!(digest::sidecar_path(&path).exists());
        let sink = FileSink::create(&path, true, true).unwrap();
        sink.finish(Some(&[2; 32]), None).unwrap();
        assert!(!chunks.exists(), "the old index is gone");
        // Without a digest, nothing beside it.
        let bare = dir.path().join("v2.tar");
        FileSink::create(&bare, false, false)
            .unwrap()
            .finish(None, Some(b"index"))
            .unwrap();
        assert!(!digest::beside(&bare, SUFFIX).exists());
        let names = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 3, "v1.tar, its sidecar, v2.tar: no partial left");
    }
}
