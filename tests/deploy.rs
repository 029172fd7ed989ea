//! `droot-fleet deploy`: releases from every format, atomic switch, rollback, pruning,
//! owners, devices and rsync mode. Hostile archives are in `deploy_hostile.rs`.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::archive::{Archive, current_target, deploy, ok, simple, snapshot};
use common::{cmd, output};

#[test]
fn deploys_every_format_from_file_and_stdin() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let tar = simple("v1").bytes();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (name, bytes) in [("plain", &tar), ("gz", &gz), ("zst", &zst)] {
        let f = t.path().join(format!("a.{name}"));
        std::fs::write(&f, bytes).unwrap();
        ok(&deploy(&root, &f, &["--version", &format!("file-{name}")]));
        assert_eq!(current_target(&root), format!("releases/file-{name}"));
        // Same bytes through stdin, as `aws s3 cp ... - | droot-fleet deploy` does.
        let mut child = cmd()
            .args(["deploy", "--root"])
            .arg(&root)
            .args(["--version", &format!("stdin-{name}"), "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        ok(&out);
        let cur = root.join("current");
        assert_eq!(std::fs::read_to_string(cur.join("bin/app")).unwrap(), "v1");
        assert_eq!(
            std::fs::read_to_string(cur.join(".drootenv")).unwrap(),
            "PATH=/bin\nOPTS=a=b\n",
            "/.drootenv is kept"
        );
        assert_eq!(
            std::fs::read_link(cur.join("etc-link")).unwrap(),
            Path::new("/etc")
        );
    }
    // The release tree is readable by others; staging left nothing behind.
    let m = std::fs::metadata(root.join("current/")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o755);
    assert!(
        std::fs::read_dir(root.join(".droot-fleet/staging"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn default_version_is_a_utc_timestamp_and_duplicates_are_refused() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let a = simple("x").write(&t.path().join("a.tar"));
    ok(&deploy(&root, &a, &[]));
    let v = current_target(&root)
        .trim_start_matches("releases/")
        .to_string();
    assert_eq!(v.len(), 14, "{v}");
    assert!(v.starts_with("20"), "{v}");
    ok(&deploy(&root, &a, &[])); // same second → distinct name
    assert_ne!(current_target(&root), format!("releases/{v}"));
    let out = deploy(&root, &a, &["--version", &v]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = deploy(&root, &a, &["--version", "../evil"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid release name"));
}

#[test]
fn rollback_list_and_prune() {
    let t = common::tempdir();
    let root = t.path().join("app");
    for v in ["v8", "v9", "v10", "v11"] {
        let a = simple(v).write(&t.path().join(format!("{v}.tar")));
        ok(&deploy(&root, &a, &["--version", v, "--keep", "3"]));
    }
    // v8 pruned: keep 3.
    assert!(!root.join("releases/v8").exists());
    let list = output(cmd().args(["deploy", "--list", "--root"]).arg(&root));
    ok(&list);
    let text = String::from_utf8_lossy(&list.stdout);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l[2..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["v9", "v10", "v11"],
        "deploy order, not name order"
    );
    assert!(text.lines().last().unwrap().starts_with("* v11"), "{text}");

    // Rollback with no argument goes to the release deployed before the current one.
    ok(&output(
        cmd().args(["deploy", "--rollback", "--root"]).arg(&root),
    ));
    assert_eq!(current_target(&root), "releases/v10");
    ok(&output(
        cmd()
            .args(["deploy", "--rollback", "v11", "--root"])
            .arg(&root),
    ));
    assert_eq!(current_target(&root), "releases/v11");
    let out = output(
        cmd()
            .args(["deploy", "--rollback", "nope", "--root"])
            .arg(&root),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release named nope"));

    // Rolled back to the oldest; a deploy with --keep 1 must keep it and its predecessor.
    ok(&output(
        cmd()
            .args(["deploy", "--rollback", "v9", "--root"])
            .arg(&root),
    ));
    let a = simple("v12").write(&t.path().join("v12.tar"));
    ok(&deploy(&root, &a, &["--version", "v12", "--keep", "1"]));
    assert!(root.join("releases/v12").is_dir());
    assert!(
        root.join("releases/v9").is_dir(),
        "previous (rollback target) kept"
    );
    assert!(!root.join("releases/v10").exists());
    assert!(!root.join("releases/v11").exists());

    let out = output(
        cmd()
            .args(["deploy", "--list", "--format", "json", "--root"])
            .arg(&root),
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[1]["version"], "v12");
    assert_eq!(rows[1]["current"], true);
}

#[test]
fn prune_never_follows_a_symlink_out_of_the_root() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let outside = t.path().join("precious");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("data"), b"keep me").unwrap();
    let a = simple("x").write(&t.path().join("a.tar"));
    ok(&deploy(&root, &a, &["--version", "a"]));
    // A release entry that is a symlink to data outside, recorded as the oldest release.
    std::os::unix::fs::symlink(&outside, root.join("releases/0-link")).unwrap();
    let before = common::archive::snapshot_dir(&outside);
    for v in ["b", "c", "d"] {
        ok(&deploy(&root, &a, &["--version", v, "--keep", "1"]));
    }
    assert_eq!(std::fs::read(outside.join("data")).unwrap(), b"keep me");
    assert_eq!(common::archive::snapshot_dir(&outside), before);
}

#[test]
fn current_always_resolves_during_100_switches() {
    let t = common::tempdir();
    let root = t.path().join("app");
    for v in ["a", "b"] {
        let a = simple(v).write(&t.path().join(format!("{v}.tar")));
        ok(&deploy(&root, &a, &["--version", v]));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, failures) = (stop.clone(), reads.clone(), failures.clone());
        let app = root.join("current/bin/app");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_to_string(&app) {
                    Ok(s) if s == "a" || s == "b" => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Mostly rollbacks (cheap), with a real deploy of a new release every tenth switch.
    for i in 0..100 {
        let v = if i % 2 == 0 { "a" } else { "b" };
        if i % 10 == 9 {
            let name = format!("{v}{i}");
            let a = simple(v).write(&t.path().join(format!("{name}.tar")));
            ok(&deploy(&root, &a, &["--version", &name, "--keep", "1000"]));
            assert_eq!(current_target(&root), format!("releases/{name}"));
        } else {
            ok(&output(
                cmd().args(["deploy", "--rollback", v, "--root"]).arg(&root),
            ));
            assert_eq!(current_target(&root), format!("releases/{v}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 100, "the reader loop ran");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "current failed to resolve"
    );
}

#[test]
fn setuid_bits_and_owners_need_same_owner() {
    common::require_root("restoring archive owners (chown)");
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = Archive::new()
        .owned("suid", 1234, 5678, 0o4755)
        .owned("sgid", 1234, 5678, 0o2755)
        .owned("sticky", 1234, 5678, 0o1777)
        .write(&t.path().join("a.tar"));
    ok(&deploy(&root, &f, &["--version", "plain"]));
    let m = std::fs::metadata(root.join("releases/plain/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "setuid stripped by default");
    assert_eq!((m.uid(), m.gid()), (0, 0), "owner not restored by default");
    let m = std::fs::metadata(root.join("releases/plain/sgid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    let m = std::fs::metadata(root.join("releases/plain/sticky")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o1777,
        "sticky bit is not a privilege; kept"
    );

    ok(&deploy(&root, &f, &["--version", "owned", "--same-owner"]));
    let m = std::fs::metadata(root.join("releases/owned/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let m = std::fs::metadata(root.join("releases/owned/sgid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o2755);
}

#[test]
fn devices_are_created_with_allow_devices() {
    common::require_root("creating device nodes (mknod)");
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = Archive::new()
        .special(tar::EntryType::Char, "null")
        .special(tar::EntryType::Fifo, "pipe")
        .write(&t.path().join("a.tar"));
    ok(&deploy(&root, &f, &["--allow-devices", "--version", "d"]));
    let m = std::fs::metadata(root.join("releases/d/null")).unwrap();
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    let m = std::fs::symlink_metadata(root.join("releases/d/pipe")).unwrap();
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFIFO);
}

/// Issue 9: a stock Debian rootfs has nodes in /dev; `run` masks them, so deploy skips them.
#[test]
fn devices_under_dev_are_skipped_by_default() {
    common::require_root("creating device nodes (mknod)");
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = Archive::new()
        .dir("./")
        .dir("./dev")
        .special(tar::EntryType::Char, "./dev/null")
        .special(tar::EntryType::Block, "./dev/sda")
        .special(tar::EntryType::Fifo, "./dev/initctl")
        .link(tar::EntryType::Symlink, "./dev/fd", "/proc/self/fd")
        .file("./bin/app", b"v1")
        .write(&t.path().join("a.tar"));
    let out = deploy(&root, &f, &["--version", "d"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 device nodes/FIFOs under /dev/ skipped"),
        "{err}"
    );
    let names: Vec<String> = snapshot(&root.join("releases/d"))
        .into_iter()
        .map(|s| s.split(" [").next().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "bin/",
            "bin/app (2 bytes)",
            "dev/",
            "dev/fd -> /proc/self/fd"
        ]
    );
    // Asked for, they are created like any other device.
    ok(&deploy(&root, &f, &["--version", "e", "--allow-devices"]));
    let m = std::fs::metadata(root.join("releases/e/dev/null")).unwrap();
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    // rsync mode skips them the same way.
    let sync = t.path().join("sync");
    let out = deploy(&sync, &f, &["--mode", "rsync"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 device nodes"));
    assert!(std::fs::symlink_metadata(sync.join("dev/null")).is_err());
}

#[test]
fn devices_outside_dev_are_refused_naming_the_choice() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = Archive::new()
        .dir("./dev")
        .special(tar::EntryType::Char, "./devices/null")
        .write(&t.path().join("a.tar"));
    let out = deploy(&root, &f, &["--version", "d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        "devices/null",
        "character device",
        "droot-fleet export",
        "--allow-devices",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!root.join("current").exists());
    assert!(!root.join("releases/d").exists());
}

#[test]
fn rsync_mode_updates_in_place_and_spares_mountpoints() {
    common::require_root("mounting a tmpfs inside the root");
    let t = common::tempdir();
    let root = t.path().join("app");
    let v1 = Archive::new()
        .dir("./")
        .dir("proc")
        .dir("data")
        .file("keep", b"same")
        .file("change", b"old")
        .file("gone", b"x")
        .dir("olddir")
        .file("olddir/f", b"x")
        .write(&t.path().join("v1.tar"));
    ok(&deploy(&root, &v1, &["--mode", "rsync"]));
    assert_eq!(std::fs::read(root.join("change")).unwrap(), b"old");
    let keep_ino = std::fs::metadata(root.join("keep")).unwrap().ino();

    // A running jail's mounts: /proc (in the archive) and /data (removed from v2).
    for m in ["proc", "data"] {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(root.join(m))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(root.join(m).join("live"), b"live").unwrap();
    }
    let v2 = Archive::new()
        .dir("./")
        .dir("proc")
        .file("keep", b"same")
        .file("change", b"new!")
        .file("added", b"a")
        .write(&t.path().join("v2.tar"));
    let out = deploy(&root, &v2, &["--mode", "rsync"]);
    let after = snapshot(&root);
    for m in ["proc", "data"] {
        let _ = Command::new("umount").arg(root.join(m)).status();
    }
    ok(&out);
    for live in ["proc/live (4 bytes)", "data/live (4 bytes)"] {
        assert!(after.iter().any(|e| e.starts_with(live)), "{after:?}");
    }
    assert_eq!(std::fs::read(root.join("change")).unwrap(), b"new!");
    assert_eq!(std::fs::read(root.join("added")).unwrap(), b"a");
    assert!(!root.join("gone").exists());
    assert!(!root.join("olddir").exists());
    assert_eq!(
        std::fs::metadata(root.join("keep")).unwrap().ino(),
        keep_ino,
        "unchanged file kept"
    );
    assert!(
        !root.join("current").exists(),
        "rsync mode makes no current link"
    );
    let out = output(
        cmd()
            .args(["deploy", "--mode", "rsync", "--rollback", "--root"])
            .arg(&root),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("need symlink mode"));
}

#[test]
fn a_terminal_on_stdin_is_refused_not_waited_on() {
    let t = common::tempdir();
    let root = t.path().join("app");
    // `script` gives the command a pseudo-terminal as stdin.
    let line = format!(
        "{} deploy --root {}",
        common::bin().display(),
        root.display()
    );
    let o = output(Command::new("script").args(["-qec", &line, "/dev/null"]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("no archive given"), "{text}");
    assert!(!root.exists(), "nothing created");
}

/// Issue 6, item 11: every directory the release store creates has an explicit mode,
/// whatever the umask of the deploying process.
#[test]
fn store_directories_get_explicit_modes_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    let t = common::tempdir();
    let f = simple("v1").write(&t.path().join("v1.tar"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for umask in [0o000, 0o077] {
        for rsync in [false, true] {
            let root = t.path().join(format!("app-{umask:o}-{rsync}"));
            let mut c = cmd();
            c.arg("deploy").arg("--root").arg(&root).arg(&f);
            if rsync {
                c.args(["--mode", "rsync"]);
            }
            // SAFETY: umask is async-signal-safe.
            unsafe {
                c.pre_exec(move || {
                    libc::umask(umask);
                    Ok(())
                });
            }
            ok(&output(&mut c));
            let what = format!("umask {umask:o}, rsync {rsync}");
            // Symlink mode: out of other users' reach. Rsync mode: the jail's `/`.
            let want = if rsync { 0o755 } else { 0o700 };
            assert_eq!(mode(&root), want, "{what}: root");
            let state = if rsync {
                t.path().join(format!(".app-{umask:o}-{rsync}.droot-fleet"))
            } else {
                assert_eq!(mode(&root.join("releases")), 0o755, "{what}: releases/");
                root.join(".droot-fleet")
            };
            assert_eq!(mode(&state), 0o700, "{what}: state");
            assert_eq!(mode(&state.join("staging")), 0o700, "{what}: staging");
            let bin = if rsync {
                root.join("bin")
            } else {
                root.join("current/bin")
            };
            assert_eq!(mode(&bin), 0o755, "{what}: a directory from the archive");
        }
    }
}

/// Issue 6, item 6: the archive's root entry (`./`) gives the published release its mode
/// (the root itself in rsync mode); without one it is 0755.
#[test]
fn the_archive_root_entry_mode_is_honoured() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = Archive::new()
        .dir_owned("./", 0o750, 0, 0)
        .file("x", b"x")
        .write(&t.path().join("a.tar"));
    let plain = Archive::new()
        .file("x", b"x")
        .write(&t.path().join("plain.tar"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    ok(&deploy(&root, &f, &["--version", "v1"]));
    assert_eq!(mode(&root.join("releases/v1")), 0o750);
    ok(&deploy(&root, &plain, &["--version", "v2"]));
    assert_eq!(mode(&root.join("releases/v2")), 0o755);
    let live = t.path().join("live");
    ok(&deploy(&live, &f, &["--mode", "rsync"]));
    assert_eq!(mode(&live), 0o750);
}

#[test]
fn every_tar_extension_unpacks_like_gnu_tar() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let f = t.path().join("ext.tar");
    std::fs::write(&f, common::archive::every_extension()).unwrap();
    ok(&deploy(&root, &f, &["--version", "v", "--same-owner"]));
    let rel = root.join("releases/v");
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(60));
    let pax = std::fs::symlink_metadata(rel.join(&long)).unwrap();
    assert_eq!(std::fs::read(rel.join(&long)).unwrap(), b"pax data");
    assert_eq!((pax.uid(), pax.gid(), pax.mtime()), (3_000_000_000, 0, 1));
    assert_eq!(
        std::fs::read(rel.join(format!("{long}2"))).unwrap(),
        b"long name data"
    );
    assert_eq!(
        std::fs::read_link(rel.join("to-long")).unwrap(),
        Path::new(&long)
    );
    assert_eq!(std::fs::read(rel.join("solaris-x")).unwrap(), b"x");
    assert!(
        std::fs::symlink_metadata(rel.join("v7dir"))
            .unwrap()
            .is_dir()
    );
    for name in ["old-gnu", "pax-0.0", "pax-0.1", "pax-1.0"] {
        let data = std::fs::read(rel.join(name)).unwrap();
        assert_eq!(data.len(), 65536, "{name}");
        assert_eq!((&data[..4], &data[65532..]), (&b"head"[..], &b"tail"[..]));
        assert!(data[4..65532].iter().all(|b| *b == 0), "{name}");
        let blocks = std::fs::metadata(rel.join(name)).unwrap().blocks();
        assert!(blocks * 512 < 65536, "{name}: the hole was written");
    }
    let names = snapshot(&rel);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("GNUSparseFile") || n.contains("PaxHeaders")),
        "{names:?}"
    );
}

/// Issue 6: a 2 KB sparse archive used to write 2 GiB of real blocks.
#[test]
fn issue6_a_tiny_sparse_archive_writes_holes_as_holes() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let size: u64 = 2 << 30;
    let data = [vec![7u8; 512], vec![9u8; 512]].concat();
    let map = format!("0,512,{},512", size - 512);
    let bytes = Archive::new().pax_sparse("big", &map, size, &data).bytes();
    assert!(bytes.len() < 4096, "{} bytes", bytes.len());
    let f = t.path().join("sparse.tar");
    std::fs::write(&f, &bytes).unwrap();
    ok(&deploy(&root, &f, &["--version", "v"]));
    let big = root.join("releases/v/big");
    let meta = std::fs::metadata(&big).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 <= 64 << 10, "{} blocks", meta.blocks());
    let file = std::fs::File::open(&big).unwrap();
    let mut tail = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut tail, size - 512).unwrap();
    assert_eq!(tail, [9u8; 512]);
    // The real size counts against --max-bytes.
    let out = deploy(&root, &f, &["--version", "w", "--max-bytes", "1000000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("size limit of 1000000"));
}
