//! `file://`: a local artifact, read as it is unpacked.
//!
//! For the agent a signed URL must not become a way to read host files (or to hang on
//! `/dev/zero`, a FIFO or `/proc`), so with [`FileRoots::Only`] the path must lie beneath one
//! of the configured directories and is opened from that directory's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`
//! ([`crate::beneath`]): no symlink, no `..` out, no mount point crossed on the way
//! (`/proc/self/fd/N` and `/dev` live on other mounts). The result must be a regular file.
//! The root itself is the operator's and is resolved as named.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

use super::{FetchError, FileRoots};
use crate::beneath::{self, Mounts};

pub fn open(url: &str, path: &Path, roots: &FileRoots) -> Result<Box<dyn Read + Send>, FetchError> {
    let file = match roots {
        FileRoots::Any => std::fs::File::open(path).map_err(|e| io_error(url, e)),
        FileRoots::Only(roots) => open_beneath(url, path, roots),
    }?;
    Ok(Box::new(file))
}

fn io_error(url: &str, e: std::io::Error) -> FetchError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FetchError::NoSuchFile {
            url: url.to_string(),
        }
    } else {
        FetchError::File {
            url: url.to_string(),
            source: e,
        }
    }
}

/// Opens `path` beneath the first of `roots` it lies under (compared by components).
fn open_beneath(
    url: &str,
    path: &Path,
    roots: &[std::path::PathBuf],
) -> Result<std::fs::File, FetchError> {
    let Some((root, rel)) = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok().map(|rel| (r, rel)))
    else {
        let listed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(FetchError::OutsideFileRoots {
            url: url.to_string(),
            roots: if listed.is_empty() {
                "none configured".into()
            } else {
                listed.join(", ")
            },
        });
    };
    let dir = beneath::open_named_dir(root).map_err(|e| io_error(url, e))?;
    // Non-blocking, so that opening a FIFO never waits for a writer.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = match beneath::open(dir.as_fd(), rel, flags, Mounts::Refuse) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::EXDEV) => {
            return Err(FetchError::EscapesFileRoot {
                url: url.to_string(),
            });
        }
        Err(e) => return Err(io_error(url, e.into())),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| io_error(url, e.into()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(FetchError::NotRegularFile {
            url: url.to_string(),
        });
    }
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(root: &Path) -> FileRoots {
        FileRoots::Only(vec![root.to_path_buf()])
    }

    fn refused(path: &Path, roots: &FileRoots) -> FetchError {
        open("file://x", path, roots).err().expect("refused")
    }

    #[test]
    fn only_regular_files_beneath_a_root_are_read() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let root = base.join("arts");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.tar"), b"tar").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        let mut s = String::new();
        open("file://x", &root.join("sub/a.tar"), &only(&root))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "tar");
        // Outside every root, or no root at all.
        for (path, roots) in [
            (base.join("secret"), only(&root)),
            (Path::new("/dev/zero").to_path_buf(), only(&root)),
            (root.join("sub/a.tar"), FileRoots::default()),
            // A sibling whose name starts like the root.
            (base.join("arts-evil/a.tar"), only(&root)),
        ] {
            assert!(
                matches!(refused(&path, &roots), FetchError::OutsideFileRoots { .. }),
                "{}",
                path.display()
            );
        }
        // `..`, and a symlink out (or even inside).
        std::os::unix::fs::symlink(base.join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/a.tar", root.join("inner")).unwrap();
        for rel in ["../secret", "sub/../../secret", "link", "inner"] {
            assert!(
                matches!(
                    refused(&root.join(rel), &only(&root)),
                    FetchError::EscapesFileRoot { .. }
                ),
                "{rel}"
            );
        }
        // Not a regular file: a directory, a FIFO (opened without blocking).
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        for rel in ["sub", "fifo"] {
            assert!(
                matches!(
                    refused(&root.join(rel), &only(&root)),
                    FetchError::NotRegularFile { .. }
                ),
                "{rel}"
            );
        }
        assert!(matches!(
            refused(&root.join("nope.tar"), &only(&root)),
            FetchError::NoSuchFile { .. }
        ));
    }

    #[test]
    fn a_root_of_slash_still_reaches_no_device_and_no_proc_file() {
        // /proc is a mount of its own (and /proc/self a symlink); /dev/zero is no regular
        // file, whether or not /dev is a mount here.
        for p in ["/dev/zero", "/proc/self/environ", "/proc/1/environ"] {
            assert!(
                matches!(
                    refused(Path::new(p), &only(Path::new("/"))),
                    FetchError::EscapesFileRoot { .. } | FetchError::NotRegularFile { .. }
                ),
                "{p}"
            );
        }
    }
}
