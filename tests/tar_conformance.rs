//! Conformance of our tar reader with GNU tar (issue 8): archives made by every writer
//! available from Debian packages — GNU tar in each `--format` with and without `--sparse`
//! (each `--sparse-version` for posix), bsdtar, busybox tar, Python's `tarfile` in each
//! format, and `docker save` layers — are unpacked by `droot-fleet deploy` and by `tar -x`,
//! and the two trees must match entry by entry: type, content, size, link target, mode
//! (set-id bits aside), owner and file mtime. The source tree has long names, long link names,
//! non-UTF-8 names, a large uid and a 9 GiB sparse file where the format can hold them.
//! `export` output must read back identically with GNU tar and bsdtar.
//!
//! Needs root (owners), GNU tar, bsdtar (libarchive-tools), busybox, python3 and, for the
//! docker cases, an engine; a missing tool fails the test with the reason.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{cmd, output, require_root};

/// Size of the sparse file that needs GNU size extensions (over 8 GiB).
const HUGE: u64 = (9 << 30) + 16;
const MTIME: u64 = 1_700_000_000;

/// Top-level groups of the source tree; each writer archives the ones its format can hold.
const BASE: &[&str] = &["tree", "longname"];
const ALL: &[&str] = &["tree", "longname", "longlink", "biguid"];

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// A file of `size` bytes that is all hole but for `head` at 0 and `tail` at its end.
fn sparse_file(path: &Path, size: u64, head: &[u8], tail: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(head, 0).unwrap();
    f.write_all_at(tail, size - tail.len() as u64).unwrap();
}

/// Builds the source tree under `src`.
fn make_source(src: &Path) {
    let t = src.join("tree");
    fs::create_dir_all(t.join("d/sub")).unwrap();
    write(&t.join("d/file"), b"hello\n", 0o644);
    write(&t.join("exec"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&t.join("private"), b"secret", 0o600);
    write(&t.join("setuid"), b"suid", 0o4755);
    write(&t.join("empty"), b"", 0o640);
    symlink("d/file", t.join("rel")).unwrap();
    symlink("/etc/passwd", t.join("abs")).unwrap();
    symlink("nowhere", t.join("dangling")).unwrap();
    fs::hard_link(t.join("d/file"), t.join("d/hard")).unwrap();
    let odd = t.join(OsStr::from_bytes(b"caf\xe9"));
    write(&odd, b"latin-1 name", 0o644);
    let odd_dir = t.join(OsStr::from_bytes(b"dir\xff"));
    fs::create_dir(&odd_dir).unwrap();
    write(&odd_dir.join("inner"), b"in a non-UTF-8 dir", 0o644);
    sparse_file(&t.join("small-sparse"), 86_016, b"start", b"end");
    write(&t.join("owned"), b"by 1000", 0o644);
    chown(&t.join("owned"), 1000, 1000);
    fs::set_permissions(t.join("d"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(t.join("d/sub"), fs::Permissions::from_mode(0o700)).unwrap();

    // A 180-byte path of short components (ustar can split it into prefix and name).
    let long = src
        .join("longname")
        .join("a".repeat(60))
        .join("b".repeat(60));
    fs::create_dir_all(&long).unwrap();
    write(
        &long.join(format!("{}.txt", "c".repeat(50))),
        b"long",
        0o644,
    );

    // Names and link targets no ustar header can hold.
    let ll = src.join("longlink");
    fs::create_dir(&ll).unwrap();
    let long_file = ll.join("n".repeat(120));
    write(&long_file, b"long component", 0o644);
    symlink("x".repeat(150), ll.join("to-long")).unwrap();
    fs::hard_link(&long_file, ll.join("hard-to-long")).unwrap();

    let big = src.join("biguid");
    fs::create_dir(&big).unwrap();
    write(&big.join("f"), b"owned by a uid over 2^31", 0o644);
    chown(&big.join("f"), 3_000_000_000, 3_000_000_001);

    let huge = src.join("huge");
    fs::create_dir(&huge).unwrap();
    sparse_file(&huge.join("9g"), HUGE, b"head of a huge file", b"its tail");

    set_times(src);
}

/// Gives everything below `dir` (not symlinks) the same mtime, children first.
fn set_times(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            set_times(&p);
        }
        if !ft.is_symlink() {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
            File::open(&p)
                .unwrap()
                .set_times(FileTimes::new().set_modified(t).set_accessed(t))
                .unwrap();
        }
    }
}

/// What one path looks like after extraction.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Option<i64>,
    /// Link target, or the non-zero 4 KiB blocks of a file (offset, bytes).
    content: Vec<(u64, Vec<u8>)>,
}

/// The non-zero blocks of a file, reading only its data regions (holes are skipped).
fn file_blocks(path: &Path) -> Vec<(u64, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        // SAFETY: plain lseek on an fd we own.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let mut at = data as u64 / 4096 * 4096;
        while at < hole as u64 {
            let mut block = vec![0u8; 4096.min((size - at) as usize)];
            f.read_exact_at(&mut block, at).unwrap();
            if block.iter().any(|b| *b != 0) {
                out.push((at, block));
            }
            at += 4096;
        }
        pos = hole;
    }
    out
}

/// Every path below `dir` (relative, as bytes) and what it is.
fn snapshot(dir: &Path) -> BTreeMap<Vec<u8>, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(base)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = m.file_type();
            let (kind, content) = if ft.is_symlink() {
                let target = fs::read_link(&p).unwrap();
                ('l', vec![(0, target.as_os_str().as_bytes().to_vec())])
            } else if ft.is_dir() {
                walk(base, &p, out);
                ('d', Vec::new())
            } else if ft.is_file() {
                ('f', file_blocks(&p))
            } else {
                ('?', Vec::new())
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o1777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == 'f' { m.len() } else { 0 },
                    // GNU tar's directory mtimes depend on entry order (it fixes a
                    // directory's times when it leaves it, and bsdtar revisits), so only
                    // files are compared.
                    mtime: (kind == 'f').then(|| m.mtime()),
                    content,
                },
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Differences between two snapshots, one line each.
fn diff(ours: &BTreeMap<Vec<u8>, Node>, theirs: &BTreeMap<Vec<u8>, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in theirs {
        match ours.get(path) {
            None => out.push(format!(
                "{}: missing (tar made {:?})",
                shown(path),
                node.kind
            )),
            Some(n) if n != node => {
                let brief = |n: &Node| {
                    format!(
                        "{} mode {:o} owner {}:{} size {} mtime {:?} {} blocks",
                        n.kind,
                        n.mode,
                        n.uid,
                        n.gid,
                        n.size,
                        n.mtime,
                        n.content.len()
                    )
                };
                out.push(format!(
                    "{}: ours {} / tar {}",
                    shown(path),
                    brief(n),
                    brief(node)
                ));
            }
            Some(_) => {}
        }
    }
    for path in ours.keys().filter(|p| !theirs.contains_key(*p)) {
        out.push(format!("{}: extra (tar made nothing)", shown(path)));
    }
    out
}

/// Runs a command that must succeed (the writers, tar -x).
fn run(c: &mut Command) {
    let o = output(c);
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Unpacks `archive` with GNU tar and with `deploy`, and returns the differences.
fn compare(work: &Path, name: &str, archive: &Path) -> Vec<String> {
    let theirs = work.join(format!("{name}.tar-x"));
    fs::create_dir(&theirs).unwrap();
    run(Command::new("tar")
        .args([
            "--same-owner",
            "--same-permissions",
            "--numeric-owner",
            "-xf",
        ])
        .arg(archive)
        .arg("-C")
        .arg(&theirs));
    let root = work.join(format!("{name}.deploy"));
    let o = output(
        cmd()
            .args(["deploy", "--same-owner", "--version", "v", "--root"])
            .arg(&root)
            // The 9 GiB sparse file is over the default byte limit (8 GiB).
            .args(["--max-bytes", "17179869184"])
            .arg(archive),
    );
    if !o.status.success() {
        return vec![format!(
            "deploy failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )];
    }
    let ours = root.join("releases/v");
    let theirs_view = snapshot(&theirs);
    assert!(
        theirs_view.len() >= 8,
        "[{name}] tar -x made only {:?}",
        theirs_view.keys().map(|k| shown(k)).collect::<Vec<_>>()
    );
    let mut problems = diff(&snapshot(&ours), &theirs_view);
    let huge = ours.join("huge/9g");
    if let Ok(m) = fs::metadata(&huge)
        && m.blocks() * 512 > 1 << 20
    {
        problems.push(format!(
            "huge/9g takes {} blocks: holes were written",
            m.blocks()
        ));
    }
    fs::remove_dir_all(&theirs).unwrap();
    // The store is mounted nosuid,nodev onto itself: `rm` takes that away with it.
    let o = cmd().args(["rm", "--root"]).arg(&root).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    problems
}

/// A scratch dir with the source tree; `work/src` holds it.
fn setup(test: &str) -> common::TempDir {
    require_root(test);
    common::require_tool("tar", "tar");
    let work = common::tempdir();
    make_source(&work.path().join("src"));
    work
}

/// Makes each archive (`name`, command writing `archive`, top-level groups), compares it,
/// and fails listing every difference.
fn check_writers(work: &Path, cases: Vec<(String, Command)>) {
    let mut failures = Vec::new();
    for (name, mut c) in cases {
        let archive = work.join(format!("{name}.tar"));
        run(c.current_dir(work.join("src")).arg(&archive));
        for p in compare(work, &name, &archive) {
            failures.push(format!("[{name}] {p}"));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

/// A writer command: `program args...`, then the groups after the archive path is added by
/// a wrapper script (the archive path comes last on our command lines).
fn writer(program: &str, args: &[&str], groups: &[&str]) -> Command {
    // `sh -c 'prog args "$0" groups'`: the archive path is passed as $0.
    let script = format!("{program} {} \"$0\" {}", args.join(" "), groups.join(" "));
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

#[test]
fn gnu_tar_every_format_and_sparse_version() {
    let work = setup("gnu_tar_every_format_and_sparse_version");
    let mut with_huge = ALL.to_vec();
    with_huge.push("huge");
    let mut cases = vec![
        (
            "v7".to_string(),
            writer("tar", &["--format=v7", "-cf"], &["tree"]),
        ),
        (
            "ustar".into(),
            writer("tar", &["--format=ustar", "-cf"], BASE),
        ),
    ];
    for format in ["oldgnu", "gnu", "posix"] {
        let f = format!("--format={format}");
        cases.push((format.into(), writer("tar", &[&f, "-cf"], ALL)));
    }
    for format in ["oldgnu", "gnu"] {
        let f = format!("--format={format}");
        cases.push((
            format!("{format}-sparse"),
            writer("tar", &[&f, "--sparse", "-cf"], &with_huge),
        ));
    }
    for version in ["0.0", "0.1", "1.0"] {
        let v = format!("--sparse-version={version}");
        cases.push((
            format!("posix-sparse-{version}"),
            writer(
                "tar",
                &["--format=posix", "--sparse", &v, "-cf"],
                &with_huge,
            ),
        ));
    }
    check_writers(work.path(), cases);
}

/// Rewrites every header checksum of a v7/ustar archive as the sum of *signed* bytes, as
/// old writers did (it differs only for headers with high-bit bytes).
fn resign_checksums(archive: &[u8]) -> (Vec<u8>, usize) {
    let mut out = archive.to_vec();
    let (mut at, mut changed) = (0, 0);
    while at + 512 <= out.len() && out[at..at + 512].iter().any(|b| *b != 0) {
        let block = &mut out[at..at + 512];
        block[148..156].fill(b' ');
        let signed: i64 = block.iter().map(|b| i64::from(*b as i8)).sum();
        let unsigned: i64 = block.iter().map(|b| i64::from(*b)).sum();
        changed += usize::from(signed != unsigned);
        let text = format!("{:06o}\0 ", signed);
        block[148..156].copy_from_slice(text.as_bytes());
        let size_text = String::from_utf8_lossy(&block[124..136]).into_owned();
        let size = u64::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap_or(0);
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    (out, changed)
}

#[test]
fn v7_with_signed_checksums_extracts_like_gnu_tar() {
    let work = setup("v7_with_signed_checksums_extracts_like_gnu_tar");
    let w = work.path();
    let plain = w.join("plain.tar");
    run(Command::new("tar")
        .current_dir(w.join("src"))
        .args(["--format=v7", "-cf"])
        .arg(&plain)
        .arg("tree"));
    let (signed, changed) = resign_checksums(&fs::read(&plain).unwrap());
    assert!(
        changed >= 2,
        "the non-UTF-8 names give signed sums ({changed})"
    );
    let archive = w.join("signed.tar");
    fs::write(&archive, signed).unwrap();
    let problems = compare(w, "signed", &archive);
    assert!(problems.is_empty(), "differences:\n{}", problems.join("\n"));
}

#[test]
fn bsdtar_formats() {
    common::require_tool("bsdtar", "libarchive-tools");
    let work = setup("bsdtar_formats");
    let mut with_huge = ALL.to_vec();
    with_huge.push("huge");
    let cases = vec![
        (
            "bsd-pax".to_string(),
            writer("bsdtar", &["--format", "pax", "-cf"], &with_huge),
        ),
        ("bsd-restricted".into(), writer("bsdtar", &["-cf"], ALL)),
        (
            "bsd-ustar".into(),
            writer("bsdtar", &["--format", "ustar", "-cf"], BASE),
        ),
        (
            "bsd-gnutar".into(),
            writer("bsdtar", &["--format", "gnutar", "-cf"], ALL),
        ),
        (
            "bsd-v7".into(),
            writer("bsdtar", &["--format", "v7", "-cf"], &["tree"]),
        ),
    ];
    check_writers(work.path(), cases);
}

#[test]
fn busybox_tar() {
    let bb = common::busybox();
    let work = setup("busybox_tar");
    let bb = bb.to_string_lossy().into_owned();
    let cases = vec![(
        "busybox".to_string(),
        writer(
            &format!("{bb} tar"),
            &["-cf"],
            &["tree", "longname", "longlink"],
        ),
    )];
    check_writers(work.path(), cases);
}

#[test]
fn python_tarfile_formats() {
    common::require_tool("python3", "python3");
    let work = setup("python_tarfile_formats");
    let mut cases = Vec::new();
    for (format, groups) in [("USTAR", BASE), ("GNU", ALL), ("PAX", ALL)] {
        let script = format!(
            "import sys, tarfile\n\
             with tarfile.open(sys.argv[-1], 'w', format=tarfile.{format}_FORMAT) as t:\n\
             \x20   for g in {groups:?}: t.add(g)\n"
        );
        let mut c = Command::new("python3");
        c.arg("-c").arg(script);
        cases.push((format!("python-{format}"), c));
    }
    check_writers(work.path(), cases);
}

/// The layer tars inside a `docker save` archive, extracted under `dir`.
fn saved_layers(save: &Path, dir: &Path) -> Vec<PathBuf> {
    fs::create_dir(dir).unwrap();
    run(Command::new("tar").arg("-xf").arg(save).arg("-C").arg(dir));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| dir.join(l.as_str().unwrap()))
        .collect()
}

#[test]
fn docker_save_layers_and_export_read_back() {
    common::require_tool("bsdtar", "libarchive-tools");
    if !common::docker_engine_available("docker_save_layers_and_export_read_back") {
        return;
    }
    let work = setup("docker_save_layers_and_export_read_back");
    let w = work.path();
    let rootfs = w.join("rootfs.tar");
    run(Command::new("tar")
        .current_dir(w.join("src"))
        .args(["--format=posix", "-cf"])
        .arg(&rootfs)
        .args(ALL));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let image = format!("droot-fleet-conformance-{}-{nanos}:v1", std::process::id());
    run(Command::new("docker")
        .arg("import")
        .arg(&rootfs)
        .arg(&image));
    let save = w.join("save.tar");
    let saved = output(
        Command::new("docker")
            .arg("save")
            .arg("-o")
            .arg(&save)
            .arg(&image),
    );
    let _ = output(Command::new("docker").args(["rmi", "-f", &image]));
    assert!(
        saved.status.success(),
        "docker save: {}",
        String::from_utf8_lossy(&saved.stderr)
    );

    let mut failures = Vec::new();
    for (i, layer) in saved_layers(&save, &w.join("saved")).iter().enumerate() {
        for p in compare(w, &format!("layer{i}"), layer) {
            failures.push(format!("[docker layer {i}] {p}"));
        }
    }

    // export's output reads back the same with GNU tar, bsdtar and deploy.
    let out = w.join("export.tar");
    let o = output(
        cmd()
            .args(["export", "--from-archive"])
            .arg(&save)
            .arg("-o")
            .arg(&out),
    );
    assert!(
        o.status.success(),
        "export: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bsd = w.join("export.bsdtar");
    fs::create_dir(&bsd).unwrap();
    run(Command::new("bsdtar")
        .args(["-xp", "--numeric-owner", "-f"])
        .arg(&out)
        .arg("-C")
        .arg(&bsd));
    let gnu = w.join("export.gnutar");
    fs::create_dir(&gnu).unwrap();
    run(Command::new("tar")
        .args([
            "--same-owner",
            "--same-permissions",
            "--numeric-owner",
            "-xf",
        ])
        .arg(&out)
        .arg("-C")
        .arg(&gnu));
    let gnu_view = snapshot(&gnu);
    assert!(
        gnu_view.contains_key(b"biguid/f".as_slice()) && gnu_view.len() > 20,
        "export kept the tree: {:?}",
        gnu_view.keys().map(|k| shown(k)).collect::<Vec<_>>()
    );
    for p in diff(&snapshot(&bsd), &gnu_view) {
        failures.push(format!("[export, bsdtar vs GNU tar] {p}"));
    }
    for p in compare(w, "export", &out) {
        failures.push(format!("[export, deploy vs GNU tar] {p}"));
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

#[test]
fn hand_built_extensions_match_gnu_tar() {
    require_root("hand_built_extensions_match_gnu_tar");
    let work = common::tempdir();
    let archive = work.path().join("ext.tar");
    fs::write(&archive, common::archive::every_extension()).unwrap();
    let problems = compare(work.path(), "ext", &archive);
    assert!(problems.is_empty(), "differences:\n{}", problems.join("\n"));
}
