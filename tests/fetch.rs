//! `droot-fleet deploy URL`: artifacts from a real S3 store (a private Garage), from
//! `http://` and `file://`, streamed into the unpacker and checked against `--sha256`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::archive::{current_target, ok, simple, snapshot};
use common::garage::Garage;
use common::{cmd, output};
use sha2::{Digest, Sha256};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn deploy_url(root: &Path, url: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = cmd();
    c.arg("deploy").arg("--root").arg(root).args(extra).arg(url);
    for (k, v) in env {
        c.env(k, v);
    }
    output(&mut c)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn failed_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure, got success: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

fn staging_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join(".droot-fleet/staging"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn s3_deploys_tar_gz_and_tar_zst_from_garage() {
    let g = Garage::start();
    let tar1 = simple("v1").bytes();
    let tar2 = simple("v2").bytes();
    let v1 = gz(&tar1);
    let v2 = zstd::encode_all(&tar2[..], 3).unwrap();
    g.put("web/v1.tar.gz", v1.clone());
    g.put("web/v2.tar.zst", v2.clone());
    let t = common::tempdir();
    let root = t.path().join("app");
    let env = g.env();
    let u1 = format!("s3://{}/web/v1.tar.gz", g.bucket);
    let out = deploy_url(&root, &u1, &["--version", "v1"], &env);
    ok(&out);
    assert_eq!(read(&root, "current/bin/app"), "v1");
    assert!(stderr(&out).contains(&sha_hex(&v1)), "{}", stderr(&out));
    let u2 = format!("s3://{}/web/v2.tar.zst", g.bucket);
    let sha = sha_hex(&v2);
    ok(&deploy_url(
        &root,
        &u2,
        &["--version", "v2", "--sha256", &sha],
        &env,
    ));
    assert_eq!(current_target(&root), "releases/v2");
    assert_eq!(read(&root, "current/bin/app"), "v2");
    assert!(staging_is_empty(&root));
}

/// An object uploaded in parts carries a part-level checksum that the SDK cannot check
/// against the whole body: the deploy says nothing about it (the artifact's sha256 is what
/// vouches for it), at the default log level.
#[test]
fn an_object_uploaded_in_parts_deploys_without_sdk_noise() {
    let g = Garage::start();
    let tar = simple("v1").file("big", &vec![7u8; 12 << 20]).bytes();
    g.put_in_parts("web/v1.tar", &tar, 5 << 20);
    let t = common::tempdir();
    let root = t.path().join("app");
    let url = format!("s3://{}/web/v1.tar", g.bucket);
    let out = deploy_url(
        &root,
        &url,
        &["--version", "v1", "--sha256", &sha_hex(&tar)],
        &g.env(),
    );
    ok(&out);
    assert_eq!(read(&root, "current/bin/app"), "v1");
    let err = stderr(&out);
    assert!(!err.contains("WARN") && !err.contains("checksum"), "{err}");
}

#[test]
fn s3_wrong_sha256_publishes_nothing() {
    let g = Garage::start();
    let v1 = gz(&simple("v1").bytes());
    // Trailing bytes after the gzip member: the digest covers them too.
    let mut v2 = gz(&simple("v2").bytes());
    g.put("web/v1.tar.gz", v1);
    g.put("web/v2.tar.gz", v2.clone());
    let t = common::tempdir();
    let root = t.path().join("app");
    let env = g.env();
    ok(&deploy_url(
        &root,
        &format!("s3://{}/web/v1.tar.gz", g.bucket),
        &["--version", "v1"],
        &env,
    ));
    let before = snapshot(&root.join("releases"));
    let cur_before = std::fs::symlink_metadata(root.join("current")).unwrap();
    let good = sha_hex(&v2);
    v2.extend_from_slice(b"appended later");
    g.put("web/v2.tar.gz", v2.clone());
    let actual = sha_hex(&v2);
    let out = deploy_url(
        &root,
        &format!("s3://{}/web/v2.tar.gz", g.bucket),
        &["--version", "v2", "--sha256", &good],
        &env,
    );
    failed_with(
        &out,
        &["sha256 mismatch", &good, &actual, "current is unchanged"],
    );
    assert_eq!(current_target(&root), "releases/v1");
    let cur_after = std::fs::symlink_metadata(root.join("current")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&cur_before),
        std::os::unix::fs::MetadataExt::ino(&cur_after),
        "current was not replaced"
    );
    assert_eq!(snapshot(&root.join("releases")), before, "no release v2");
    assert!(!root.join("releases/v2").exists());
    assert!(staging_is_empty(&root), "staging removed");
    // The right digest of the same object deploys it.
    ok(&deploy_url(
        &root,
        &format!("s3://{}/web/v2.tar.gz", g.bucket),
        &["--version", "v2", "--sha256", &actual],
        &env,
    ));
    assert_eq!(read(&root, "current/bin/app"), "v2");
}

#[test]
fn s3_errors_name_the_problem() {
    let g = Garage::start();
    g.put("web/v1.tar.gz", gz(&simple("v1").bytes()));
    let t = common::tempdir();
    let root = t.path().join("app");
    let env = g.env();
    let missing = format!("s3://{}/web/v9.tar.gz", g.bucket);
    failed_with(
        &deploy_url(&root, &missing, &[], &env),
        &["no such key \"web/v9.tar.gz\"", "artifacts", &missing],
    );
    failed_with(
        &deploy_url(&root, "s3://no-such-bucket/web/v1.tar.gz", &[], &env),
        &["no such bucket \"no-such-bucket\""],
    );
    let mut wrong = env.clone();
    wrong[1].1 = "0".repeat(64);
    failed_with(
        &deploy_url(
            &root,
            &format!("s3://{}/web/v1.tar.gz", g.bucket),
            &[],
            &wrong,
        ),
        &["access denied", "secret"],
    );
    let no_creds: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .cloned()
        .chain([
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ])
        .collect();
    failed_with(
        &deploy_url(
            &root,
            &format!("s3://{}/web/v1.tar.gz", g.bucket),
            &[],
            &no_creds,
        ),
        &["no AWS credentials", "AWS_ACCESS_KEY_ID"],
    );
    let mut closed = env.clone();
    let port = common::unused_port();
    closed[2].1 = format!("http://127.0.0.1:{port}");
    failed_with(
        &deploy_url(
            &root,
            &format!("s3://{}/web/v1.tar.gz", g.bucket),
            &[],
            &closed,
        ),
        &["cannot reach", &format!("127.0.0.1:{port}")],
    );
    assert!(!root.join("current").exists(), "nothing was deployed");
}

#[test]
fn file_url_with_and_without_sha256() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let bytes = gz(&simple("v1").bytes());
    let f = t.path().join("v1.tar.gz");
    std::fs::write(&f, &bytes).unwrap();
    let url = format!("file://{}", f.display());
    failed_with(
        &deploy_url(&root, &url, &["--sha256", &"00".repeat(32)], &[]),
        &["sha256 mismatch", &sha_hex(&bytes)],
    );
    assert!(!root.join("current").exists());
    assert!(staging_is_empty(&root));
    ok(&deploy_url(
        &root,
        &url,
        &["--sha256", &sha_hex(&bytes)],
        &[],
    ));
    assert_eq!(read(&root, "current/bin/app"), "v1");
    failed_with(
        &deploy_url(
            &root,
            &format!("file://{}/nope.tar", t.path().display()),
            &[],
            &[],
        ),
        &["no such file", "nope.tar"],
    );
    failed_with(
        &deploy_url(&root, "ftp://host/x.tar", &[], &[]),
        &["bad artifact URL", "s3://"],
    );
}

/// Serves one fixed body per connection on 127.0.0.1; `/missing` answers 404.
fn serve(body: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut req = [0u8; 4096];
            let n = c.read(&mut req).unwrap_or(0);
            let head = String::from_utf8_lossy(&req[..n]).to_string();
            if head.starts_with("GET /missing") {
                let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                continue;
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn http_url_from_a_local_server() {
    let t = common::tempdir();
    let root = t.path().join("app");
    let bytes = zstd::encode_all(&simple("v7").bytes()[..], 3).unwrap();
    let base = serve(bytes.clone());
    ok(&deploy_url(
        &root,
        &format!("{base}/web/v7.tar.zst"),
        &["--sha256", &sha_hex(&bytes)],
        &[],
    ));
    assert_eq!(read(&root, "current/bin/app"), "v7");
    failed_with(
        &deploy_url(&root, &format!("{base}/missing"), &[], &[]),
        &["not found (HTTP 404)", "/missing"],
    );
}

/// The unpacker writes the artifact while it is still arriving: the server sends half of
/// a large tar, then waits for the file to grow in staging before it sends the rest. A
/// fetcher that buffered the whole object first would never let the file appear.
#[test]
fn http_artifact_is_streamed_into_the_unpacker() {
    const SIZE: usize = 48 << 20;
    let mut data = vec![0u8; SIZE];
    let mut x = 0x1234_5678_u32;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(SIZE as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "big.bin", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    drop(data);

    let t = common::tempdir();
    let root = t.path().join("app");
    let staged = root.join(".droot-fleet/staging/v1/big.bin");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/big.tar", l.local_addr().unwrap());
    let tar_len = tar.len();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut req = [0u8; 4096];
        // The fetcher asks with a HEAD first (this server takes no ranges), then GETs
        // on the same connection.
        let n = c.read(&mut req).unwrap();
        if req[..n].starts_with(b"HEAD ") {
            write!(c, "HTTP/1.1 200 OK\r\ncontent-length: {tar_len}\r\n\r\n").unwrap();
            let _ = c.read(&mut req).unwrap();
        }
        write!(c, "HTTP/1.1 200 OK\r\ncontent-length: {tar_len}\r\n\r\n").unwrap();
        let half = tar.len() / 2;
        c.write_all(&tar[..half]).unwrap();
        // Wait on the signal: the file in staging has grown past 4 MiB.
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let len = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
            if len > 4 << 20 {
                break Some(len);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        c.write_all(&tar[half..]).unwrap();
        seen
    });
    ok(&deploy_url(&root, &url, &["--version", "v1"], &[]));
    let seen = server.join().unwrap();
    assert!(
        seen.is_some(),
        "nothing was written before the second half of the body was sent: not streamed"
    );
    assert_eq!(
        std::fs::metadata(root.join("current/big.bin"))
            .unwrap()
            .len(),
        SIZE as u64
    );
}

/// `keygen --signing`: a 0600 private key file, the public key on stdout, never overwritten.
#[test]
fn keygen_signing_writes_a_private_key_0600() {
    use std::os::unix::fs::PermissionsExt;
    let t = common::tempdir();
    let key = t.path().join("deploy.key");
    let out = output(cmd().args(["keygen", "--signing", "-o"]).arg(&key));
    ok(&out);
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let private = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sk = droot_fleet::deploy::signed::signing_key_from_text(&private, "key").unwrap();
    assert_eq!(
        droot_fleet::deploy::signed::public_key_text(&sk.verifying_key()),
        public
    );
    let again = output(cmd().args(["keygen", "--signing", "-o"]).arg(&key));
    failed_with(&again, &["must not exist", "never overwritten"]);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private);
}
