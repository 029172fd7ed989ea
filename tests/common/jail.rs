//! Helpers for the jail tests: a busybox rootfs in a tempdir, and running the real binary
//! with a check that no mount is left below the root afterwards.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tempdir holding a busybox rootfs at `<tmp>/root`.
pub struct Jail {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

pub fn jail(what: &str) -> Jail {
    super::require_root(what);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    super::busybox_rootfs(&root);
    let root = root.canonicalize().unwrap();
    Jail { _tmp: tmp, root }
}

pub fn run_cmd(root: &Path, flags: &[&str], cmd: &[&str]) -> Command {
    let mut c = super::cmd();
    c.arg("run")
        .arg("--root")
        .arg(root)
        .args(flags)
        .arg("--")
        .args(cmd);
    c
}

/// Runs the jail to completion and checks that no mount is left behind.
pub fn run(root: &Path, flags: &[&str], cmd: &[&str]) -> Output {
    let out = super::output(&mut run_cmd(root, flags, cmd));
    assert_no_mounts(root);
    out
}

/// Checks that no jail left a mount at or below `root` (a release store's own
/// `nosuid,nodev` mount at `root` itself is not a jail's).
pub fn assert_no_mounts(root: &Path) {
    let left = super::mounts_below_but_store(root);
    assert!(
        left.is_empty(),
        "mounts left below {}: {left:#?}",
        root.display()
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success, returning stdout.
pub fn ok(root: &Path, flags: &[&str], cmd: &[&str]) -> String {
    let o = run(root, flags, cmd);
    assert!(
        o.status.success(),
        "{flags:?} {cmd:?} failed: {:?}\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// Builds a static C program from `src` in `dir` with `gcc -static`, or fails naming the
/// packages to install.
pub fn build_static_c(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).unwrap();
    let out = std::process::Command::new("gcc")
        .arg("-static")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| panic!("gcc not runnable ({e}): apt-get install gcc libc6-dev"));
    assert!(
        out.status.success(),
        "gcc -static failed (apt-get install gcc libc6-dev): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}
