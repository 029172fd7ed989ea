//! `droot-fleet export`, run as the real binary.
//!
//! Archive tests build `docker save` and OCI-layout tarballs here with `tar::Builder` (layers
//! with whiteouts, an opaque dir, a shadowed hardlink target, gzip and zstd layers) and check
//! the exact flattened result. Engine tests use the real Docker engine at DOCKER_HOST (or
//! /var/run/docker.sock) with images made by `docker import`; without an engine they fail
//! with the reason unless DROOT_FLEET_TEST_NO_DOCKER=1 is set, in which case they say so and
//! return.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, cmd, output, tar_dir};

// ---------------------------------------------------------------- building archives

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Sym(&'a str, &'a str),
    /// A raw, unchecked name (for `..` and absolute paths the tar crate refuses to write).
    Raw(&'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Hard(p, t) | E::Sym(p, t) => {
                h.set_entry_type(if matches!(e, E::Hard(..)) {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Raw(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(4);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, &b"evil"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Writes a tar of `(name, bytes)` files to `path`.
fn write_archive(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

fn config_json(env: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env, "Cmd": ["/bin/sh"]},
        "container_config": {"Env": ["WRONG=container_config"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    })
    .to_string()
    .into_bytes()
}

/// The three layers both generated archives use, and what flattening them must give.
fn test_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            E::Dir("./"),
            E::Dir("./bin/"),
            E::File("./bin/sh", "shell"),
            E::Sym("./bin/ls", "sh"),
            E::Dir("./etc/"),
            E::File("./etc/passwd", "root:x:0:0::/:/bin/sh\n"),
            E::File("./etc/deleteme", "gone"),
            E::Dir("./opt/"),
            E::Dir("./opt/old/"),
            E::File("./opt/old/file", "old"),
            E::File("./opt/keep", "keep"),
            E::Dir("./var/"),
            E::Dir("./var/cache/"),
            E::File("./var/cache/a", "a"),
            E::Dir("./var/cache/sub/"),
            E::File("./var/cache/sub/b", "b"),
            E::Dir("./usr/"),
            E::Dir("./usr/bin/"),
            E::File("./usr/bin/tool", "tool v1"),
            E::Hard("./usr/bin/tool-alias", "./usr/bin/tool"),
            E::File("./usr/bin/other", "other"),
            E::Hard("./usr/bin/other-alias", "./usr/bin/other"),
            E::File("./.drootenv", "STALE=1\n"),
        ]),
        layer(&[
            E::Dir("etc/"),
            E::File("etc/.wh.deleteme", ""),
            E::Dir("var/cache/"),
            E::File("var/cache/.wh..wh..opq", ""),
            E::File("var/cache/new", "new"),
            E::File("opt/.wh.old", ""),
            E::File("usr/bin/tool", "tool v2"),
        ]),
        layer(&[
            E::Dir("opt/old/"),
            E::File("opt/old/fresh", "fresh"),
            E::File("etc/motd", "hi"),
        ]),
    ]
}

const ENV: [&str; 3] = ["PATH=/usr/bin:/bin", "OPTS=a=b=c", "EMPTY="];
const DROOTENV: &str = "PATH=/usr/bin:/bin\nOPTS=a=b=c\nEMPTY=\n";

const EXPECTED: &[&str] = &[
    ".drootenv",
    "bin",
    "bin/ls",
    "bin/sh",
    "etc",
    "etc/motd",
    "etc/passwd",
    "opt",
    "opt/keep",
    "opt/old",
    "opt/old/fresh",
    "usr",
    "usr/bin",
    "usr/bin/other",
    "usr/bin/other-alias",
    "usr/bin/tool",
    "usr/bin/tool-alias",
    "var",
    "var/cache",
    "var/cache/new",
];

fn expected_paths() -> Vec<String> {
    EXPECTED.iter().map(|p| p.to_string()).collect()
}

/// One image of a generated `docker save`: repo tags, layer tars, env.
type SavedImage<'a> = (&'a [&'a str], Vec<Vec<u8>>, &'a [&'a str]);

/// A legacy `docker save` tarball of one image per entry.
fn legacy_archive(path: &Path, images: &[SavedImage]) {
    let mut files = Vec::new();
    let mut manifest = Vec::new();
    for (n, (tags, layers, env)) in images.iter().enumerate() {
        let config = format!("{:064x}.json", 0xc0 + n);
        files.push((config.clone(), config_json(env)));
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let name = format!("{:064x}/layer.tar", (n + 1) * 100 + i);
            files.push((name.clone(), l.clone()));
            names.push(name);
        }
        manifest.push(serde_json::json!({"Config": config, "RepoTags": tags, "Layers": names}));
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    write_archive(path, &files);
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout: index.json → nested index (other arch, host arch, attestation) →
/// manifest with a plain, a gzip and a zstd layer.
fn oci_archive(path: &Path) {
    let layers = test_layers();
    let blobs = [
        (
            "l0",
            layers[0].clone(),
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (
            "l1",
            gzip(&layers[1]),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "l2",
            zstd_bytes(&layers[2]),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ];
    let digest = |s: &str| format!("sha256:{:0>64}", s);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest("cf"), "size": 1},
        "layers": blobs.iter().map(|(n, d, mt)| serde_json::json!({"mediaType": mt, "digest": digest(n), "size": d.len()})).collect::<Vec<_>>(),
    });
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest("bad"), "size": 1,
             "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest("ma"), "size": 1,
             "platform": {"os": "linux", "architecture": host_arch()}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest("at"), "size": 1,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ]
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest("ix"), "size": 1,
            "annotations": {"io.containerd.image.name": "example.com/app:1.0", "org.opencontainers.image.ref.name": "1.0"}}]
    });
    let blob = |n: &str| format!("blobs/sha256/{:0>64}", n);
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index.to_string().into_bytes()),
        (blob("ix"), nested.to_string().into_bytes()),
        (blob("ma"), manifest.to_string().into_bytes()),
        (blob("bad"), b"this manifest must never be read".to_vec()),
        (blob("cf"), config_json(&ENV)),
    ];
    for (n, d, _) in blobs {
        files.push((blob(n), d));
    }
    write_archive(path, &files);
}

// ---------------------------------------------------------------- reading results

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Dir,
    File(Vec<u8>),
    Sym(String),
    Hard(String),
}

fn file(content: &str) -> Got {
    Got::File(content.as_bytes().to_vec())
}

fn entries_of(bytes: &[u8]) -> BTreeMap<String, Got> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        assert!(
            !path.starts_with('/') && !path.starts_with("./"),
            "output paths must be relative: {path}"
        );
        let t = e.header().entry_type();
        let link = || {
            e.link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let got = if t.is_dir() {
            Got::Dir
        } else if t.is_symlink() {
            Got::Sym(link())
        } else if t.is_hard_link() {
            Got::Hard(link())
        } else {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Got::File(data)
        };
        let previous = out.insert(path.trim_end_matches('/').to_string(), got);
        assert!(previous.is_none(), "duplicate entry {path}");
    }
    out
}

fn read_entries(path: &Path) -> BTreeMap<String, Got> {
    entries_of(&std::fs::read(path).unwrap())
}

fn run(args: &[&str]) -> Output {
    output(cmd().args(args))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "export failed: {}", stderr(o));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check_flattened(out: &BTreeMap<String, Got>) {
    let paths: Vec<String> = out.keys().cloned().collect();
    assert_eq!(paths, expected_paths());
    assert_eq!(out[".drootenv"], file(DROOTENV));
    assert_eq!(out["usr/bin/tool"], file("tool v2"));
    // Its target was replaced by layer 1: the alias keeps v1 as a real file, not a link.
    assert_eq!(out["usr/bin/tool-alias"], file("tool v1"));
    assert_eq!(
        out["usr/bin/other-alias"],
        Got::Hard("usr/bin/other".into())
    );
    assert_eq!(out["bin/ls"], Got::Sym("sh".into()));
    assert!(!out.keys().any(|p| p.contains(".wh.")), "whiteouts leaked");
    assert!(!out.contains_key("etc/deleteme"));
    assert!(!out.contains_key("var/cache/a") && !out.contains_key("var/cache/sub"));
    assert!(!out.contains_key("opt/old/file"));
}

// ---------------------------------------------------------------- archive tests

#[test]
fn legacy_docker_save_is_flattened_with_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    legacy_archive(&archive, &[(&["app:1"], test_layers(), &ENV)]);
    let out = t.path().join("out.tar");
    let o = run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    check_flattened(&read_entries(&out));
    assert_eq!(
        files_in(t.path()),
        vec!["out.tar", "save.tar"],
        "no temp file left"
    );
}

#[test]
fn oci_layout_with_nested_index_and_compressed_layers() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("oci.tar");
    oci_archive(&archive);
    let out = t.path().join("out.tar");
    let o = run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    check_flattened(&read_entries(&out));
    // --image-ref by the containerd name works; a wrong one names what is there.
    let o = run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "--image-ref",
        "example.com/app:1.0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let o = run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "--image-ref",
        "nope:2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("example.com/app:1.0"), "{}", stderr(&o));
}

#[test]
fn gzip_and_zstd_outputs_hold_the_same_entries() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("oci.tar");
    oci_archive(&archive);
    let a = archive.to_str().unwrap();
    let raw = run(&["export", "--from-archive", a]);
    assert_ok(&raw);
    let expected = entries_of(&raw.stdout);
    check_flattened(&expected);

    let gz = t.path().join("out.tar.gz");
    assert_ok(&run(&[
        "export",
        "--from-archive",
        a,
        "--gzip",
        "-o",
        gz.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(&gz).unwrap();
    assert_eq!(&bytes[..2], b"\x1f\x8b");
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(entries_of(&plain), expected);
    assert_eq!(plain, raw.stdout, "same bytes once decompressed");

    let zs = run(&["export", "--from-archive", a, "--zstd"]);
    assert_ok(&zs);
    assert_eq!(&zs.stdout[..4], b"\x28\xb5\x2f\xfd");
    let plain = zstd::decode_all(zs.stdout.as_slice()).unwrap();
    assert_eq!(entries_of(&plain), expected);
}

#[test]
fn several_images_need_image_ref() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("two.tar");
    let small = vec![layer(&[E::File("only-b", "b")])];
    legacy_archive(
        &archive,
        &[
            (&["app:1"], test_layers(), &ENV),
            (&["other:2", "other:latest"], small, &["B=1"]),
        ],
    );
    let a = archive.to_str().unwrap();
    let out = t.path().join("out.tar");
    let o = run(&["export", "--from-archive", a, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("app:1") && err.contains("other:2") && err.contains("--image-ref"),
        "{err}"
    );
    assert!(!out.exists());

    let o = run(&[
        "export",
        "--from-archive",
        a,
        "--image-ref",
        "other",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let got = read_entries(&out);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![".drootenv", "only-b"]
    );
    assert_eq!(got[".drootenv"], file("B=1\n"));
}

/// Runs an export of `archive` that must fail with `needle` in the message, and checks an
/// existing output file is left untouched and no temp file remains.
fn assert_bad_archive(dir: &Path, archive: &Path, needle: &str) {
    let out = dir.join("out.tar");
    std::fs::write(&out, "previous").unwrap();
    let before = files_in(dir);
    let o = run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "export of {} should fail",
        archive.display()
    );
    let err = stderr(&o);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous");
    assert_eq!(files_in(dir), before, "no partial file may be left");
}

#[test]
fn bad_archives_fail_clearly_and_leave_no_output() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = |n: &str| d.join(n);

    std::fs::write(p("text.tar"), vec![b'x'; 4096]).unwrap();
    assert_bad_archive(d, &p("text.tar"), "not a tar archive");

    std::fs::write(p("gz.tar.gz"), gzip(&[0u8; 2048])).unwrap();
    assert_bad_archive(d, &p("gz.tar.gz"), "gzip-compressed");

    write_archive(
        &p("nomanifest.tar"),
        &[("hello.txt".into(), b"hi".to_vec())],
    );
    assert_bad_archive(d, &p("nomanifest.tar"), "neither manifest.json");

    // A layer the manifest lists but the archive lacks.
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["gone/layer.tar"]}]"#;
    write_archive(
        &p("nolayer.tar"),
        &[
            ("manifest.json".into(), manifest.to_vec()),
            ("c.json".into(), config_json(&ENV)),
        ],
    );
    assert_bad_archive(d, &p("nolayer.tar"), "lacks gone/layer.tar");

    // A config without Env.
    let cfg = br#"{"config":{"Cmd":["/bin/sh"]}}"#.to_vec();
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    write_archive(
        &p("noenv.tar"),
        &[
            ("manifest.json".into(), manifest.to_vec()),
            ("c.json".into(), cfg),
            ("l/layer.tar".into(), layer(&[E::File("a", "a")])),
        ],
    );
    assert_bad_archive(d, &p("noenv.tar"), "has no Env");

    // Path traversal and absolute paths inside a layer.
    legacy_archive(
        &p("dotdot.tar"),
        &[(
            &["x:1"],
            vec![layer(&[E::File("a", "a"), E::Raw("../escape")])],
            &ENV,
        )],
    );
    assert_bad_archive(d, &p("dotdot.tar"), "\"../escape\"");
    legacy_archive(
        &p("abs.tar"),
        &[(&["x:1"], vec![layer(&[E::Raw("/etc/cron.d/x")])], &ENV)],
    );
    assert_bad_archive(d, &p("abs.tar"), "\"/etc/cron.d/x\"");

    // A hardlink to something that is not in its layer.
    legacy_archive(
        &p("dangling.tar"),
        &[(
            &["x:1"],
            vec![layer(&[E::File("a", "a")]), layer(&[E::Hard("b", "a")])],
            &ENV,
        )],
    );
    assert_bad_archive(d, &p("dangling.tar"), "hardlink \"b\"");

    // A truncated layer.
    let mut cut = layer(&[E::File("big", &"z".repeat(10_000))]);
    cut.truncate(3000);
    legacy_archive(&p("cut.tar"), &[(&["x:1"], vec![cut], &ENV)]);
    assert_bad_archive(d, &p("cut.tar"), "corrupt or truncated");

    // A missing archive.
    assert_bad_archive(d, &p("does-not-exist.tar"), "cannot read");
}

#[test]
fn stdout_output_but_never_to_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    legacy_archive(&archive, &[(&["app:1"], test_layers(), &ENV)]);
    let a = archive.to_str().unwrap();
    // `-o -` means stdout, as does no -o.
    let o = run(&["export", "--from-archive", a, "-o", "-"]);
    assert_ok(&o);
    check_flattened(&entries_of(&o.stdout));
    assert!(!t.path().join("-").exists());
    // On a terminal (util-linux `script` gives the command a pty) it refuses.
    let line = format!("{} export --from-archive {a}", common::bin().display());
    let o = output(Command::new("script").args(["-qec", &line, "/dev/null"]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("refusing to write a tar to a terminal"),
        "{text}"
    );
}

// ---------------------------------------------------------------- engine tests

/// Engine tests share the engine's container list; run them one at a time.
static ENGINE: Mutex<()> = Mutex::new(());

fn docker(args: &[&str]) -> Output {
    output(Command::new("docker").args(args))
}

/// True when an engine answers; false (after saying why) when the user opted out with
/// DROOT_FLEET_TEST_NO_DOCKER=1; panics with the reason otherwise.
fn engine_available(test: &str) -> bool {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let why = match Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("no Docker engine answers at {host}: {}", stderr(&o).trim()),
        Err(e) => format!("the docker CLI cannot be run ({e}); it is needed to build test images"),
    };
    if std::env::var("DROOT_FLEET_TEST_NO_DOCKER").as_deref() == Ok("1") {
        eprintln!("{test}: NOT RUN: {why} (DROOT_FLEET_TEST_NO_DOCKER=1)");
        return false;
    }
    panic!(
        "{test}: {why}. Start dockerd (or set DOCKER_HOST), or set DROOT_FLEET_TEST_NO_DOCKER=1 to skip engine tests"
    );
}

/// A uniquely named image, removed on drop.
struct TestImage(String);

impl TestImage {
    /// `docker import`s the tar of `rootfs` with the given `--change`s.
    fn import(rootfs: &Path, changes: &[&str]) -> Self {
        let tar = rootfs.with_extension("tar");
        tar_dir(rootfs, &tar);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("droot-fleet-test-{}-{nanos}:v1", std::process::id());
        let mut args = vec!["import".to_string()];
        for c in changes {
            args.push("--change".into());
            args.push(c.to_string());
        }
        args.push(tar.to_string_lossy().into_owned());
        args.push(name.clone());
        let o = output(Command::new("docker").args(&args));
        assert!(o.status.success(), "docker import: {}", stderr(&o));
        TestImage(name)
    }

    /// Containers (any state) made from this image.
    fn containers(&self) -> Vec<String> {
        let o = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("ancestor={}", self.0),
        ]);
        assert!(o.status.success(), "docker ps: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", &c]);
        }
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

fn helper_containers() -> usize {
    let o = docker(&["ps", "-a", "-q", "--filter", "label=droot-fleet.export"]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Paths Docker adds to every container (its "init layer"), absent from the image itself.
const ENGINE_INIT_PATHS: [&str; 7] = [
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
];

#[test]
fn engine_export_matches_docker_save_and_leaves_no_container() {
    let _serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if !engine_available("engine_export_matches_docker_save_and_leaves_no_container") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let image = TestImage::import(
        &rootfs,
        &["ENV FOO=bar=baz", "ENV PATH=/bin", "CMD [\"/bin/sh\"]"],
    );
    let helpers_before = helper_containers();

    let out = t.path().join("engine.tar");
    let o = run(&["export", &image.0, "-o", out.to_str().unwrap()]);
    assert_ok(&o);
    let engine = read_entries(&out);
    assert!(matches!(engine.get("bin/busybox"), Some(Got::File(_))));
    assert_eq!(engine.get("bin/sh"), Some(&Got::Sym("busybox".into())));
    assert_eq!(engine[".drootenv"], file("FOO=bar=baz\nPATH=/bin\n"));
    assert!(!engine.contains_key(".dockerenv"), "engine artifact leaked");
    assert!(
        image.containers().is_empty(),
        "helper container left behind"
    );
    assert_eq!(helper_containers(), helpers_before);

    // The same image through `docker save` and --from-archive: same content.
    let saved = t.path().join("saved.tar");
    let o = docker(&["save", &image.0, "-o", saved.to_str().unwrap()]);
    assert!(o.status.success(), "docker save: {}", stderr(&o));
    let flat = t.path().join("flat.tar");
    assert_ok(&run(&[
        "export",
        "--from-archive",
        saved.to_str().unwrap(),
        "-o",
        flat.to_str().unwrap(),
    ]));
    let archive = read_entries(&flat);
    for (path, got) in &archive {
        assert_eq!(
            engine.get(path),
            Some(got),
            "{path} differs between engine and archive export"
        );
    }
    let extra: Vec<&String> = engine
        .keys()
        .filter(|p| !archive.contains_key(*p) && !ENGINE_INIT_PATHS.contains(&p.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "engine export has paths the image lacks: {extra:?}"
    );
}

#[test]
fn engine_image_without_cmd_or_shell_exports() {
    let _serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if !engine_available("engine_image_without_cmd_or_shell_exports") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    std::fs::write(rootfs.join("app/hello.txt"), "hello").unwrap();
    let image = TestImage::import(&rootfs, &["ENV A=1"]);
    let o = run(&["export", &image.0, "--zstd"]);
    assert_ok(&o);
    let got = entries_of(&zstd::decode_all(o.stdout.as_slice()).unwrap());
    assert_eq!(got["app/hello.txt"], file("hello"));
    assert_eq!(got[".drootenv"], file("A=1\n"));
    assert!(!got.contains_key("bin/sh"));
    assert!(
        image.containers().is_empty(),
        "helper container left behind"
    );
}

#[test]
fn engine_errors_are_clear_and_leave_no_container() {
    let _serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if !engine_available("engine_errors_are_clear_and_leave_no_container") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let helpers_before = helper_containers();
    let out = t.path().join("out.tar");
    let o = run(&[
        "export",
        "droot-fleet-test-no-such-image:404",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("image droot-fleet-test-no-such-image:404 not found in the engine"),
        "{}",
        stderr(&o)
    );
    assert!(files_in(t.path()).is_empty(), "no output or partial file");
    assert_eq!(helper_containers(), helpers_before);

    // An image without any Env: refused with advice, nothing left behind.
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("f"), "x").unwrap();
    let image = TestImage::import(&rootfs, &[]);
    let o = run(&["export", &image.0, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no Env"), "{}", stderr(&o));
    assert!(!out.exists());
    assert!(image.containers().is_empty());

    // No engine at DOCKER_HOST.
    let o = output(
        cmd()
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .args(["export", "x:1", "-o", out.to_str().unwrap()]),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no Docker engine at unix:///nonexistent/docker.sock: is dockerd running? set DOCKER_HOST"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sigterm_during_engine_export_removes_the_container() {
    let _serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if !engine_available("sigterm_during_engine_export_removes_the_container") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let image = TestImage::import(&rootfs, &["ENV A=1"]);
    // stdout is a pipe nobody reads: the export blocks once the pipe buffer is full.
    let mut child = cmd()
        .args(["export", &image.0])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while image.containers().is_empty() {
        assert!(Instant::now() < deadline, "helper container never appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "export ended before it blocked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "export did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert!(
        image.containers().is_empty(),
        "helper container left behind after SIGTERM"
    );
}
