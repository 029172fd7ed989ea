//! `droot-fleet publish` end to end (issue 17), on real parts: Garage as S3, a file://
//! store, the Docker engine, and (as root) `droot-fleet agent` processes on 127.87.1.N with
//! busybox `httpd` jails.
//!
//! - A directory, an engine image and a `docker save` archive are published; the stored
//!   digest is the sha256 of the stored bytes, and the printed deploy line names it.
//! - `event deploy` without `--sha256` reads that digest and pins the event; the fleet
//!   deploys it. An object whose metadata lies about its bytes is refused by every node,
//!   and one with no digest is refused by the CLI before anything is sent.
//! - A published name is immutable unless `--force`; an interrupted upload leaves neither
//!   an object nor a multipart upload behind.
//!
//! Every wait is on a signal (an exit, a listed upload, a `--wait` verdict), bounded.

#[path = "common/agent.rs"]
mod agent_support;
mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agent_support::wait_for;
use common::garage::Garage;
use fleet::{Fleet, NodeSpec, text};
use serde_json::Value;
use sha2::Digest as _;

const HTTPD: &str = "exec httpd -f -p \"$ADDR\" -h /www\n";

fn publish(env: &[(&'static str, String)], args: &[&str]) -> Output {
    Command::new(common::bin())
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("publish")
        .args(args)
        .output()
        .expect("run publish")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", text(out)))
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The object's bytes and its `sha256` metadata.
fn object(g: &Garage, key: &str) -> (Vec<u8>, Option<String>) {
    let client = g.client();
    common::garage::rt().block_on(async {
        let got = (client.get_object().bucket(&g.bucket).key(key).send().await)
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        let meta = got.metadata().and_then(|m| m.get("sha256").cloned());
        let bytes = got.body.collect().await.unwrap().into_bytes().to_vec();
        (bytes, meta)
    })
}

/// Whether `key` exists, and how many multipart uploads are open in the bucket.
fn leftovers(g: &Garage, key: &str) -> (bool, usize) {
    let client = g.client();
    common::garage::rt().block_on(async {
        let head = client.head_object().bucket(&g.bucket).key(key).send().await;
        let uploads = (client
            .list_multipart_uploads()
            .bucket(&g.bucket)
            .send()
            .await)
            .unwrap_or_else(|e| panic!("list uploads: {e}"));
        (head.is_ok(), uploads.uploads().len())
    })
}

/// A directory, published twice to one S3 key and to file://: the stored digest matches
/// the bytes, the second publish is refused and changes nothing, `--force` replaces, and
/// the file:// sidecar passes `sha256sum -c`.
#[test]
fn a_published_name_is_immutable_and_carries_its_digest() {
    let g = Garage::start();
    g.put("warm-up", Vec::new());
    let t = common::tempdir();
    let src = t.path().join("rootfs");
    common::httpd_rootfs(&src, "v1", true, HTTPD);
    let s = src.to_str().unwrap();
    let url = format!("s3://{}/{{app}}/{{version}}.tar.zst", g.bucket);
    // `publish SRC URL --zstd --app web --version v1 EXTRA...` to Garage.
    let publish_v1 = |extra: &[&str]| {
        let args = [s, &url, "--zstd", "--app", "web", "--version", "v1"];
        publish(&g.env(), &[&args[..], extra].concat())
    };
    let first = json(&publish_v1(&["--format", "json"]));
    let key = "web/v1.tar.zst";
    let (bytes, meta) = object(&g, key);
    assert_eq!(first["url"], format!("s3://{}/{key}", g.bucket));
    assert_eq!(first["sha256"], sha_hex(&bytes), "{first}");
    assert_eq!(
        meta.as_deref(),
        first["sha256"].as_str(),
        "the metadata names it"
    );
    assert_eq!(first["bytes"], bytes.len());
    let line = first["deploy"].as_str().unwrap();
    assert!(
        line.starts_with("droot-fleet event deploy web v1 --url s3://")
            && line.ends_with(&format!("--sha256 {}", first["sha256"].as_str().unwrap())),
        "{line}"
    );

    std::fs::write(src.join("www/version"), "v1-changed").unwrap();
    let again = publish_v1(&[]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    assert_eq!(
        object(&g, key).0,
        bytes,
        "the refused publish changed nothing"
    );
    let forced = json(&publish_v1(&["--force", "--format", "json"]));
    let (replaced, meta) = object(&g, key);
    assert_ne!(replaced, bytes);
    assert_eq!(meta.as_deref(), forced["sha256"].as_str());
    assert_eq!(leftovers(&g, key), (true, 0), "no upload left open");

    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let file_url = format!("file://{}/web-v1.tar.gz", store.display());
    let local = json(&publish(&[], &[s, &file_url, "--gzip", "--format", "json"]));
    let art = std::fs::read(store.join("web-v1.tar.gz")).unwrap();
    assert_eq!(local["sha256"], sha_hex(&art));
    let check = common::output(
        Command::new("sha256sum")
            .arg("-c")
            .arg("web-v1.tar.gz.sha256")
            .current_dir(&store),
    );
    assert!(check.status.success(), "sha256sum -c: {}", text(&check));
    let refused = publish(&[], &[s, &file_url, "--gzip"]);
    assert!(
        text(&refused).contains("already exists"),
        "{}",
        text(&refused)
    );
    let names: Vec<_> = std::fs::read_dir(&store).unwrap().collect();
    assert_eq!(
        names.len(),
        2,
        "the artifact and its sidecar, no partial file"
    );
}

/// An object over the copy limit gets its digest by a copy in parts (S3 copies at most
/// 5 GiB at once; the limit is lowered here so a small object takes that path).
#[test]
fn a_large_object_gets_its_digest_by_a_copy_in_parts() {
    use droot_fleet::publish::{PublishOptions, publish as publish_lib};
    let g = Garage::start();
    g.put("warm-up", Vec::new());
    g.export_credentials();
    let t = common::tempdir();
    let src = t.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    std::fs::File::create(src.join("zeros"))
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let opts = PublishOptions {
        s3: droot_fleet::deploy::fetch::FetchOptions {
            s3_endpoint: Some(g.endpoint.clone()),
            s3_region: Some("garage".into()),
            ..Default::default()
        },
        copy_limit: Some(1 << 20),
        ..Default::default()
    };
    let key = "large/v1.tar";
    let url = format!("s3://{}/{key}", g.bucket);
    let source = droot_fleet::export::Source::Directory { path: src };
    let progress = std::sync::Arc::default();
    let done = publish_lib(&source, &url, &opts, &progress).unwrap();
    assert!(done.bytes > 3 << 20, "{}", done.bytes);
    let (bytes, meta) = object(&g, key);
    assert_eq!(bytes.len() as u64, done.bytes);
    assert_eq!(meta, Some(sha_hex(&bytes)));
    assert_eq!(hex::encode(done.sha256), sha_hex(&bytes));
    assert_eq!(leftovers(&g, key), (true, 0), "no upload left open");
}

/// A Garage, and a directory holding one file of `len` zeros (sparse on disk; published as
/// a plain tar, an object a little over `len`).
fn garage_and_zeros(len: u64) -> (Garage, common::TempDir, std::path::PathBuf) {
    let g = Garage::start();
    g.put("warm-up", Vec::new());
    let t = common::tempdir();
    let src = t.path().join("big");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("zeros")).unwrap();
    f.set_len(len).unwrap();
    (g, t, src)
}

/// SIGINT in the middle of an upload: exit 130, no object, no open multipart upload.
#[test]
fn an_interrupted_upload_leaves_nothing() {
    // Over a hundred parts.
    let (g, _t, src) = garage_and_zeros(2 << 30);
    let key = "big/v1.tar";
    let url = format!("s3://{}/{key}", g.bucket);
    let child = Command::new(common::bin())
        .envs(g.env())
        .args(["publish", src.to_str().unwrap(), &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "the multipart upload to start",
        || (leftovers(&g, key).1 == 1).then_some(()),
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("SIGINT"), "{}", text(&out));
    assert_eq!(
        leftovers(&g, key),
        (false, 0),
        "no object and no open upload"
    );
}

/// The fleet deploys what `publish` stored, pinned by the digest `event deploy` reads (S3
/// metadata, a file:// sidecar); a lying digest fails on every node and activates
/// nothing; no digest is refused up front.
#[test]
fn event_deploy_pins_the_published_digest() {
    let f = Fleet::start("87.1", vec![NodeSpec::default(); 2]);
    let g = f.garage.as_ref().unwrap();
    let url = |v: &str| format!("s3://{}/web/{v}.tar.gz", g.bucket);
    // Publishes a release serving `v` as web/v.tar.gz: its digest.
    let publish_release = |v: &str| {
        let src = f.base.join(format!("src-{v}"));
        common::httpd_rootfs(&src, v, true, HTTPD);
        let args = ["publish", src.to_str().unwrap(), &url(v), "--gzip"];
        let out = f.cli(1, &[&args[..], &["--format", "json"]].concat());
        json(&out)["sha256"].as_str().unwrap().to_string()
    };
    let sha1 = publish_release("v1");
    let key = f.key.display().to_string();
    let deploy = |version: &str| {
        let u = url(version);
        let args = [
            "event", "deploy", "web", version, "--url", &u, "--wait", "--format", "json",
        ];
        f.cli(
            1,
            &[&args[..], &["--timeout", "120s", "--signing-key", &key]].concat(),
        )
    };
    let out = deploy("v1");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("pinned to sha256 {sha1}")),
        "{}",
        text(&out)
    );
    f.wait_serving(1, "v1");
    f.wait_serving(2, "v1");

    // Someone with write access to the store swaps the bytes and keeps the digest.
    let sha2 = publish_release("v2");
    let evil = f.base.join("evil");
    common::httpd_rootfs(&evil, "evil", true, HTTPD);
    let evil_tar = f.base.join("evil.tar.gz");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&evil)
        .args(["-czf"])
        .arg(&evil_tar)
        .arg(".")
        .status();
    assert!(st.unwrap().success());
    common::garage::rt().block_on(async {
        let body = aws_sdk_s3::primitives::ByteStream::from(std::fs::read(&evil_tar).unwrap());
        (g.client()
            .put_object()
            .bucket(&g.bucket)
            .key("web/v2.tar.gz"))
        .metadata("sha256", &sha2)
        .body(body)
        .send()
        .await
        .unwrap();
    });
    let out = deploy("v2");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("sha256 mismatch"), "{}", text(&out));
    f.wait_serving(1, "v1");
    f.wait_serving(2, "v1");

    // A plain upload carries no digest: refused before anything is signed or sent.
    g.put("web/v3.tar.gz", std::fs::read(&evil_tar).unwrap());
    let out = deploy("v3");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("carries no published digest"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--unpinned"), "{}", text(&out));
    assert!(!text(&out).contains("sent as event"), "{}", text(&out));

    // file:// too: the digest comes from the sidecar; a swapped file fails on every node.
    let store = f.base.join("arts"); // the agents' [deploy] file_roots
    std::fs::create_dir_all(&store).unwrap();
    let publish_file = |version: &str| {
        let src = f.base.join(format!("src-{version}"));
        common::httpd_rootfs(&src, version, true, HTTPD);
        let u = format!("file://{}/web-{version}.tar.gz", store.display());
        let published = json(&f.cli(
            1,
            &[
                "publish",
                src.to_str().unwrap(),
                &u,
                "--gzip",
                "--format",
                "json",
            ],
        ));
        (published["sha256"].as_str().unwrap().to_string(), u)
    };
    let deploy_from = |version: &str, u: &str| {
        let args = [
            "event", "deploy", "web", version, "--url", u, "--wait", "--format", "json",
        ];
        let rest = ["--timeout", "120s", "--signing-key", &key];
        f.cli(1, &[&args[..], &rest].concat())
    };
    let (sha4, url4) = publish_file("v4");
    std::fs::copy(&evil_tar, store.join("web-v4.tar.gz")).unwrap();
    let out = deploy_from("v4", &url4);
    let pinned = |sha: &str, out: &Output| text(out).contains(&format!("pinned to sha256 {sha}"));
    assert!(pinned(&sha4, &out), "{}", text(&out));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("sha256 mismatch"), "{}", text(&out));
    f.wait_serving(1, "v1");
    let (sha5, url5) = publish_file("v5");
    let out = deploy_from("v5", &url5);
    assert!(out.status.success(), "{}", text(&out));
    assert!(pinned(&sha5, &out), "{}", text(&out));
    f.wait_serving(1, "v5");
    f.wait_serving(2, "v5");
}

/// An engine image and its `docker save` publish the same files, to file:// and to S3;
/// each digest is its artifact's.
#[test]
fn engine_images_and_saved_archives_publish() {
    if !common::docker_engine_available("engine_images_and_saved_archives_publish") {
        return;
    }
    let t = common::tempdir();
    let src = t.path().join("rootfs");
    common::httpd_rootfs(&src, "v1", true, HTTPD);
    let tar = t.path().join("rootfs.tar");
    common::tar_dir(&src, &tar);
    let name = format!("droot-fleet-publish-test-{}:v1", std::process::id());
    let docker = |args: &[&str]| common::output(Command::new("docker").args(args));
    let o = docker(&[
        "import",
        "--change",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        &name,
    ]);
    assert!(o.status.success(), "docker import: {}", text(&o));
    let saved = t.path().join("saved.tar");
    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let g = Garage::start();
    g.put("warm-up", Vec::new());
    // SOURCE to file://STORE/FILE and to s3://BUCKET/FILE: the stored bytes of both, each
    // with the digest publish printed and (S3) stored beside it.
    let publish_both = |source: &str, file: &str| {
        let local = format!("file://{}/{file}", store.display());
        let got = json(&publish(&[], &[source, &local, "--format", "json"]));
        let bytes = std::fs::read(store.join(file)).unwrap();
        assert_eq!(got["sha256"], sha_hex(&bytes), "{file}");
        let remote = format!("s3://{}/{file}", g.bucket);
        let got = json(&publish(&g.env(), &[source, &remote, "--format", "json"]));
        let (stored, meta) = object(&g, file);
        assert_eq!(got["sha256"], sha_hex(&stored), "{file} in S3");
        assert_eq!(meta.as_deref(), got["sha256"].as_str(), "{file} metadata");
        let s3_copy = t.path().join(format!("s3-{file}"));
        std::fs::write(&s3_copy, stored).unwrap();
        (entries(&store.join(file)), entries(&s3_copy))
    };
    let from_engine = publish_both(&name, "engine.tar");
    let o = docker(&["save", &name, "-o", saved.to_str().unwrap()]);
    let _ = docker(&["rmi", "-f", &name]);
    assert!(o.status.success(), "docker save: {}", text(&o));
    let from_archive = publish_both(saved.to_str().unwrap(), "saved.tar");
    let mut listed = Vec::new();
    for (local, remote) in [from_engine, from_archive] {
        assert_eq!(local, remote, "S3 and file:// got other files");
        listed.push(local);
    }
    assert!(
        listed[0].contains(&"www/version".to_string()),
        "{:?}",
        listed[0]
    );
    for path in &listed[1] {
        assert!(
            listed[0].contains(path),
            "{path} only in the archive's artifact"
        );
    }
}

/// `publish` writes gzip as independent members that say their length and zstd as
/// independent frames after a marker (the parallel layouts): GNU tar (through gzip and
/// zstd) reads each artifact whole, and `droot-fleet deploy` (decoding on every core)
/// unpacks the same tree.
#[test]
fn compressed_artifacts_are_in_parallel_layouts_that_any_decoder_reads() {
    let t = common::tempdir();
    let src = t.path().join("rootfs");
    common::httpd_rootfs(&src, "v1", true, HTTPD);
    let mut x = 0x9e37_79b9_u32;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(src.join("www/big"), &big).unwrap();
    for (flag, file, tar_flag) in [
        ("--gzip", "a.tar.gz", "-z"),
        ("--zstd", "a.tar.zst", "--zstd"),
    ] {
        let artifact = t.path().join(file);
        let url = format!("file://{}", artifact.display());
        json(&publish(
            &[],
            &[src.to_str().unwrap(), &url, flag, "--format", "json"],
        ));
        let bytes = std::fs::read(&artifact).unwrap();
        if flag == "--gzip" {
            let (mut at, mut members) = (0, 0);
            while at < bytes.len() {
                at += droot_fleet::artifact::gzip_members::member_len(&bytes[at..])
                    .unwrap_or_else(|| panic!("no member header at byte {at}"));
                members += 1;
            }
            assert!(members >= 3, "{members} member(s) for over 3 MiB");
        } else {
            assert!(droot_fleet::artifact::zstd_frames::is_marked(&bytes));
        }

        let by_tar = t.path().join(format!("by-tar-{file}"));
        std::fs::create_dir(&by_tar).unwrap();
        let mut tar = Command::new("tar");
        tar.arg(tar_flag)
            .arg("-xf")
            .arg(&artifact)
            .arg("-C")
            .arg(&by_tar);
        let o = common::output(&mut tar);
        assert!(o.status.success(), "tar {tar_flag} -xf: {}", text(&o));
        assert!(
            std::fs::read(by_tar.join("www/big")).unwrap() == big,
            "{file}"
        );

        let root = t.path().join(format!("app-{file}"));
        let o = common::output(
            Command::new(common::bin())
                .args(["deploy", "--root"])
                .arg(&root)
                .args(["--version", "v1"])
                .arg(&artifact),
        );
        assert!(o.status.success(), "deploy: {}", text(&o));
        assert!(
            std::fs::read(root.join("current/www/big")).unwrap() == big,
            "{file}"
        );
    }
    let (root, by_tar) = (
        t.path().join("app-a.tar.zst"),
        t.path().join("by-tar-a.tar.gz"),
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/www/version")).unwrap(),
        std::fs::read_to_string(by_tar.join("www/version")).unwrap()
    );
}

/// The paths in a tar.
fn entries(tar: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// A gigabyte published to S3 from a terminal and deployed back from it: each progress
/// line is drawn, and neither process holds more than a bounded slice of the artifact (the
/// upload streams parts, the fetch ranges; no temp file, no whole object in memory).
#[test]
fn a_gigabyte_publishes_in_bounded_memory_with_progress_on_a_terminal() {
    let (g, t, src) = garage_and_zeros(1 << 30);
    let url = format!("s3://{}/big/v1.tar", g.bucket);
    let (drawn, max_rss_kib) = on_a_terminal(
        &g,
        &t.path().join("t1"),
        &format!("publish {} {url}", src.display()),
    );
    assert!(
        drawn.contains(&format!("\r\x1b[2Kpublishing {url}: ")) && drawn.contains("MiB/s"),
        "no progress line on the terminal: {drawn:?}"
    );
    assert!(drawn.contains("droot-fleet event deploy"), "{drawn}");
    let size = common::garage::rt().block_on(async {
        let head = g.client().head_object().bucket(&g.bucket).key("big/v1.tar");
        head.send().await.unwrap().content_length().unwrap()
    });
    assert!(size > 1 << 30, "{size}");
    // Measured 99 MiB here, the same for artifacts of 256 MiB and 3 GiB.
    assert!(
        max_rss_kib < 160 * 1024,
        "publish peaked at {max_rss_kib} KiB for a 1 GiB artifact"
    );

    // Back from the store: ranged GETs in order, the fetch drawn, memory bounded by the
    // ranges in flight, not by the artifact.
    let root = t.path().join("app");
    let deploy = format!("deploy --root {} --version v1 {url}", root.display());
    let (drawn, max_rss_kib) = on_a_terminal(&g, &t.path().join("t2"), &deploy);
    assert!(
        drawn.contains(&format!("\r\x1b[2Kfetching {url}: ")) && drawn.contains("MiB/s"),
        "no progress line on the terminal: {drawn:?}"
    );
    let len = std::fs::metadata(root.join("current/zeros")).map(|m| m.len());
    assert_eq!(len.ok(), Some(1 << 30), "{drawn}");
    assert!(
        max_rss_kib < 160 * 1024,
        "deploy peaked at {max_rss_kib} KiB for a 1 GiB artifact"
    );
}

/// `droot-fleet ARGS` with a terminal (`script`, which records what it drew in
/// `typescript`) and `g`'s credentials; it must succeed: what it drew, and the peak memory
/// of it and what it ran, in KiB.
fn on_a_terminal(g: &Garage, typescript: &Path, args: &str) -> (String, i64) {
    let command = format!("{} {args}", common::bin().display());
    let child = Command::new("script")
        .envs(g.env())
        .env_remove("RUST_LOG")
        .args(["-q", "-f", "-e", "-c", &command])
        .arg(typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("run script (util-linux)");
    let (status, max_rss_kib) = wait_with_max_rss(child);
    let drawn = String::from_utf8_lossy(&std::fs::read(typescript).unwrap()).into_owned();
    assert_eq!(status, 0, "{args}: {drawn}");
    (drawn, max_rss_kib)
}

/// Waits for `child` (and what it ran): its exit code and the peak resident memory of
/// it and its descendants, in KiB (`wait4`'s rusage).
fn wait_with_max_rss(child: std::process::Child) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are valid.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    assert!(libc::WIFEXITED(status), "killed: {status}");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}
