//! `droot-fleet deploy` against a corpus of hostile archives, generated here: each must be
//! refused, naming the entry, with nothing changed inside the root or outside it, in both
//! symlink and rsync mode.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::archive::{
    Archive, current_target, deploy, gnu_sparse_header, ok, pax_record, raw_header, simple,
    snapshot_dir, snapshot_without, zstd,
};

/// One hostile archive: its name, bytes, the text the error must contain, extra flags.
struct Hostile {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static str,
    flags: Vec<String>,
}

fn hostile_corpus(outside: &Path) -> Vec<Hostile> {
    let out = outside.to_string_lossy().into_owned();
    let h = |name, a: Archive, expect| Hostile {
        name,
        bytes: a.bytes(),
        expect,
        flags: vec![],
    };
    let mut corpus = vec![
        h("dotdot", Archive::new().file("../escape", b"x"), "'..'"),
        h(
            "dotdot-deep",
            Archive::new().dir("a").file("a/../../escape", b"x"),
            "'..'",
        ),
        h(
            "hardlink-outside",
            Archive::new().link(tar::EntryType::Link, "pw", "../../../etc/passwd"),
            "outside the root",
        ),
        h(
            "hardlink-missing",
            Archive::new().link(tar::EntryType::Link, "pw", "etc/shadow"),
            "does not exist",
        ),
        h(
            "hardlink-through-symlink",
            Archive::new()
                .link(tar::EntryType::Symlink, "evil", &out)
                .link(tar::EntryType::Link, "pw", "evil/secret"),
            "through the symlink",
        ),
        h(
            "file-through-symlink",
            Archive::new()
                .link(tar::EntryType::Symlink, "evil", &out)
                .file("evil/pwned", b"x"),
            "through the symlink",
        ),
        h(
            "dir-through-symlink",
            Archive::new()
                .link(tar::EntryType::Symlink, "evil", &out)
                .dir("evil/sub"),
            "through the symlink",
        ),
        h(
            "symlink-replacing-dir-then-write",
            Archive::new()
                .dir("d")
                .file("d/first", b"x")
                .dir("e")
                .link(tar::EntryType::Symlink, "e", &out)
                .file("e/x", b"x"),
            "through the symlink",
        ),
        h(
            "path-10000-levels",
            Archive::new().long_file("a/".repeat(10_000).trim_end_matches('/'), b"x"),
            "over the 4095-byte limit",
        ),
        h(
            "char-device",
            Archive::new().special(tar::EntryType::Char, "null"),
            "character device",
        ),
        h(
            "block-device",
            Archive::new().special(tar::EntryType::Block, "sda"),
            "block device",
        ),
        h(
            "fifo",
            Archive::new().special(tar::EntryType::Fifo, "pipe"),
            "FIFO",
        ),
        h(
            "dev-itself-a-device",
            Archive::new().special(tar::EntryType::Char, "dev"),
            "--allow-devices",
        ),
        h(
            "device-beside-dev",
            Archive::new().special(tar::EntryType::Char, "devices/null"),
            "droot-fleet export",
        ),
        h(
            "dev-symlink-then-device",
            Archive::new()
                .link(tar::EntryType::Symlink, "dev", &out)
                .special(tar::EntryType::Char, "dev/null"),
            "through the symlink",
        ),
        h(
            "not-an-archive",
            Archive(tar::Builder::new(b"hello world".to_vec())),
            "not a tar",
        ),
    ];
    // Truncated: a header promising more data than present.
    let mut trunc = Archive::new().file("big", &[7u8; 4096]).bytes();
    trunc.truncate(1024);
    corpus.push(Hostile {
        name: "truncated",
        bytes: trunc,
        expect: "truncated or corrupt",
        flags: vec![],
    });
    // Corrupt gzip.
    let mut gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&simple("x").bytes()).unwrap();
        e.finish().unwrap()
    };
    let mid = gz.len() / 2;
    gz[mid..mid + 16].fill(0xff);
    corpus.push(Hostile {
        name: "corrupt-gzip",
        bytes: gz,
        expect: "cannot read archive",
        flags: vec![],
    });
    corpus.push(Hostile {
        name: "too-large",
        bytes: Archive::new()
            .file("a", &[0u8; 600])
            .file("b", &[0u8; 600])
            .bytes(),
        expect: "size limit of 1000 bytes",
        flags: vec!["--max-bytes".into(), "1000".into()],
    });
    corpus.push(Hostile {
        name: "too-many-entries",
        bytes: (0..20)
            .fold(Archive::new(), |a, i| a.file(&format!("f{i}"), b""))
            .bytes(),
        expect: "limit of 10 entries",
        flags: vec!["--max-entries".into(), "10".into()],
    });
    corpus.extend(extension_corpus());
    corpus
}

/// Extension headers and sparse maps that try to exhaust memory or disk, or lie.
fn extension_corpus() -> Vec<Hostile> {
    let hostile = |name, bytes, expect, flags: &[&str]| Hostile {
        name,
        bytes,
        expect,
        flags: flags.iter().map(|f| f.to_string()).collect(),
    };
    let comment = |n: usize| pax_record("comment", &vec![b'a'; n]);
    let v1_sparse = |data: &[u8]| {
        Archive::new()
            .pax(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"s"),
                ("GNU.sparse.realsize", b"100"),
            ])
            .raw(
                raw_header(b"GNUSparseFile.0/s", b'0', data.len() as u64),
                data,
            )
            .bytes()
    };
    let endless_old_gnu = {
        let mut a = Archive::new().raw(gnu_sparse_header(b"s", &[(0, 0)], 100, true), b"");
        let mut ext = [0u8; 512];
        ext[504] = 1;
        for _ in 0..3000 {
            a = a.raw(ext, b"");
        }
        a.bytes()
    };
    vec![
        hostile(
            "pax-header-of-2mib-in-zstd",
            zstd(
                &Archive::new()
                    .ext(b"PaxHeaders/big", b'x', &comment(2 << 20))
                    .file("a", b"x")
                    .bytes(),
            ),
            "for extension headers",
            &[],
        ),
        hostile(
            "pax-headers-adding-up-past-the-cap",
            Archive::new()
                .ext(b"PaxHeaders/1", b'x', &comment(400_000))
                .ext(b"PaxHeaders/2", b'x', &comment(400_000))
                .ext(b"PaxHeaders/3", b'x', &comment(400_000))
                .file("a", b"x")
                .bytes(),
            "for extension headers",
            &[],
        ),
        hostile(
            "gnu-long-name-of-2mib",
            Archive::new()
                .ext(b"././@LongLink", b'L', &vec![b'n'; 2 << 20])
                .file("a", b"x")
                .bytes(),
            "for extension headers",
            &[],
        ),
        hostile(
            "pax-header-counts-towards-max-bytes",
            Archive::new()
                .ext(b"PaxHeaders/a", b'x', &comment(900_000))
                .file("a", &[0u8; 200_000])
                .bytes(),
            "size limit of 1000000 bytes",
            &["--max-bytes", "1000000"],
        ),
        hostile(
            "sparse-overlapping",
            Archive::new()
                .pax_sparse("s", "0,512,256,10", 1000, &[1u8; 522])
                .bytes(),
            "bad sparse map",
            &[],
        ),
        hostile(
            "sparse-past-real-size",
            Archive::new()
                .pax_sparse("s", "0,512,1000,10", 1005, &[1u8; 522])
                .bytes(),
            "bad sparse map",
            &[],
        ),
        hostile(
            "sparse-map-not-matching-data",
            Archive::new()
                .pax_sparse("s", "0,10", 100, &[1u8; 30])
                .bytes(),
            "bad sparse map",
            &[],
        ),
        hostile(
            "sparse-huge-count-in-data",
            v1_sparse(&[b"1000000000\n".as_slice(), &b"0\n".repeat(1 << 20)].concat()),
            "for extension headers",
            &[],
        ),
        hostile(
            "old-gnu-sparse-endless-extension-blocks",
            endless_old_gnu,
            "for extension headers",
            &[],
        ),
        hostile(
            "sparse-real-size-counts-towards-max-bytes",
            Archive::new()
                .pax_sparse("s", "0,4", 1 << 40, b"data")
                .bytes(),
            "size limit of",
            &[],
        ),
        hostile(
            "owner-beyond-32-bits",
            Archive::new()
                .pax(&[("uid", b"4294967301")])
                .file("f", b"x")
                .bytes(),
            "beyond the 32-bit ids",
            &["--same-owner"],
        ),
        hostile(
            "multi-volume-continuation",
            Archive::new().ext(b"cont", b'M', b"").bytes(),
            "multi-volume",
            &[],
        ),
    ]
}

#[test]
fn hostile_archives_are_refused_with_nothing_changed() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    let good = simple("good").write(&t.path().join("good.tar"));
    ok(&deploy(&root, &good, &["--version", "good"]));
    // The tool's own state (lock, staging) changes on every attempt; nothing else may.
    let snapshot = |d: &Path| snapshot_without(d, &[".droot-fleet"]);
    let before = snapshot(&root);
    let outside_before = snapshot_dir(&outside);
    for mode in ["symlink", "rsync"] {
        let target = if mode == "symlink" {
            root.clone()
        } else {
            t.path().join("rsync-root")
        };
        if mode == "rsync" {
            ok(&deploy(&target, &good, &["--mode", "rsync"]));
        }
        let target_before = snapshot(&target);
        for case in hostile_corpus(&outside) {
            let f = t.path().join(format!("{}.tar", case.name));
            std::fs::write(&f, &case.bytes).unwrap();
            let mut args = vec!["--mode", mode];
            args.extend(case.flags.iter().map(String::as_str));
            let out = deploy(&target, &f, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{mode}/{}: accepted", case.name);
            assert!(
                err.contains(case.expect),
                "{mode}/{}: unexpected error: {err}",
                case.name
            );
            assert!(
                err.len() < 1000,
                "{mode}/{}: a {}-byte error",
                case.name,
                err.len()
            );
            assert!(
                err.contains("current is unchanged"),
                "{mode}/{}: {err}",
                case.name
            );
            assert_eq!(
                snapshot(&target),
                target_before,
                "{mode}/{}: root changed",
                case.name
            );
            assert_eq!(
                snapshot_dir(&outside),
                outside_before,
                "{mode}/{}: wrote outside",
                case.name
            );
        }
    }
    assert_eq!(snapshot(&root), before);
    assert_eq!(current_target(&root), "releases/good");
}

#[test]
fn errors_name_the_offending_entry() {
    let t = common::tempdir();
    let f = Archive::new()
        .file("ok", b"1")
        .file("etc/../../x", b"x")
        .write(&t.path().join("a.tar"));
    let out = deploy(&t.path().join("app"), &f, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"etc/../../x\""), "{err}");
    assert_eq!(out.status.code(), Some(1));
}

/// Issue 6, item 1: a directory entry, then a symlink of the same name. The directory's saved
/// mode, owner and mtime must not be applied through the symlink to the host path: not to a
/// directory, not to a file (with --same-owner it became setuid root), and a FIFO target must
/// not hang the deploy.
#[test]
fn dir_then_symlink_of_the_same_name_changes_nothing_outside() {
    common::require_root("restoring owners with --same-owner");
    let t = common::tempdir();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(outside.join("victim-dir")).unwrap();
    std::fs::write(outside.join("victim-file"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        outside.join("victim-file"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &outside.join("victim-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let before = snapshot_dir(&outside);
    for victim in ["victim-dir", "victim-file", "victim-fifo"] {
        let target = outside.join(victim).to_string_lossy().into_owned();
        let f = Archive::new()
            .dir("./")
            .dir_owned("a/", 0o6777, 4242, 4242)
            .link(tar::EntryType::Symlink, "a", &target)
            .write(&t.path().join(format!("{victim}.tar")));
        for mode in ["symlink", "rsync"] {
            let root = t.path().join(format!("{mode}-{victim}"));
            let mut c = common::cmd();
            c.arg("deploy")
                .arg("--root")
                .arg(&root)
                .args(["--mode", mode, "--same-owner"])
                .arg(&f)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let out = wait_bounded(c, Duration::from_secs(30), &format!("{mode}/{victim}"));
            ok(&out);
            let a = if mode == "symlink" {
                root.join("current/a")
            } else {
                root.join("a")
            };
            assert_eq!(std::fs::read_link(&a).unwrap(), Path::new(&target));
            assert_eq!(
                snapshot_dir(&outside),
                before,
                "{mode}/{victim}: host path changed"
            );
        }
    }
}

/// Runs a command, failing the test if it has not exited within `limit` (it is killed).
fn wait_bounded(mut c: Command, limit: Duration, what: &str) -> std::process::Output {
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what}: deploy hung for {limit:?} (opened a FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Disk used below `dir`, in bytes (`du`'s count of allocated blocks).
fn disk_used(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Beyond issue 15's list: the byte limit counted file contents only, but every entry
/// takes disk its size does not show (a directory's block, a long link target, an inode).
/// 20,000 empty directories with 60-byte symlinks (a 20 MB tar of nothing but headers)
/// unpacked to 160 MB under `--max-bytes 16MiB`; at the default 8 GiB and 10 million
/// entries, that is 40 GiB and every inode of a host's filesystem. Each entry now counts
/// at least one 4 KiB block, and a file's contents in whole blocks.
#[test]
fn entries_count_the_disk_they_take_against_max_bytes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("app");
    let target = "t".repeat(60);
    let archive = (0..20_000).fold(Archive::new(), |a, i| {
        a.dir(&format!("d{i:05}/"))
            .link(tar::EntryType::Symlink, &format!("l{i:05}"), &target)
    });
    let f = archive.write(&t.path().join("headers.tar"));
    let limit = 16u64 << 20;
    let out = deploy(
        &root,
        &f,
        &["--version", "v1", "--max-bytes", &limit.to_string()],
    );
    let used = disk_used(&root);
    assert!(
        !out.status.success(),
        "accepted: {used} bytes on disk under a limit of {limit}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("size limit of 16777216 bytes"), "{err}");
    assert!(used < limit, "{used} bytes left on disk");
}
