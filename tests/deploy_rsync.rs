//! `droot-fleet deploy --mode rsync` against a live root: a jail whose `/` is the root may
//! change any name in it at any moment, so nothing may be resolved by name inside it, and the
//! tool's own state must live where the jail cannot reach it. Regression tests for issue 6.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::archive::{Archive, deploy, ok, snapshot_dir};
use common::{cmd, mount_tmpfs, output};

fn rsync(root: &Path, archive: &Path) -> std::process::Output {
    deploy(root, archive, &["--mode", "rsync"])
}

/// Issue 6, item 3: reproducible builds give every file one mtime, so a same-length change
/// must be found by content, not skipped as "unchanged".
#[test]
fn a_change_with_the_same_size_and_mtime_is_deployed() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let v1 = Archive::new()
        .file("conf", b"port=80")
        .file("same", b"x")
        .write(&t.path().join("v1.tar"));
    let v2 = Archive::new()
        .file("conf", b"port=81")
        .file("same", b"x")
        .write(&t.path().join("v2.tar"));
    ok(&rsync(&root, &v1));
    use std::os::unix::fs::MetadataExt;
    let same_ino = std::fs::metadata(root.join("same")).unwrap().ino();
    let out = rsync(&root, &v2);
    ok(&out);
    assert_eq!(std::fs::read(root.join("conf")).unwrap(), b"port=81");
    assert_eq!(
        std::fs::metadata(root.join("same")).unwrap().ino(),
        same_ino,
        "an identical file is still left alone"
    );
}

/// Issue 6, item 4: the lock and staging live beside the root, not in it; a `.droot-fleet`
/// that a jailed root planted inside it (symlinks to host paths) is never used.
#[test]
fn state_lives_beside_the_root_and_a_planted_tool_dir_is_never_followed() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let host_dir = t.path().join("host-dir");
    std::fs::create_dir_all(host_dir.join("rsync")).unwrap();
    std::fs::write(host_dir.join("rsync/data"), b"host data").unwrap();
    let v1 = Archive::new()
        .file("bin", b"v1")
        .write(&t.path().join("v1.tar"));
    let v2 = Archive::new()
        .file("bin", b"v2")
        .write(&t.path().join("v2.tar"));
    ok(&rsync(&root, &v1));
    let state = t.path().join(".app.droot-fleet");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700, "state beside the root");
    assert!(
        !root.join(".droot-fleet").exists(),
        "no state inside the root"
    );

    // What a jailed root did: lock and staging as symlinks to host paths.
    std::fs::create_dir(root.join(".droot-fleet")).unwrap();
    symlink(
        t.path().join("host-created"),
        root.join(".droot-fleet/lock"),
    )
    .unwrap();
    symlink(&host_dir, root.join(".droot-fleet/staging")).unwrap();
    let before = snapshot_dir(&host_dir);
    ok(&rsync(&root, &v2));
    assert_eq!(std::fs::read(root.join("bin")).unwrap(), b"v2");
    assert!(
        !t.path().join("host-created").exists(),
        "no host file created"
    );
    assert_eq!(snapshot_dir(&host_dir), before, "host directory untouched");
    assert!(
        !root.join(".droot-fleet").exists(),
        "the planted directory is extraneous to the archive: deleted, links and all"
    );
}

/// Issue 6, item 5: a process in the live root keeps swapping a directory for a symlink to
/// a host directory (atomically, with RENAME_EXCHANGE) while rsync deploys create, fill,
/// empty and delete that directory. The host directory must come through untouched: mode,
/// mtime, owner and contents. A deploy may fail, saying the name changed during the deploy.
#[test]
fn a_directory_swapped_for_a_symlink_mid_deploy_never_leads_outside() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let host = t.path().join("host");
    std::fs::create_dir(&host).unwrap();
    for i in 0..50 {
        std::fs::write(host.join(format!("h{i}")), b"host").unwrap();
    }
    let with = |prefix: &str| {
        (0..50).fold(Archive::new().dir("d").file("top", b"t"), |a, i| {
            a.file(&format!("d/{prefix}{i}"), prefix.as_bytes())
        })
    };
    let archives = [
        with("f").write(&t.path().join("f.tar")),
        with("g").write(&t.path().join("g.tar")),
        Archive::new()
            .file("top", b"t")
            .write(&t.path().join("none.tar")),
    ];
    ok(&rsync(&root, &archives[0]));
    let before = snapshot_dir(&host);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, swaps, root, host) = (stop.clone(), swaps.clone(), root.clone(), host.clone());
        std::thread::spawn(move || {
            let (d, s) = (root.join("d"), root.join("s"));
            while !stop.load(Ordering::Relaxed) {
                if std::fs::symlink_metadata(&s).is_err() {
                    let _ = symlink(&host, &s);
                }
                let swapped = nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &d,
                    nix::fcntl::AT_FDCWD,
                    &s,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                );
                if swapped.is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::yield_now();
                }
            }
        })
    };
    let (mut deployed, mut refused) = (0, 0);
    let mut errors = std::collections::BTreeSet::new();
    for round in 0..45 {
        let out = rsync(&root, &archives[round % 3]);
        if out.status.success() {
            deployed += 1;
        } else {
            refused += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("changed during the deploy"), "{err}");
            errors.insert(err.trim().to_string());
        }
        assert_eq!(snapshot_dir(&host), before, "round {round}: host changed");
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    eprintln!(
        "{} swaps; {deployed} deploys succeeded, {refused} refused: {errors:#?}",
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        swaps.load(Ordering::Relaxed) > 100,
        "the attack ran ({} swaps; {deployed} deployed, {refused} refused)",
        swaps.load(Ordering::Relaxed)
    );
    assert_eq!(snapshot_dir(&host), before);
}

/// Unmounts what a failed test left behind.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// Issue 6, item 6: a mount point whose path is not UTF-8, anywhere on the host, must not
/// make the mount table unreadable: rsync deploy, umount and rm still work, and a non-UTF-8
/// mountpoint inside the root is still spared.
#[test]
fn non_utf8_mount_points_break_neither_rsync_nor_umount_nor_rm() {
    common::require_root("mounting tmpfs at non-UTF-8 paths");
    let t = common::tempdir();
    let root = t.path().join("app");
    let elsewhere = t.path().join(OsStr::from_bytes(b"caf\xe9 host"));
    let inside = root.join(OsStr::from_bytes(b"m\xe9dia"));
    let _guard = Unmount(vec![elsewhere.clone(), inside.clone()]);
    let v1 = Archive::new()
        .file("bin", b"v1")
        .write(&t.path().join("v1.tar"));
    ok(&rsync(&root, &v1));
    mount_tmpfs(&elsewhere);
    mount_tmpfs(&inside);
    std::fs::write(inside.join("live"), b"live").unwrap();

    let out = rsync(&root, &v1);
    ok(&out);
    assert_eq!(
        std::fs::read(inside.join("live")).unwrap(),
        b"live",
        "the mountpoint inside the root was spared"
    );
    ok(&output(cmd().args(["umount", "--root"]).arg(&root)));
    assert!(
        common::mounts_below_but_store(&root).is_empty(),
        "umount took the mount away, and left only the store's own nosuid,nodev mount"
    );
    ok(&output(cmd().args(["rm", "--root"]).arg(&root)));
    assert!(!root.exists());
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo").is_err(),
        "the host mount table is still not UTF-8 (the test covered that case)"
    );
}

/// The staging tree is renamed into the root, which works only within one mount: a root that
/// is a mountpoint of its own is refused up front, naming the cause, with nothing changed.
#[test]
fn a_root_that_is_its_own_mount_is_refused_with_nothing_changed() {
    common::require_root("mounting a tmpfs as the root");
    let t = common::tempdir();
    let root = t.path().join("app");
    let _guard = Unmount(vec![root.clone()]);
    mount_tmpfs(&root);
    std::fs::write(root.join("old"), b"old").unwrap();
    let before = snapshot_dir(&root);
    let v1 = Archive::new()
        .file("bin", b"v1")
        .write(&t.path().join("v1.tar"));
    let out = rsync(&root, &v1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mountpoint of its own"), "{err}");
    assert_eq!(snapshot_dir(&root), before);
    let staging = t.path().join(".app.droot-fleet/staging");
    assert_eq!(
        std::fs::read_dir(staging).unwrap().count(),
        0,
        "staging cleaned"
    );
}
