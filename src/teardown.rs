//! TODO
use std::path::Path;
pub fn umount_all(_root: &Path) -> std::io::Result<usize> { todo!() }
pub fn remove_root(_root: &Path) -> std::io::Result<()> { todo!() }
