//! Validation of archive entry paths and hardlink targets.
//!
//! An archive path is taken relative to the unpack root: a leading `/` and `.` components are
//! dropped (as GNU tar does), and any `..` component is an error rather than being skipped.
//! The result has only normal components, so joining it to the root can never climb out.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryPathError {
    #[error("path contains a '..' component")]
    ParentDir,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is empty")]
    Empty,
    #[error("path is {0} bytes long, over the {max}-byte limit", max = MAX_PATH)]
    TooLong(usize),
}

/// The longest entry path accepted (PATH_MAX less the terminating NUL).
pub const MAX_PATH: usize = 4095;

/// Normalises an archive path. Returns `Ok(None)` for the archive root itself (`./`, `/`).
pub fn sanitize(path: &Path) -> Result<Option<PathBuf>, EntryPathError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().is_empty() {
        return Err(EntryPathError::Empty);
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(EntryPathError::Nul);
    }
    if path.as_os_str().len() > MAX_PATH {
        return Err(EntryPathError::TooLong(path.as_os_str().len()));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(EntryPathError::ParentDir),
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// The proper ancestors of a sanitised relative path, shallowest first: `a/b/c` → `a`, `a/b`.
pub fn ancestors(rel: &Path) -> impl Iterator<Item = &Path> {
    let mut list: Vec<&Path> = rel
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    list.reverse();
    list.into_iter()
}

/// Whether a path's first component is `name` (used to keep tool-owned files out of archives).
pub fn first_component_is(rel: &Path, name: &OsStr) -> bool {
    rel.components().next() == Some(Component::Normal(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &str) -> Result<Option<PathBuf>, EntryPathError> {
        sanitize(Path::new(p))
    }

    #[test]
    fn strips_root_and_dots() {
        assert_eq!(s("./etc/passwd"), Ok(Some(PathBuf::from("etc/passwd"))));
        assert_eq!(s("/etc/./passwd"), Ok(Some(PathBuf::from("etc/passwd"))));
        assert_eq!(s("bin/"), Ok(Some(PathBuf::from("bin"))));
        assert_eq!(s("./"), Ok(None));
        assert_eq!(s("/"), Ok(None));
        assert_eq!(s(".drootenv"), Ok(Some(PathBuf::from(".drootenv"))));
    }

    #[test]
    fn refuses_parent_components_anywhere() {
        assert_eq!(s("../etc/passwd"), Err(EntryPathError::ParentDir));
        assert_eq!(s("a/../../b"), Err(EntryPathError::ParentDir));
        assert_eq!(s("a/b/.."), Err(EntryPathError::ParentDir));
        assert_eq!(s("/../x"), Err(EntryPathError::ParentDir));
        // A name merely containing dots is fine.
        assert_eq!(s("a/..b/c.."), Ok(Some(PathBuf::from("a/..b/c.."))));
        assert_eq!(s(""), Err(EntryPathError::Empty));
    }

    #[test]
    fn refuses_paths_over_path_max() {
        let deep = "a/".repeat(10_000);
        assert_eq!(s(&deep), Err(EntryPathError::TooLong(20_000)));
        assert!(s(&"a/".repeat(2000)).is_ok());
    }

    #[test]
    fn ancestors_shallowest_first() {
        let p = Path::new("a/b/c");
        let got: Vec<_> = ancestors(p).collect();
        assert_eq!(got, vec![Path::new("a"), Path::new("a/b")]);
        assert_eq!(ancestors(Path::new("top")).count(), 0);
    }
}
