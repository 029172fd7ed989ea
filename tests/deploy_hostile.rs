//! `droot-fleet deploy` against a corpus of hostile archives, generated here: each must be
//! refused, naming the entry, with nothing changed inside the root or outside it, in both
//! symlink and rsync mode.

mod common;

use std::io::Write;
use std::path::Path;

use common::archive::{Archive, current_target, deploy, ok, simple, snapshot};

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
                .link(tar::EntryType::Symlink, "d2", &out)
                .file("d2/x", b"x"),
            "through the symlink",
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
    corpus
}

#[test]
fn hostile_archives_are_refused_with_nothing_changed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("app");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    let good = simple("good").write(&t.path().join("good.tar"));
    ok(&deploy(&root, &good, &["--version", "good"]));
    let before = snapshot(&root);
    let outside_before = snapshot(&outside);
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
                snapshot(&outside),
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
    let t = tempfile::tempdir().unwrap();
    let f = Archive::new()
        .file("ok", b"1")
        .file("etc/../../x", b"x")
        .write(&t.path().join("a.tar"));
    let out = deploy(&t.path().join("app"), &f, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"etc/../../x\""), "{err}");
    assert_eq!(out.status.code(), Some(1));
}
