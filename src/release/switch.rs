//! The `current` symlink: read it, and replace it atomically.
//!
//! `current` always resolves: a new link is made under a temporary name and rename(2)d over
//! the old one, which the kernel performs atomically, then the directory is fsynced so the
//! switch survives a crash. There is never a moment with no `current`, with one deliberate
//! exception: the deploy pipeline removes it when the only release never passed its health
//! check ([`super::clear_current`]), so that nothing unverified is started.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::layout::{Layout, fsync_dir};

/// The release `current` points to, or `None` when there is no `current` yet.
pub fn current_version(layout: &Layout) -> io::Result<Option<String>> {
    let target = match std::fs::read_link(layout.current()) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a symlink (was this root deployed with --mode rsync?)",
                    layout.current().display()
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    version_of_target(&target).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} points to {}, not to releases/<version>",
                layout.current().display(),
                target.display()
            ),
        )
    })
}

/// `releases/<v>` (relative, as written by us) or `<root>/releases/<v>` → `v`.
fn version_of_target(target: &Path) -> Option<String> {
    let comps: Vec<Component> = target.components().collect();
    match comps.as_slice() {
        [.., Component::Normal(dir), Component::Normal(v)] if *dir == "releases" => {
            Some(v.to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// Points `current` at `releases/<version>` with one rename(2).
pub fn switch_current(layout: &Layout, version: &str) -> io::Result<()> {
    let tmp: PathBuf = layout
        .tool_dir()
        .join(format!("current.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, layout.current()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(&layout.root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing() {
        assert_eq!(
            version_of_target(Path::new("releases/v1")),
            Some("v1".into())
        );
        assert_eq!(
            version_of_target(Path::new("/srv/app/releases/20261129081500")),
            Some("20261129081500".into())
        );
        assert_eq!(version_of_target(Path::new("elsewhere/v1")), None);
        assert_eq!(version_of_target(Path::new("v1")), None);
    }

    #[test]
    fn switch_replaces_link_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.ensure(true).unwrap();
        assert_eq!(current_version(&layout).unwrap(), None);
        std::fs::create_dir(layout.release("a")).unwrap();
        std::fs::create_dir(layout.release("b")).unwrap();
        switch_current(&layout, "a").unwrap();
        assert_eq!(current_version(&layout).unwrap().as_deref(), Some("a"));
        switch_current(&layout, "b").unwrap();
        assert_eq!(current_version(&layout).unwrap().as_deref(), Some("b"));
        assert!(layout.current().join(".").is_dir());
    }
}
