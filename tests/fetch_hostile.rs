//! `droot-fleet deploy URL` against a hostile artifact server and hostile archives
//! (issue 15, "deploys that end" and "disks that do not fill"): an endless body after the
//! archive, a body after the tar end, a Content-Length that lies either way, a Garage
//! object with junk after the archive, decompression bombs, and a garbage artifact whose
//! bytes must not appear in the error.
//!
//! Every deploy runs under a bound: a regression hangs the test for that long, then fails it.

mod common;
#[path = "common/hostile_http.rs"]
mod hostile_http;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::archive::{Archive, current_target, ok, simple, snapshot_without};
use common::cmd;
use common::garage::Garage;
use hostile_http::{Reply, serve};
use sha2::{Digest, Sha256};

/// How long any one deploy here may take before the test calls it hung.
const BOUND: Duration = Duration::from_secs(90);

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `deploy --root ROOT EXTRA... URL`, killed (and the test failed) after [`BOUND`].
fn deploy_url(root: &Path, url: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = cmd();
    c.arg("deploy").arg("--root").arg(root).args(extra).arg(url);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + BOUND;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("deploy of {url} still running after {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn failed_with(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "accepted: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// An app root with release `good` deployed, and what must stay as it is.
struct Root {
    _t: tempfile::TempDir,
    root: PathBuf,
    before: Vec<String>,
}

impl Root {
    fn new() -> Root {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("app");
        let good = simple("good").write(&t.path().join("good.tar"));
        ok(&common::archive::deploy(
            &root,
            &good,
            &["--version", "good"],
        ));
        let before = snapshot_without(&root, &[".droot-fleet"]);
        Root {
            _t: t,
            root,
            before,
        }
    }

    /// Nothing published, `current` as it was, no staging left.
    fn unchanged(&self, what: &str) {
        assert_eq!(
            snapshot_without(&self.root, &[".droot-fleet"]),
            self.before,
            "{what}: the root changed"
        );
        assert_eq!(current_target(&self.root), "releases/good", "{what}");
        let staging = self.root.join(".droot-fleet/staging");
        let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
        assert!(left.is_empty(), "{what}: staging left: {left:?}");
    }
}

/// An empty tar: the two zero blocks of the end marker.
fn empty_tar() -> Vec<u8> {
    vec![0u8; 1024]
}

#[test]
fn an_endless_body_after_an_empty_tar_is_cut_off_with_or_without_sha256() {
    let r = Root::new();
    let server = serve(Reply::Endless { body: empty_tar() });
    for extra in [
        vec!["--version", "v2"],
        vec!["--version", "v2", "--sha256", &*"ab".repeat(32)],
    ] {
        let out = deploy_url(&r.root, &server.url, &extra, &[]);
        failed_with(&out, &["follow the end of the archive", "artifact.tar"]);
        r.unchanged("endless body");
        // The fetch hung up: it read a bounded amount, not the endless rest.
        let written = server.ended(Duration::from_secs(30)).expect("hung up");
        assert!(
            written < 64 << 20,
            "read {written} bytes of an endless body"
        );
    }
}

#[test]
fn a_body_after_the_tar_end_is_capped_and_a_short_padding_is_not() {
    let r = Root::new();
    let mut body = simple("v2").bytes();
    body.extend(vec![0x42; 24 << 20]);
    let server = serve(Reply::Body {
        length: Some(body.len() as u64),
        body,
    });
    let out = deploy_url(&r.root, &server.url, &["--version", "v2"], &[]);
    failed_with(
        &out,
        &["more than 1048576 bytes follow the end of the archive"],
    );
    r.unchanged("24 MiB after the tar end");

    // A tar padded to a large record (here 256 KiB of zeros after its end): deployed, and
    // the digest covers the padding.
    let mut padded = simple("v3").bytes();
    padded.extend(vec![0u8; 256 << 10]);
    let sha = sha_hex(&padded);
    let server = serve(Reply::Body {
        length: Some(padded.len() as u64),
        body: padded,
    });
    ok(&deploy_url(
        &r.root,
        &server.url,
        &["--version", "v3", "--sha256", &sha],
        &[],
    ));
    assert_eq!(current_target(&r.root), "releases/v3");
}

#[test]
fn a_content_length_that_lies_either_way_is_caught() {
    let r = Root::new();
    let tar = simple("v2").bytes();
    // Announces more than it sends, then hangs up: the transfer is incomplete.
    let server = serve(Reply::Body {
        length: Some(tar.len() as u64 + 4096),
        body: tar.clone(),
    });
    let out = deploy_url(&r.root, &server.url, &["--version", "v2"], &[]);
    failed_with(&out, &["artifact.tar"]);
    r.unchanged("a body shorter than announced");

    // Announces less than it sends: no byte past the announced length is taken, so the
    // digest of everything sent does not match, and the count is the announced one.
    let mut long = tar.clone();
    long.extend(vec![0x42; 4 << 20]);
    let server = serve(Reply::Body {
        length: Some(tar.len() as u64),
        body: long.clone(),
    });
    let out = deploy_url(
        &r.root,
        &server.url,
        &["--version", "v2", "--sha256", &sha_hex(&long)],
        &[],
    );
    failed_with(
        &out,
        &["sha256 mismatch", &format!("({} bytes)", tar.len())],
    );
    r.unchanged("a body longer than announced");
    let out = deploy_url(
        &r.root,
        &server.url,
        &["--version", "v2", "--sha256", &sha_hex(&tar)],
        &[],
    );
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("({} bytes)", tar.len())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_garage_object_with_junk_after_the_archive_is_refused() {
    let g = Garage::start();
    let r = Root::new();
    let mut junk = gz(&simple("v2").bytes());
    junk.extend(vec![0x42; 16 << 20]);
    g.put("web/v2.tar.gz", junk.clone());
    let url = format!("s3://{}/web/v2.tar.gz", g.bucket);
    for extra in [
        vec!["--version", "v2"],
        vec!["--version", "v2", "--sha256", &*sha_hex(&junk)],
    ] {
        let out = deploy_url(&r.root, &url, &extra, &g.env());
        failed_with(&out, &["follow the end of the archive", "s3://"]);
        r.unchanged("a Garage object with 16 MiB of junk after the archive");
    }
}

/// A tar holding one file of `size` zero bytes.
fn zeros_tar(size: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "zeros", std::io::repeat(0).take(size))
        .unwrap();
    b.into_inner().unwrap()
}

use std::io::Read as _;

/// `bytes` in the parallel gzip layout `publish` writes (inflated on every core).
fn gz_members(bytes: &[u8]) -> Vec<u8> {
    let mut w =
        droot_fleet::artifact::gzip_members::writer(Vec::new(), flate2::Compression::best())
            .unwrap();
    std::io::Write::write_all(&mut w, bytes).unwrap();
    w.finish().unwrap()
}

/// `bytes` in the parallel zstd layout `publish` writes.
fn zst_frames(bytes: &[u8]) -> Vec<u8> {
    let mut w = droot_fleet::artifact::zstd_frames::writer(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut w, bytes).unwrap();
    w.finish().unwrap()
}

#[test]
fn gzip_and_zstd_bombs_are_refused_by_the_ratio_cap_with_nothing_left() {
    let r = Root::new();
    let t = tempfile::tempdir().unwrap();
    let bomb = zeros_tar(160 << 20);
    for (name, bytes) in [
        ("bomb.tar.gz", gz(&bomb)),
        ("bomb-members.tar.gz", gz_members(&bomb)),
        ("bomb.tar.zst", zstd::encode_all(&bomb[..], 3).unwrap()),
        ("bomb-frames.tar.zst", zst_frames(&bomb)),
    ] {
        assert!(bytes.len() < 1 << 20, "{name}: {} bytes", bytes.len());
        let f = t.path().join(name);
        std::fs::write(&f, &bytes).unwrap();
        let url = format!("file://{}", f.display());
        let err = failed_with(
            &deploy_url(&r.root, &url, &["--version", "bomb"], &[]),
            &["expands more than 200:1", "--max-ratio"],
        );
        assert!(!err.contains("--max-bytes"), "{err}");
        r.unchanged(name);
    }
    // Below the floor a zero-filled file is fine whatever its ratio.
    let small = t.path().join("small.tar.gz");
    std::fs::write(&small, gz(&zeros_tar(32 << 20))).unwrap();
    ok(&deploy_url(
        &r.root,
        &format!("file://{}", small.display()),
        &["--version", "small"],
        &[],
    ));
    assert_eq!(current_target(&r.root), "releases/small");
}

#[test]
fn a_byte_limit_error_names_the_flag_only_in_the_cli() {
    let r = Root::new();
    let t = tempfile::tempdir().unwrap();
    let f = Archive::new()
        .file("a", &[1u8; 3000])
        .write(&t.path().join("big.tar"));
    let url = format!("file://{}", f.display());
    failed_with(
        &deploy_url(&r.root, &url, &["--max-bytes", "1000"], &[]),
        &["size limit of 1000 bytes", "raise it with --max-bytes"],
    );
    r.unchanged("over --max-bytes");
}

/// Regression (issue 15): a signed `file:///etc/shadow` printed its first bytes
/// (`72 6f 6f 74 3a 2a ...`) in every outcome.
#[test]
fn an_error_about_a_garbage_artifact_contains_none_of_its_bytes() {
    let r = Root::new();
    let t = tempfile::tempdir().unwrap();
    let secret = b"root:*:19000:0:99999:7:::\nsvc:$6$pepper$hash:19000:0:99999:7:::\n";
    let f = t.path().join("shadow");
    std::fs::write(&f, secret).unwrap();
    let server = serve(Reply::Body {
        body: secret.to_vec(),
        length: Some(secret.len() as u64),
    });
    for url in [format!("file://{}", f.display()), server.url.clone()] {
        let err = failed_with(&deploy_url(&r.root, &url, &[], &[]), &["not a tar"]);
        let hex: Vec<String> = secret[..6].iter().map(|b| format!("{b:02x}")).collect();
        for needle in ["root:", "svc", "pepper", &hex.join(" "), &hex.join("")] {
            assert!(!err.contains(needle), "{url}: {needle:?} in {err}");
        }
        r.unchanged("garbage artifact");
    }
}
