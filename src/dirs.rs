//! Directories the tool creates for itself, with an explicit mode whatever the umask.
//!
//! `create_dir_all` under `umask 000` makes every missing parent 0777. Here each directory
//! that is created gets exactly the mode asked for: `mkdir` with it (the umask can only narrow
//! it, so there is never a moment with a wider mode) and then `fchmod` through a descriptor
//! opened without following symlinks. Directories that already exist are left as they are.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `path` and its missing parents: the missing parents with `parent_mode`, `path`
/// itself with `mode`. Existing directories keep their mode.
pub fn create_dir_all_mode(path: &Path, parent_mode: u32, mode: u32) -> io::Result<()> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !exists(p))
            .collect();
        for dir in missing.into_iter().rev() {
            create_one(dir, parent_mode)?;
        }
    }
    if !exists(path) {
        create_one(path, mode)?;
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `mkdir` with `mode`, then the exact mode; a directory someone else made first is left alone.
fn create_one(dir: &Path, mode: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn modes_are_exact_and_existing_dirs_untouched() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let leaf = t.path().join("a/b/c");
        create_dir_all_mode(&leaf, 0o755, 0o700).unwrap();
        assert_eq!(mode(&t.path().join("a")), 0o755);
        assert_eq!(mode(&t.path().join("a/b")), 0o755);
        assert_eq!(mode(&leaf), 0o700);
        assert_eq!(mode(t.path()), 0o711, "existing parent untouched");
        std::fs::set_permissions(&leaf, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir_all_mode(&leaf, 0o755, 0o700).unwrap();
        assert_eq!(mode(&leaf), 0o750, "existing leaf untouched");
        let file = t.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(create_dir_all_mode(&file.join("x"), 0o755, 0o700).is_err());
    }
}
