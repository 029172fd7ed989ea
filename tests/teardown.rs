//! `droot-fleet umount` and `droot-fleet rm` against real mounts.

mod common;

use std::path::Path;
use std::process::Command;

use common::archive::{attrs, snapshot_dir};
use common::{cmd, mount_tmpfs, mounts_below, output};

fn bind(src: &Path, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .arg("--bind")
        .arg(src)
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "bind {} at {}", src.display(), at.display());
}

/// Unmounts whatever a failed test left, so one failure does not leak mounts.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for _ in 0..8 {
            let left = mounts_below(self.0);
            if left.is_empty() {
                break;
            }
            for line in left.iter().rev() {
                let mp = line.split(' ').nth(4).unwrap().to_string();
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
    }
}

#[test]
fn umount_removes_deepest_first_and_respects_path_boundaries() {
    common::require_root("mounting tmpfs");
    let t = tempfile::tempdir().unwrap();
    let _guard = Cleanup(t.path());
    let app = t.path().join("app");
    let app2 = t.path().join("app2");
    mount_tmpfs(&app.join("proc"));
    mount_tmpfs(&app.join("dev"));
    mount_tmpfs(&app.join("dev/pts"));
    mount_tmpfs(&app.join("dev/pts")); // stacked on the same point
    mount_tmpfs(&app2.join("proc"));
    assert_eq!(mounts_below(&app).len(), 4);

    let out = output(cmd().args(["umount", "--root"]).arg(&app));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounts_below(&app).is_empty(), "{:?}", mounts_below(&app));
    assert_eq!(mounts_below(&app2).len(), 1, "app2 is not below app");
    // Idempotent: nothing left to unmount is not an error.
    assert!(
        output(cmd().args(["umount", "--root"]).arg(&app))
            .status
            .success()
    );
    // Through `current`-style symlinks too.
    std::os::unix::fs::symlink(&app2, t.path().join("link")).unwrap();
    let out = output(cmd().args(["umount", "--root"]).arg(t.path().join("link")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounts_below(&app2).is_empty());
}

#[test]
fn rm_unmounts_then_removes_without_touching_bound_host_data() {
    common::require_root("bind mounts");
    let t = tempfile::tempdir().unwrap();
    let _guard = Cleanup(t.path());
    let host = t.path().join("host-data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("precious"), b"keep").unwrap();
    let outside = t.path().join("outside.txt");
    std::fs::write(&outside, b"keep too").unwrap();

    let root = t.path().join("app");
    mount_tmpfs(&root.join("proc"));
    bind(&host, &root.join("srv/data"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/conf"), b"x").unwrap();
    // Symlinks out of the tree must be removed as links, not followed.
    std::os::unix::fs::symlink(&host, root.join("escape-dir")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape-file")).unwrap();

    let host_before = snapshot_dir(&host);
    let outside_before = attrs(&std::fs::metadata(&outside).unwrap());
    let out = output(cmd().args(["rm", "--root"]).arg(&root));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.exists());
    assert!(mounts_below(&root).is_empty());
    assert_eq!(std::fs::read(host.join("precious")).unwrap(), b"keep");
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep too");
    assert_eq!(
        snapshot_dir(&host),
        host_before,
        "host data: mode, owner, mtime"
    );
    assert_eq!(attrs(&std::fs::metadata(&outside).unwrap()), outside_before);
}

#[test]
fn rm_refuses_slash_files_symlinks_and_missing_paths() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let dir = t.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let cases: [(&Path, &str); 5] = [
        (Path::new("/"), "refusing to remove /"),
        (Path::new("/tmp/.."), "refusing to remove /"),
        (&file, "is not a directory"),
        (&link, "is a symlink"),
        (&t.path().join("missing"), "does not exist"),
    ];
    for (path, expect) in cases {
        let out = output(cmd().args(["rm", "--root"]).arg(path));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rm {} succeeded", path.display());
        assert!(err.contains(expect), "rm {}: {err}", path.display());
    }
    assert!(file.exists() && dir.exists() && link.exists());
}
