//! `droot-fleet deploy` against a corpus of hostile archives, generated here: each must be
//! refused, naming the entry, with nothing changed inside the root or outside it, in both
//! symlink and rsync mode.

mod common;

use std::io::Write;
use std::path::Path;

use common::archive::{
    Archive, current_target, deploy, gnu_sparse_header, ok, pax_record, raw_header, simple,
    snapshot, zstd,
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
