//! `droot-fleet export`, run as the real binary.
//!
//! Archive tests build `docker save` and OCI-layout tarballs here with `tar::Builder` (layers
//! with whiteouts, an opaque dir, a shadowed hardlink target, gzip and zstd layers) and check
//! the exact flattened result (builders in `export_support/`). Engine tests use the real Docker engine at DOCKER_HOST (or
//! /var/run/docker.sock) with images made by `docker import`; without an engine they fail
//! with the reason unless DROOT_FLEET_TEST_NO_DOCKER=1 is set, in which case they say so and
//! return.

mod common;
#[path = "export_support/mod.rs"]
mod export_support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, cmd, output};
use export_support::archives::*;
use export_support::engine::*;

// ---------------------------------------------------------------- archive tests

#[test]
fn legacy_docker_save_is_flattened_with_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    legacy_archive(&archive, &[(&["app:1"], test_layers(), &ENV)]);
    let out = t.path().join("out.tar");
    let o = export_to(&archive, &out);
    assert_ok(&o);
    check_flattened(&read_entries(&out));
    assert_eq!(
        files_in(t.path()),
        vec!["out.tar", "save.tar"],
        "no temp file left"
    );
}

#[test]
fn an_archive_ending_with_a_global_pax_header_is_flattened() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    legacy_archive(&archive, &[(&["app:1"], test_layers(), &ENV)]);
    // What GNU tar and bsdtar accept: a global header, then the end of the archive.
    let mut bytes = std::fs::read(&archive).unwrap();
    while bytes.len() >= 512 && bytes[bytes.len() - 512..].iter().all(|&b| b == 0) {
        bytes.truncate(bytes.len() - 512);
    }
    let record = b"23 comment=built by ci\n";
    let mut h = tar::Header::new_ustar();
    h.set_path("pax_global_header").unwrap();
    h.set_entry_type(tar::EntryType::XGlobalHeader);
    h.set_size(record.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(record);
    bytes.resize(bytes.len().next_multiple_of(512) + 1024, 0);
    std::fs::write(&archive, &bytes).unwrap();
    let out = t.path().join("out.tar");
    let o = export_to(&archive, &out);
    assert_ok(&o);
    check_flattened(&read_entries(&out));
}

#[test]
fn oci_layout_with_nested_index_and_compressed_layers() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("oci.tar");
    oci_archive(&archive);
    let out = t.path().join("out.tar");
    let o = export_to(&archive, &out);
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
    // Frames after a skippable marker frame (the parallel layout): still plain zstd.
    assert!(droot_fleet::artifact::zstd_frames::is_marked(&zs.stdout));
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
    let o = export_to(archive, &out);
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

/// Changes the first `from` in the file at `path` to `to` (same length).
fn alter(path: &Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = (bytes.windows(from.len()))
        .position(|w| w == from)
        .expect("the bytes to alter");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn layers_altered_after_the_build_are_refused_by_their_digest() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // An OCI layout: the stored blob no longer has the digest its descriptor names.
    let oci = d.join("oci.tar");
    oci_archive(&oci);
    alter(&oci, b"tool v1", b"tool v9");
    assert_bad_archive(d, &oci, "layer 0 (blobs/sha256/");
    assert_bad_archive(d, &oci, "corrupt or was altered");
    // A docker save: the layer tar no longer has the digest its config lists.
    let saved = d.join("save.tar");
    legacy_archive(&saved, &[(&["app:1"], test_layers(), &ENV)]);
    alter(&saved, b"tool v1", b"tool v9");
    assert_bad_archive(d, &saved, "layer 0 (");
    // A config that lists no layer digests: nothing to verify the layers by.
    let l = layer(&[E::File("a", "a")]);
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    let unlisted = d.join("unlisted.tar");
    write_archive(
        &unlisted,
        &[
            ("manifest.json".into(), manifest.to_vec()),
            ("c.json".into(), br#"{"config":{}}"#.to_vec()),
            ("l/layer.tar".into(), l),
        ],
    );
    assert_bad_archive(d, &unlisted, "lists 0 layer digests");
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
            ("c.json".into(), config_json(&ENV, &[layer(&[])])),
        ],
    );
    assert_bad_archive(d, &p("nolayer.tar"), "lacks gone/layer.tar");

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

    // A 2 MiB PAX header in a tiny zstd layer hits the extension-header cap unread.
    let huge_pax = common::archive::Archive::new()
        .ext(
            b"PaxHeaders/big",
            b'x',
            &common::archive::pax_record("comment", &vec![b'a'; 2 << 20]),
        )
        .file("a", b"x")
        .bytes();
    let small = zstd_bytes(&huge_pax);
    assert!(small.len() < 10_000);
    legacy_archive(&p("bigpax.tar"), &[(&["x:1"], vec![small], &ENV)]);
    assert_bad_archive(d, &p("bigpax.tar"), "for extension headers");

    // A missing archive.
    assert_bad_archive(d, &p("does-not-exist.tar"), "cannot read");
}

#[test]
fn config_without_env_gives_an_empty_drootenv() {
    // `FROM scratch` images and plain `docker import`s have no Env at all.
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("noenv.tar");
    let l = layer(&[E::File("a", "a")]);
    let cfg = format!(
        r#"{{"config":{{"Cmd":["/app"]}},"rootfs":{{"diff_ids":["{}"]}}}}"#,
        digest(&l)
    );
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    write_archive(
        &archive,
        &[
            ("manifest.json".into(), manifest.to_vec()),
            ("c.json".into(), cfg.into_bytes()),
            ("l/layer.tar".into(), l),
        ],
    );
    let out = t.path().join("out.tar");
    let o = export_to(&archive, &out);
    assert_ok(&o);
    let got = read_entries(&out);
    assert_eq!(got.get(".drootenv"), Some(&file("")), "{got:?}");
    assert_eq!(got.get("a"), Some(&file("a")), "{got:?}");
}

/// Issue 9: `run` masks /dev, and deploy refuses device nodes; export leaves those under
/// /dev/ out, says how many, and keeps everything else as it came.
#[test]
fn devices_under_dev_are_left_out_and_counted() {
    use tar::EntryType::{Block, Char, Fifo};
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    let layers = vec![
        layer(&[
            E::Dir("./dev/"),
            E::Node("./dev/null", Char),
            E::Node("./dev/sda", Block),
            E::Sym("./dev/fd", "/proc/self/fd"),
            E::Node("./srv/null", Char),
        ]),
        layer(&[
            E::Node("./dev/initctl", Fifo),
            E::Node("./devices/pipe", Fifo),
        ]),
    ];
    legacy_archive(&archive, &[(&["dev:1"], layers, &ENV)]);
    let out = t.path().join("out.tar");
    let o = export_to(&archive, &out);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("left out 3 device nodes/FIFOs under /dev/"),
        "{}",
        stderr(&o)
    );
    let got = read_entries(&out);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [".drootenv", "dev", "dev/fd", "devices/pipe", "srv/null"]
    );
    assert_eq!(got["srv/null"], Got::Node(Char));
    assert_eq!(got["devices/pipe"], Got::Node(Fifo));
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

#[test]
fn engine_export_matches_docker_save_and_leaves_no_container() {
    let Some(_serial) = engine_test("engine_export_matches_docker_save_and_leaves_no_container")
    else {
        return;
    };
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
    let Some(_serial) = engine_test("engine_image_without_cmd_or_shell_exports") else {
        return;
    };
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
    let Some(_serial) = engine_test("engine_errors_are_clear_and_leave_no_container") else {
        return;
    };
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

    // An image without any Env exports with an empty /.drootenv, nothing left behind.
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("f"), "x").unwrap();
    let image = TestImage::import(&rootfs, &[]);
    let o = run(&["export", &image.0, "-o", out.to_str().unwrap()]);
    assert_ok(&o);
    assert_eq!(read_entries(&out).get(".drootenv"), Some(&file("")));
    std::fs::remove_file(&out).unwrap();
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
    let Some(_serial) = engine_test("sigterm_during_engine_export_removes_the_container") else {
        return;
    };
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

// ---------------------------------------------------------------- byte limit (issue 15)

/// Runs `export ARGS`, failing the test if it has not ended within a minute.
fn export_bounded(args: &[&str]) -> std::process::Output {
    let mut child = cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("export {args:?} still writing after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Regression (issue 15): a small hostile `docker save` layer that declares a huge sparse
/// file made export write without end (the output holds sparse files whole).
#[test]
fn export_of_a_hostile_layer_with_a_huge_sparse_file_stops_at_the_limit() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("save.tar");
    let hostile = common::archive::Archive::new()
        .dir("./")
        .file("./small", b"ok")
        .pax_sparse("./huge", "0,4", 1 << 40, b"data")
        .bytes();
    assert!(hostile.len() < 10_000);
    legacy_archive(&archive, &[(&["evil:1"], vec![hostile], &ENV)]);
    let out = t.path().join("out.tar");
    let before = files_in(t.path());
    for extra in [&[][..], &["--max-bytes", "1000000"][..]] {
        let mut args = vec![
            "export",
            "--from-archive",
            archive.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = export_bounded(&args);
        assert!(!o.status.success(), "exported: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("add up to more than"), "{err}");
        assert!(err.contains("--max-bytes"), "{err}");
        assert_eq!(
            files_in(t.path()),
            before,
            "an output or temp file was left"
        );
    }
    // An ordinary image over a small limit is refused too; under it, exported.
    let plain = t.path().join("plain.tar");
    legacy_archive(&plain, &[(&["app:1"], test_layers(), &ENV)]);
    let base = [
        "export",
        "--from-archive",
        plain.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let o = export_bounded(&[&base[..], &["--max-bytes", "10"]].concat());
    assert!(stderr(&o).contains("more than 10 bytes"), "{}", stderr(&o));
    assert!(!out.exists());
    assert_ok(&export_bounded(
        &[&base[..], &["--max-bytes", "100000"]].concat(),
    ));
    check_flattened(&read_entries(&out));
}
